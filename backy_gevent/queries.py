"""The named SQL statements of ``sql/queries.sql``, with identifiers quoted for one table."""

from __future__ import annotations

import functools
import re
from importlib import resources

from psycopg2 import sql

_BLOCK = re.compile(r"^-- name: (\w+)\n", re.MULTILINE)


@functools.cache
def _read_blocks() -> dict[str, str]:
    text = resources.files("backy_gevent").joinpath("sql/queries.sql").read_text("utf-8")
    parts = _BLOCK.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def object_names(table_name: str) -> dict[str, sql.Identifier]:
    """Every database object the schema needs, each named after the jobs table."""
    return {
        "table": sql.Identifier(table_name),
        "runners": sql.Identifier(f"{table_name}_runners"),
        "migrations": sql.Identifier(f"{table_name}_migrations"),
        "fetch_index": sql.Identifier(f"{table_name}_fetch_idx"),
        "lease_index": sql.Identifier(f"{table_name}_lease_idx"),
        "failed_index": sql.Identifier(f"{table_name}_failed_idx"),
        "unique_index": sql.Identifier(f"{table_name}_unique_key_idx"),
        "running_has_lease": sql.Identifier(f"{table_name}_running_has_lease"),
    }


def channel_name(table_oid: int) -> str:
    """The LISTEN/NOTIFY channel of one jobs table, named after the table's oid.

    The statements that notify name it from their rows' ``tableoid`` (see queries.sql), so
    same-named tables in other schemas have channels of their own.
    """
    return f"backy_{table_oid}"


class Queries:
    """The statements of queries.sql, composed for one jobs table.

    ``queries.claim`` and the like are ``psycopg2.sql.Composed`` objects, ready for
    ``cursor.execute`` with a dict of values.
    """

    def __init__(self, table_name: str) -> None:
        self.table_name = table_name
        names = object_names(table_name)
        self._composed = {
            name: sql.SQL(body).format(**names) for name, body in _read_blocks().items()
        }

    def __getattr__(self, name: str) -> sql.Composed:
        try:
            return self._composed[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in queries.sql") from None
