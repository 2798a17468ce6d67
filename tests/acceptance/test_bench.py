"""``backy-gevent bench`` runs end to end on a small workload, reports every path beside
its floor, leaves nothing behind, and stops cleanly on ^C.

The real measurement is a command, not a test; this only proves the command works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import CONSOLE_SCRIPT, ROOT, cli_env, query, run_cli

#: The line that names the run's scratch schema (other runs may share the server).
SCHEMA_LINE = re.compile(r"^bench: working in the scratch schema (backy_bench_\w+) ", re.M)
TINY = ("--jobs", "300", "--seconds", "0.5", "--rate", "20", "--samples", "10",
        "--stream-rounds", "2")
PATHS = [
    ("bulk enqueue (enqueue_many, 1,000 a call)", None),
    ("single enqueue (enqueue, 1 job a transaction)", None),
    ("latency p50, enqueue to perform, 20 jobs/s", None),
    ("latency p95, enqueue to perform, 20 jobs/s", None),
    ("latency p99, enqueue to perform, 20 jobs/s", None),
    ("backlog drain, 1 runner", 1),
    ("backlog drain, 2 runners", 2),
    ("steady stream, 4 clients, 1 runner", 1),
    ("steady stream, 4 clients, 2 runners", 2),
]


def _schema_exists(db: Any, name: str) -> bool:
    return bool(query(db, "SELECT 1 FROM pg_namespace WHERE nspname = %s", name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("keep", ["on", "off"])
def test_bench_json_has_every_path_with_its_floor(server_dsn: str, db: Any, keep: str) -> None:
    done = run_cli("bench", *TINY, "--runners", "1,2", "--json", "--dsn", server_dsn,
                   "--delete-finished-jobs", keep, dsn=server_dsn, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [(row["path"], row["runners"]) for row in report["paths"]] == PATHS
    for row in report["paths"]:
        assert row["value"] > 0 and row["floor"] > 0 and row["ratio"] > 0, row
        assert row["unit"] == ("ms" if row["path"].startswith("latency") else "jobs/s")
    assert report["delete_finished_jobs"] is (keep == "on")
    # Not a terminal: the schema, then one line per phase on stderr, nothing else (no
    # runner warning).
    schema_line, *phases = done.stderr.splitlines()
    assert len(phases) == 8 and all(re.match(r"bench: \[\d+/8\] ", p) for p in phases), (
        done.stderr)
    # The stream is taken in rounds: the clients alone and beside each runner count, in
    # a balanced order (the next round starts one place further on).
    assert phases[-2:] == [
        "bench: [7/8] steady stream, round 1/2: 4 clients for 0.5s alone, then beside"
        " 1 runner, then beside 2 runners",
        "bench: [8/8] steady stream, round 2/2: 4 clients for 0.5s beside 1 runner,"
        " then beside 2 runners, then alone",
    ]
    [comparison] = report["comparisons"]
    assert (comparison["path"], comparison["runners"], comparison["against"]) == (
        "steady stream", 2, 1)
    assert len(comparison["differences"]) == 2 and comparison["standard_error"] >= 0
    schema = SCHEMA_LINE.match(schema_line)
    assert schema and not _schema_exists(db, schema[1])  # its scratch schema is dropped


def test_bench_prints_a_table_of_figure_floor_and_ratio(server_dsn: str, db: Any) -> None:
    # Without 1 among the runner counts, the latency has a runner started for it alone.
    done = run_cli("bench", *TINY, "--runners", "2", "--dsn", server_dsn, dsn=server_dsn,
                   timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| path | backy-gevent | floor | ratio |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:] if line.startswith("|")}
    assert list(rows) == [path for path, runners in PATHS if runners in (None, 2)]
    phases = done.stderr.splitlines()[1:]
    assert len(phases) == 7 and all(re.match(r"bench: \[\d+/7\] ", p) for p in phases), (
        done.stderr)
    for line in rows.values():
        assert re.fullmatch(
            r"\| [^|]+ \| [\d,.]+ (jobs/s|ms) \| [\d,.]+ (jobs/s|ms) \| \d+\.\d\d \|", line), line
    assert "floors:" in lines
    # One runner count: nothing to compare.
    assert "compared round by round:" not in lines
    schema = SCHEMA_LINE.search(done.stderr)
    assert schema and not _schema_exists(db, schema[1])


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_mid_run_stops_the_runners_drops_the_schema_and_exits_128_plus_it(
    server_dsn: str, db: Any, signum: int, status: int
) -> None:
    bench = subprocess.Popen(
        [CONSOLE_SCRIPT, "bench", *TINY[:4], "--rate", "1000", "--samples", "2000",
         "--dsn", server_dsn],
        env=cli_env(server_dsn), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bench.stderr is not None
        schema = SCHEMA_LINE.match(bench.stderr.readline())
        assert schema, "the bench did not name its scratch schema first"
        for line in bench.stderr:  # one line per phase: wait for the runner's
            if "1 idle runner" in line:
                break
        deadline = time.monotonic() + 30
        pids: list[tuple[int]] = []
        while not pids and time.monotonic() < deadline:
            pids = query(db, f'SELECT pid FROM "{schema[1]}".backy_bench_jobs_runners')
        assert pids, "the runner did not register"
        time.sleep(1)  # mid-measurement
        bench.send_signal(signum)
        stdout, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == status, stderr
    assert stderr.splitlines()[-1] == (
        "backy-gevent: bench: interrupted; runners stopped, scratch schema dropped")
    assert "Traceback" not in stderr and stdout == ""
    assert not _schema_exists(db, schema[1])
    assert not any(_alive(pid) for (pid,) in pids)
