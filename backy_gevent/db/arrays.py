"""Lists sent as PostgreSQL array literals (``'{1,2,3}'``) instead of ``ARRAY[...]``.

psycopg2 adapts a list element by element through its adapter protocol, about 2 us an
element with a connection: the runner's completion of 1,000 jobs (their ids and
attempts) spent 3 ms of CPU quoting them, a fifth of its work per job in a drain, and a
claim or a completion of a few jobs under a steady stream 70 us. Every array
placeholder of queries.sql is cast (``%(ids)s::bigint[]``), so the same values can go
as one text literal, which psycopg2 quotes in one step; PostgreSQL parses it with the
cast's element type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def array_literal(values: Sequence[Any]) -> str | None:
    """``values`` as an array literal, or None when one of them is not a plain int,
    float, bool, str or None (the caller then sends the list as psycopg2 adapts it)."""
    parts = []
    for value in values:
        kind = type(value)
        if kind is int:
            parts.append(str(value))
        elif kind is str:
            # Quoted, with the two characters that end or escape a quoted element escaped.
            parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif value is None:
            parts.append("NULL")
        elif kind is float:
            parts.append(repr(value))  # "inf", "nan" and "1e+16" are float8 input too
        elif kind is bool:
            parts.append("t" if value else "f")
        else:
            return None
    return "{" + ",".join(parts) + "}"


def with_array_literals(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``params`` with each list or tuple of plain values as an array literal."""
    converted = None
    for name, value in params.items():
        if type(value) is list or type(value) is tuple:
            literal = array_literal(value)
            if literal is not None:
                if converted is None:
                    converted = dict(params)
                converted[name] = literal
    return params if converted is None else converted
