"""The bench's results: one row per path (and runner count), printed as a table or JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Row:
    """One path measured beside its floor. ``ratio`` is backy-gevent's figure over the
    floor's: for a rate the share of the floor reached (higher is better), for a latency
    how many times the floor's it takes (lower is better)."""

    path: str
    unit: str  # "jobs/s" or "ms"
    value: float
    floor: float
    floor_name: str
    runners: int | None = None

    @property
    def ratio(self) -> float:
        return self.value / self.floor if self.floor else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": round(self.ratio, 3)}


def _figure(value: float, unit: str) -> str:
    return f"{value:.1f} ms" if unit == "ms" else f"{value:,.0f} {unit}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: path | backy-gevent | floor | ratio, then what each floor is."""
    lines = ["| path | backy-gevent | floor | ratio |", "|---|---|---|---|"]
    lines += [f"| {row.path} | {_figure(row.value, row.unit)} | {_figure(row.floor, row.unit)}"
              f" | {row.ratio:.2f} |" for row in rows]
    lines += ["", "floors:"] + [f"- {name}" for name in dict.fromkeys(r.floor_name for r in rows)]
    return "\n".join(lines)


def as_json(rows: Sequence[Row], about: dict[str, Any]) -> str:
    """The rows and what the run was (``about``: sizes, server, settings) as JSON."""
    return json.dumps({**about, "paths": [row.as_dict() for row in rows]}, indent=2)
