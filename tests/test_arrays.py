"""Lists sent as array literals (``db.arrays``, for speed: README, Speed) reach
PostgreSQL as the same arrays psycopg2's own adaptation makes of them."""

from __future__ import annotations

import math
from typing import Any

import pytest

from backy_gevent.db.arrays import array_literal, with_array_literals
from tests.conftest import query

CASES: list[tuple[str, list[Any]]] = [
    ("bigint[]", [1, -2, 9_223_372_036_854_775_807, 0]),
    ("bigint[]", []),
    ("int[]", [1, None, 3]),
    ("float8[]", [0.5, 1e16, 1e-300, -2.0, 3]),
    ("bool[]", [True, False, None]),
    ("text[]", ["plain", "", "with space", 'quote " and \\ backslash', "{braces},comma",
                "NULL", "null", None, "it's", "\u00e9\U0001f600", "tab\tnewline\n"]),
    ("jsonb[]", ['{"a": [1, "x"]}', '"text"', "null", None]),
]


@pytest.mark.parametrize(("cast", "values"), CASES)
def test_array_literal_reads_back_as_the_list(db: Any, cast: str, values: list[Any]) -> None:
    literal = array_literal(values)
    assert literal is not None
    from_literal = query(db, f"SELECT %s::{cast}", literal)[0][0]
    from_list = query(db, f"SELECT %s::{cast}", values)[0][0]
    assert from_literal == from_list


def test_special_floats_read_back(db: Any) -> None:
    got = query(db, "SELECT %s::float8[]", array_literal([math.inf, -math.inf, math.nan]))[0][0]
    assert got[:2] == [math.inf, -math.inf] and math.isnan(got[2])


@pytest.mark.parametrize("values", [[1, [2]], [b"bytes"], [1, object()], [2.5, 1j]])
def test_other_values_are_left_to_psycopg2(values: list[Any]) -> None:
    assert array_literal(values) is None
    assert with_array_literals({"x": values})["x"] is values


def test_only_lists_and_tuples_change() -> None:
    params = {"ids": (1, 2), "name": "a", "n": 3, "none": None}
    assert with_array_literals(params) == {"ids": "{1,2}", "name": "a", "n": 3, "none": None}
    unchanged = {"name": "a"}
    assert with_array_literals(unchanged) is unchanged
