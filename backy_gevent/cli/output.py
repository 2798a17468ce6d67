"""How the commands print: aligned tables with a header, or JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any


def print_json(value: Any) -> None:
    """``value`` as indented JSON with sorted keys; times and the like as strings."""
    print(json.dumps(value, default=str, indent=2, sort_keys=True))


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A header line and one line per row, each column as wide as its widest cell; the
    last column is not padded (it may be long: hooks, settings)."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*padded, row[-1]]).rstrip())


def print_listing(
    items: Sequence[Any], *, as_json: bool, empty: str, header: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
) -> None:
    """A listing command's output: ``items`` as JSON, or ``empty`` when there are none,
    or a table of ``row(item)`` under ``header``."""
    if as_json:
        print_json(items)
    elif not items:
        print(empty)
    else:
        print_table(header, [row(item) for item in items])


def plural(count: int, noun: str) -> str:
    """``1 runner``, ``2 runners``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
