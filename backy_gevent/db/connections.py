"""A small pool of autocommit psycopg2 connections that drops broken ones.

Each greenlet borrows a connection for one operation and gives it back; a connection
that raised a connection-level error is closed rather than returned, and the next
borrower gets a fresh one. Works with threads too (the lock and queue are gevent's own
when gevent has patched the process).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from backy_gevent.db.slots import Slots
from backy_gevent.jsontext import whole_value_reader

log = logging.getLogger("backy_gevent.db")

#: PostgreSQL's fixed type oids of jsonb and jsonb[].
JSONB_OID, JSONB_ARRAY_OID = 3802, 3807

#: Errors after which a connection is not trusted again.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class BoundedConnection(psycopg2.extensions.connection):
    """A connection whose every wait for the server is bounded (see ``db.green``).

    ``silence_timeout`` is set before the connection is made, so connecting is bounded
    too; None waits for as long as the server takes. ``behind_pooler`` says whether a
    connection pooler (PgBouncer) stands between us and PostgreSQL (see ``connect``).
    """

    def __init__(self, *args: Any, silence_timeout: float | None = None, **kwargs: Any) -> None:
        self.silence_timeout = silence_timeout
        self.behind_pooler = False
        self._tuple_cursor: Any = None
        #: What ``db.green`` waits on this connection's socket with, made once.
        self.green_waits: Any = None
        super().__init__(*args, **kwargs)

    def tuple_cursor(self) -> Any:
        """This connection's cursor with rows as plain tuples, made once and used by
        every operation that borrows the connection (one at a time): a cursor made and
        closed per operation was a tenth of a single enqueue's client CPU. Each
        ``execute`` replaces what the last one left in it."""
        cur = self._tuple_cursor
        if cur is None or cur.closed:
            cur = self._tuple_cursor = self.cursor(cursor_factory=psycopg2.extensions.cursor)
        return cur


class PreparingConnection(BoundedConnection):
    """A connection on which ``Queries.execute`` prepares statements server-side.

    ``prepared`` maps a statement's key to what EXECUTE needs; it lives and dies with the
    session, as the prepared statements themselves do.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # None: statements run as plain SQL (behind a pooler, where a session's prepared
        # statements are not there in the next transaction).
        self.prepared: dict[str, tuple[str, list[str], str]] | None = {}


def connect(
    dsn: str,
    *,
    autocommit: bool = True,
    application_name: str = "backy-gevent",
    prepare: bool = False,
    timeout: float | None = None,
) -> Any:
    """Open one connection with dict-like rows (``RealDictCursor``).

    ``prepare``: a ``PreparingConnection``, on which the hot statements skip planning.
    ``timeout`` (the ``database_timeout`` option) bounds everything the connection
    does: connecting, each wait for the server (a silent server is given up after it,
    whatever TCP says), and, on the server, each statement (``statement_timeout`` of
    80% of it, so the server normally answers with an error first). None: unbounded,
    for migrations and callers' long statements.
    """
    factory = PreparingConnection if prepare else BoundedConnection
    options = {
        "connection_factory": functools.partial(factory, silence_timeout=timeout),
        "application_name": application_name,
        "cursor_factory": psycopg2.extras.RealDictCursor,
        # Notice a dead peer (network cut, killed server) in seconds, not hours.
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    }
    if timeout is not None:
        options.update(connect_timeout=max(1, math.ceil(timeout)),
                       tcp_user_timeout=int(timeout * 1000))
    try:
        conn = psycopg2.connect(dsn, **_with_statement_timeout(options, dsn, timeout))
    except psycopg2.OperationalError as exc:
        if timeout is None or UNSUPPORTED_STARTUP not in str(exc):
            raise
        # A connection pooler that takes no session settings at start-up: the statement
        # bound is then the client's alone (its silence_timeout).
        conn = psycopg2.connect(dsn, **options)
    conn.autocommit = autocommit
    psycopg2.extensions.register_type(JSONB, conn)
    psycopg2.extensions.register_type(JSONB_ARRAY, conn)
    conn.behind_pooler = _behind_pooler(conn)
    if conn.behind_pooler and prepare:
        conn.prepared = None
    return conn


#: A ``jsonb`` value as PostgreSQL writes it, decoded: what ``json.loads`` returns, in
#: half the time (None for NULL), read by json's scanner alone (``jsontext``). Every
#: claimed job brings three (its args, errors and result). It is the connections' jsonb
#: typecaster itself (``JSONB``), not called through psycopg2's wrapper.
read_json = whole_value_reader(json.JSONDecoder())

#: jsonb (and jsonb[]) read by ``read_json`` on every connection ``connect`` makes.
JSONB = psycopg2.extensions.new_type((JSONB_OID,), "JSONB", read_json)
JSONB_ARRAY = psycopg2.extensions.new_array_type((JSONB_ARRAY_OID,), "JSONBARRAY", JSONB)

#: How PgBouncer refuses a startup parameter it does not pass on (``options`` above all).
UNSUPPORTED_STARTUP = "unsupported startup parameter"


def _behind_pooler(conn: Any) -> bool:
    """Whether a connection pooler stands between this connection and PostgreSQL.

    A pooler hands its clients a backend key of its own (it must route their cancel
    requests), so the pid the connection was given differs from the server process's.
    In transaction pooling, a session's state (prepared statements, LISTEN, advisory
    locks, settings) is not there in the next transaction.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        server_pid = cur.fetchone()["pid"]
    if not conn.autocommit:
        conn.rollback()
    return bool(conn.get_backend_pid() != server_pid)


def _with_statement_timeout(
    options: dict[str, Any], dsn: str, timeout: float | None
) -> dict[str, Any]:
    """``options`` plus the ``options`` connection parameter of ``dsn`` (or
    ``PGOPTIONS``) with a ``statement_timeout`` of 80% of ``timeout`` added: the DSN's
    own options, a search_path say, are kept."""
    if timeout is None:
        return options
    existing = psycopg2.extensions.parse_dsn(dsn).get("options")
    if existing is None:
        existing = os.environ.get("PGOPTIONS", "")
    milliseconds = int(timeout * 800)
    return {**options, "options": f"{existing} -c statement_timeout={milliseconds}".strip()}


class ConnectionPool:
    """At most ``size`` connections to ``dsn``; ``borrow()`` waits when all are out.

    The idle connections are a plain list (appending and popping are atomic under the
    GIL), and so are the free slots (``db.slots``): taking and giving back a connection
    touches no lock while one is free, in a threaded application as in a process that
    gevent has patched (the runner's, a gevent application's). Only a borrower that
    finds every slot taken waits, on a condition variable.
    """

    def __init__(
        self,
        dsn: str,
        size: int = 4,
        *,
        application_name: str = "backy-gevent",
        prepare: bool = False,
        timeout: float | None = None,
    ):
        self.dsn = dsn
        self.prepare = prepare
        self.timeout = timeout
        self.size = size
        self.application_name = application_name
        self._idle: list[Any] = []  # the last given back is borrowed first
        self._slots = Slots(size)
        self._closed = False
        #: Learnt from the first connection: a pooler (PgBouncer) stands in between.
        self.behind_pooler: bool | None = None

    def borrow(self) -> Borrowed:
        """A connection for one operation, in autocommit mode (``with pool.borrow() as
        conn``)."""
        return Borrowed(self)

    def _take(self) -> Any:
        if self._closed:
            raise psycopg2.InterfaceError("the connection pool is closed")
        self._slots.acquire()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            conn = connect(self.dsn, application_name=self.application_name,
                           prepare=self.prepare, timeout=self.timeout)
        except BaseException:
            self._slots.release()
            raise
        self._note_pooler(conn)
        return conn

    def _give_back(self, conn: Any, failure: BaseException | None) -> None:
        """Return ``conn`` to the idle list, or close it: after a connection-level
        error, or when the operation that failed left it closed or in a transaction."""
        try:
            spoilt = failure is not None and (
                isinstance(failure, CONNECTION_ERRORS) or not _is_idle(conn))
            if self._closed or conn.closed or spoilt:
                conn.close()
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    def _note_pooler(self, conn: Any) -> None:
        if conn.behind_pooler and not self.behind_pooler:
            log.info(
                "%s: a connection pooler stands between us and PostgreSQL: statements"
                " are not prepared server-side and the statement bound is the client's",
                self.application_name,
            )
        self.behind_pooler = conn.behind_pooler

    def close(self) -> None:
        """Close idle connections; borrowed ones close when given back."""
        self._closed = True
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                break


class Borrowed:
    """``ConnectionPool.borrow``'s context manager: a class, not a generator, since
    every enqueue goes through it (a generator-based one cost a few microseconds more
    of a single enqueue's CPU)."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: Any = None

    def __enter__(self) -> Any:
        self._conn = self._pool._take()
        return self._conn

    def __exit__(self, kind: object, failure: BaseException | None, tb: object) -> None:
        conn, self._conn = self._conn, None
        self._pool._give_back(conn, failure)


def _is_idle(conn: Any) -> bool:
    status = conn.info.transaction_status
    return bool(status == psycopg2.extensions.TRANSACTION_STATUS_IDLE)
