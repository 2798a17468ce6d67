"""The bench's pure parts: the report, percentiles, the progress line, its flags.

The bench itself runs end to end in ``tests/acceptance/test_bench.py``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import pytest

from backy_gevent.cli.bench.loops import alternate, percentile
from backy_gevent.cli.bench.progress import Progress
from backy_gevent.cli.bench.report import Row, as_json, table
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
