"""A small pool of autocommit psycopg2 connections that drops broken ones.

Each greenlet borrows a connection for one operation and gives it back; a connection
that raised a connection-level error is closed rather than returned, and the next
borrower gets a fresh one. Works with threads too (the lock and queue are gevent's own
when gevent has patched the process).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

#: Errors after which a connection is not trusted again.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class BoundedConnection(psycopg2.extensions.connection):
    """A connection whose every wait for the server is bounded (see ``db.green``).

    ``silence_timeout`` is set before the connection is made, so connecting is bounded
    too; None waits for as long as the server takes.
    """

    def __init__(self, *args: Any, silence_timeout: float | None = None, **kwargs: Any) -> None:
        self.silence_timeout = silence_timeout
        super().__init__(*args, **kwargs)


class PreparingConnection(BoundedConnection):
    """A connection on which ``Queries.execute`` prepares statements server-side.

    ``prepared`` maps a statement's key to what EXECUTE needs; it lives and dies with the
    session, as the prepared statements themselves do.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: dict[str, tuple[str, list[str], str]] = {}


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
    bounds: dict[str, Any] = {}
    if timeout is not None:
        bounds = {
            "connect_timeout": max(1, math.ceil(timeout)),
            "tcp_user_timeout": int(timeout * 1000),
            "options": _with_statement_timeout(dsn, int(timeout * 800)),
        }
    conn = psycopg2.connect(
        dsn,
        connection_factory=functools.partial(factory, silence_timeout=timeout),
        application_name=application_name,
        cursor_factory=psycopg2.extras.RealDictCursor,
        # Notice a dead peer (network cut, killed server) in seconds, not hours.
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        **bounds,
    )
    conn.autocommit = autocommit
    return conn


def _with_statement_timeout(dsn: str, milliseconds: int) -> str:
    """The ``options`` connection parameter of ``dsn`` (or ``PGOPTIONS``) plus a
    ``statement_timeout``: the DSN's own options, a search_path say, are kept."""
    existing = psycopg2.extensions.parse_dsn(dsn).get("options")
    if existing is None:
        existing = os.environ.get("PGOPTIONS", "")
    return f"{existing} -c statement_timeout={milliseconds}".strip()


class ConnectionPool:
    """At most ``size`` connections to ``dsn``; ``borrow()`` waits when all are out."""

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
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """A connection for one operation, in autocommit mode."""
        if self._closed:
            raise psycopg2.InterfaceError("the connection pool is closed")
        self._slots.acquire()
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = connect(
                    self.dsn, application_name=self.application_name, prepare=self.prepare,
                    timeout=self.timeout,
                )
            yield conn
        except BaseException as exc:
            if conn is not None and (
                isinstance(exc, CONNECTION_ERRORS) or conn.closed or not _is_idle(conn)
            ):
                conn.close()
                conn = None
            raise
        finally:
            if conn is not None:
                if self._closed or conn.closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    def close(self) -> None:
        """Close idle connections; borrowed ones close when given back."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break


def _is_idle(conn: Any) -> bool:
    status = conn.info.transaction_status
    return bool(status == psycopg2.extensions.TRANSACTION_STATUS_IDLE)
