"""The bench's pure parts: the report, percentiles, the progress line, its flags.

The bench itself runs end to end in ``tests/acceptance/test_bench.py``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import pytest

from backy_gevent.cli.bench.loops import alternate, balanced_order, in_turns, percentile
from backy_gevent.cli.bench.progress import Progress
from backy_gevent.cli.bench.report import Comparison, Row, as_json, table
from backy_gevent.cli.parser import build_parser

ROWS = [
    Row("bulk enqueue (enqueue_many, 1,000 a call)", "jobs/s", 15000.0, 50000.0,
        "1,000-row unnest INSERT"),
    Row("latency p50, enqueue to perform, 50 jobs/s", "ms", 4.25, 2.5, "wake and claim"),
    Row("backlog drain, 2 runners", "jobs/s", 9000.0, 10000.0, "claim 100 and delete", 2),
]


def test_the_table_has_figure_floor_and_ratio_then_the_floors() -> None:
    assert table(ROWS).splitlines() == [
        "| path | backy-gevent | floor | ratio |",
        "|---|---|---|---|",
        "| bulk enqueue (enqueue_many, 1,000 a call) | 15,000 jobs/s | 50,000 jobs/s | 0.30 |",
        "| latency p50, enqueue to perform, 50 jobs/s | 4.2 ms | 2.5 ms | 1.70 |",
        "| backlog drain, 2 runners | 9,000 jobs/s | 10,000 jobs/s | 0.90 |",
        "",
        "floors:",
        "- 1,000-row unnest INSERT",
        "- wake and claim",
        "- claim 100 and delete",
    ]


def test_the_json_has_every_row_with_its_ratio_and_what_the_run_was() -> None:
    report = json.loads(as_json(ROWS, {"cpus": 2}))
    assert report["cpus"] == 2
    assert report["paths"][2] == {
        "path": "backlog drain, 2 runners", "unit": "jobs/s", "value": 9000.0,
        "floor": 10000.0, "floor_name": "claim 100 and delete", "runners": 2, "ratio": 0.9,
    }


def test_two_runner_counts_are_compared_round_by_round() -> None:
    """Each round's ratios share its floor: the comparison is their differences."""
    two = Comparison.of("steady stream", 2, 1, [1.25, 1.10, 1.30, 1.20], [1.20, 1.20, 1.20, 1.20])
    assert [round(d, 6) for d in two.differences] == [0.05, -0.1, 0.1, 0.0]
    assert round(two.mean, 6) == 0.0125 and two.at_least_as_high == 3
    assert round(two.standard_error or 0, 4) == 0.0427  # stdev 0.0854 over 4 rounds
    rows = ROWS[2:]
    assert table(rows, [two]).splitlines()[-2:] == [
        "compared round by round:",
        "- steady stream, 2 runners against 1 runner: +0.013 of the floor (standard error"
        " 0.043), at least as high in 3 of 4 rounds",
    ]
    assert json.loads(as_json(rows, {}, [two]))["comparisons"] == [{
        "path": "steady stream", "runners": 2, "against": 1, "mean_difference": 0.0125,
        "standard_error": 0.0427, "at_least_as_high": 3,
        "differences": [0.05, -0.1, 0.1, 0.0]}]
    # One round has no spread to read.
    once = Comparison.of("steady stream", 4, 2, [0.9], [1.0])
    assert once.standard_error is None and "standard error" not in once.sentence()
    assert "4 runners against 2 runners: -0.100" in once.sentence()
    fewer = Comparison.of("steady stream", 1, 2, [1.0, 1.1], [1.0, 1.0])
    assert fewer.sentence().startswith("steady stream, 1 runner against 2 runners: +0.050")


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_balanced_order_puts_each_item_in_each_place_and_after_each_other_equally(
    n: int
) -> None:
    items = list(range(n))
    rounds = [balanced_order(items, round_) for round_ in range(2 * n)]
    assert all(sorted(order) == items for order in rounds)
    for place in range(n):
        assert all([order[place] for order in rounds].count(item) == 2 for item in items)
    follows = [(order[k], order[k + 1]) for order in rounds for k in range(n - 1)]
    assert all(follows.count((a, b)) == 2 for a in items for b in items if a != b)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]
    assert [percentile(values, share) for share in (0.5, 0.95, 0.99, 1.0)] == [
        50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 0.99) == 7.0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_alternate_runs_each_step_in_turns_for_its_share_of_the_time() -> None:
    order: list[str] = []

    def step(name: str, seconds: float) -> Callable[[], None]:
        def run() -> None:
            if not order or order[-1] != name:
                order.append(name)
            time.sleep(seconds)
        return run

    ticks: list[str] = []
    fast, slow = alternate(0.4, [step("fast", 0.001), step("slow", 0.004)], ticks.append,
                           turns=4)
    assert order == ["fast", "slow"] * 4  # in rotation, each turn in one piece
    assert ticks == [f"turn {n}/4" for n in range(1, 5)]
    assert 500 < fast < 1000 and 125 < slow < 250  # steps a second of each, apart
    assert fast / slow > 2.5


def test_progress_is_one_line_per_phase_off_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream)
    progress.start("bulk enqueue")
    progress.tick("5/20 jobs")
    progress.start("drain")
    progress.close()
    assert stream.getvalue() == "bench: [1/2] bulk enqueue\nbench: [2/2] drain\n"


def test_progress_redraws_one_line_on_a_terminal_and_clears_it() -> None:
    stream = _Terminal()
    progress = Progress(total=1, stream=stream)
    progress.start("drain")
    progress._drawn = 0.0  # as if the last redraw were long ago
    progress.tick("5/20 jobs")
    progress.close()
    text = stream.getvalue()
    assert "\n" not in text
    assert "\r[1/1] drain: 5/20 jobs" in text and text.endswith("\r")


@pytest.mark.parametrize(("given", "counts"), [("1", [1]), ("1,2,4", [1, 2, 4]),
                                               ("2,2,1", [2, 1])])
def test_runners_takes_a_list_of_counts(given: str, counts: list[int]) -> None:
    arguments = build_parser().parse_args(["bench", "--runners", given])
    assert arguments.runner_counts == counts


def test_runner_flags_given_to_bench_reach_its_runners_but_not_the_benchs_own() -> None:
    from backy_gevent.cli.bench.command import _forwarded

    arguments = build_parser().parse_args([
        "bench", "--delete-finished-jobs", "off", "--fetch-limit", "100",
        "--disable-plugin", "a", "--disable-plugin", "b", "--dsn", "postgresql://x/y",
        "--table-name", "mine", "--config", "bench.conf.py"])
    assert _forwarded(arguments) == {
        "BACKY_CONFIG": "bench.conf.py", "BACKY_DELETE_FINISHED_JOBS": "off",
        "BACKY_FETCH_LIMIT": "100", "BACKY_DISABLE_PLUGINS": "a,b",
    }


def test_runners_load_no_third_party_plugin_unless_asked(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from backy_gevent.cli.bench import runners

    monkeypatch.setattr(runners, "third_party_plugins", lambda: ["audit", "sentry"])
    monkeypatch.delenv("BACKY_DISABLE_PLUGINS", raising=False)
    env = runners.runner_environment({"BACKY_DISABLE_PLUGINS": "metrics"}, plugins=False)
    assert env["BACKY_DISABLE_PLUGINS"] == "audit,metrics,sentry"
    assert runners.runner_environment({}, plugins=True).get("BACKY_DISABLE_PLUGINS") is None


def test_in_turns_calls_each_step_once_a_turn_in_a_balanced_order() -> None:
    calls: list[tuple[str, int]] = []
    ends: list[tuple[int, int]] = []

    def step(name: str) -> Callable[[int], str]:
        def call(turn: int) -> str:
            calls.append((name, turn))
            return f"{name}{turn}"
        return call

    taken = in_turns({"floor": step("floor"), "figure": step("figure")}, 4,
                     lambda turn, so_far: ends.append((turn, len(so_far["floor"]))))
    assert calls == [("floor", 0), ("figure", 0), ("figure", 1), ("floor", 1),
                     ("floor", 2), ("figure", 2), ("figure", 3), ("floor", 3)]
    assert taken == {"floor": ["floor0", "floor1", "floor2", "floor3"],
                     "figure": ["figure0", "figure1", "figure2", "figure3"]}
    assert ends == [(0, 1), (1, 2), (2, 3), (3, 4)]
