"""The bench's results: one row per path (and runner count), printed as a table or JSON."""

from __future__ import annotations

import dataclasses
import json
import statistics
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


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One runner count's steady stream against another's, round by round: each round's
    two ratios share its floor and its minutes, so their difference leaves out most of
    the machine's drift, which one stream of each does not."""

    path: str
    runners: int
    against: int
    differences: tuple[float, ...]  # ratio with ``runners`` less ratio with ``against``

    @classmethod
    def of(cls, path: str, runners: int, against: int, these: Sequence[float],
           those: Sequence[float]) -> Comparison:
        return cls(path, runners, against,
                   tuple(a - b for a, b in zip(these, those, strict=True)))

    @property
    def mean(self) -> float:
        return statistics.mean(self.differences)

    @property
    def standard_error(self) -> float | None:
        """None from a single round: one difference has no spread to read."""
        if len(self.differences) < 2:
            return None
        return statistics.stdev(self.differences) / len(self.differences) ** 0.5

    @property
    def at_least_as_high(self) -> int:
        """In how many rounds ``runners`` did at least as well as ``against``."""
        return sum(difference >= 0 for difference in self.differences)

    def sentence(self) -> str:
        error = self.standard_error
        spread = f" (standard error {error:.3f})" if error is not None else ""
        return (f"{self.path}, {runners_named(self.runners)} against"
                f" {runners_named(self.against)}:"
                f" {self.mean:+.3f} of the floor{spread}, at least as high in"
                f" {self.at_least_as_high} of {len(self.differences)} rounds")

    def as_dict(self) -> dict[str, Any]:
        error = self.standard_error
        return {"path": self.path, "runners": self.runners, "against": self.against,
                "mean_difference": round(self.mean, 4),
                "standard_error": None if error is None else round(error, 4),
                "at_least_as_high": self.at_least_as_high,
                "differences": [round(d, 4) for d in self.differences]}


def runners_named(count: int) -> str:
    """"1 runner", "2 runners"."""
    return f"{count} runner" + ("" if count == 1 else "s")


def _figure(value: float, unit: str) -> str:
    return f"{value:.1f} ms" if unit == "ms" else f"{value:,.0f} {unit}"


def table(rows: Sequence[Row], comparisons: Sequence[Comparison] = ()) -> str:
    """A Markdown table: path | backy-gevent | floor | ratio; what each floor is; then
    the runner counts' streams compared round by round."""
    lines = ["| path | backy-gevent | floor | ratio |", "|---|---|---|---|"]
    lines += [f"| {row.path} | {_figure(row.value, row.unit)} | {_figure(row.floor, row.unit)}"
              f" | {row.ratio:.2f} |" for row in rows]
    lines += ["", "floors:"] + [f"- {name}" for name in dict.fromkeys(r.floor_name for r in rows)]
    if comparisons:
        lines += ["", "compared round by round:"]
        lines += [f"- {comparison.sentence()}" for comparison in comparisons]
    return "\n".join(lines)


def as_json(rows: Sequence[Row], about: dict[str, Any],
            comparisons: Sequence[Comparison] = ()) -> str:
    """The rows, the comparisons and what the run was (``about``: sizes, server,
    settings) as JSON."""
    return json.dumps({**about, "paths": [row.as_dict() for row in rows],
                       "comparisons": [each.as_dict() for each in comparisons]}, indent=2)
