"""The bench's scratch schema: made for one run, seen alone by every connection of the
run, and dropped afterwards whatever happened (^C included)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from backy_gevent.db.connections import BoundedConnection

#: The jobs table of every bench run, in its scratch schema.
TABLE = "backy_bench_jobs"
#: Scratch schemas are named this and a random suffix.
PREFIX = "backy_bench_"


def scoped(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` as the search path of its connections."""
    parameters = psycopg2.extensions.parse_dsn(dsn)
    options = parameters.get("options", "")
    parameters["options"] = f"{options} -csearch_path={schema}".strip()
    return psycopg2.extensions.make_dsn(**parameters)


def connect(dsn: str, *, autocommit: bool = True) -> Any:
    """A plain psycopg2 connection of the bench (green in the bench's process), which
    keeps what it waits with as the runners' and the client's do (``db.green.Waits``):
    the floors are taken on it."""
    conn = psycopg2.connect(dsn, application_name="backy-gevent bench",
                            connection_factory=BoundedConnection)
    conn.autocommit = autocommit
    return conn


@contextlib.contextmanager
def scratch_schema(dsn: str) -> Iterator[tuple[str, str]]:
    """Create a schema of the run's own; yield its name and a DSN whose connections see
    only it; drop it on the way out, also when the block was interrupted."""
    schema = PREFIX + uuid.uuid4().hex[:8]
    with contextlib.closing(connect(dsn)) as admin, admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema, scoped(dsn, schema)
    finally:
        drop_schema(dsn, schema)


def drop_schema(dsn: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (the caller has closed its connections and
    stopped its runners first, so no lock of theirs makes this wait)."""
    with contextlib.closing(connect(dsn)) as admin, admin.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def pending(conn: Any) -> int:
    """Jobs not finished yet (waiting or running), whatever ``delete_finished_jobs`` says."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE state IN ('available', 'running')")
                    .format(sql.Identifier(TABLE)))
        return int(cur.fetchone()[0])


def any_pending(conn: Any, table: str = TABLE) -> bool:
    """Whether any job of ``table`` is not finished yet: what the bench asks every few
    milliseconds while runners work, so it stops at the first such row, through the
    fetch and lease indexes (counting them all each time would cost the server as much
    as a share of the runners' own work, and beside many finished rows far more)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT EXISTS (SELECT FROM {table} WHERE state = 'available')"
            " OR EXISTS (SELECT FROM {table} WHERE state = 'running'"
            " AND expires_at IS NOT NULL)"  # through the lease index
        ).format(table=sql.Identifier(table)))
        return bool(cur.fetchone()[0])


def empty(conn: Any) -> None:
    """Delete every job, so the next measurement starts beside an empty table."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TABLE)))


def channel(conn: Any) -> str:
    """The NOTIFY channel the runners of the table listen on (``backy_<oid>``)."""
    with conn.cursor() as cur:
        cur.execute("SELECT %s::regclass::oid", (TABLE,))
        return f"backy_{cur.fetchone()[0]}"
