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

SCRATCH_SCHEMAS = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'backy\\_bench\\_%%'"
TINY = ("--jobs", "300", "--seconds", "0.5", "--rate", "20", "--samples", "10")
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("keep", ["on", "off"])
def test_bench_json_has_every_path_with_its_floor(server_dsn: str, db: Any, keep: str) -> None:
    schemas_before = query(db, SCRATCH_SCHEMAS)
    done = run_cli("bench", *TINY, "--runners", "1,2", "--json", "--dsn", server_dsn,
                   "--delete-finished-jobs", keep, dsn=server_dsn, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [(row["path"], row["runners"]) for row in report["paths"]] == PATHS
    for row in report["paths"]:
        assert row["value"] > 0 and row["floor"] > 0 and row["ratio"] > 0, row
        assert row["unit"] == ("ms" if row["path"].startswith("latency") else "jobs/s")
    assert report["delete_finished_jobs"] is (keep == "on")
    # Not a terminal: one line per phase on stderr, nothing else (no runner warning).
    phases = done.stderr.splitlines()
    assert len(phases) == 12 and all(re.match(r"bench: \[\d+/12\] ", p) for p in phases), (
        done.stderr)
    assert query(db, SCRATCH_SCHEMAS) == schemas_before  # its scratch schema is dropped


def test_bench_prints_a_table_of_figure_floor_and_ratio(server_dsn: str, db: Any) -> None:
    schemas_before = query(db, SCRATCH_SCHEMAS)
    done = run_cli("bench", *TINY, "--dsn", server_dsn, dsn=server_dsn, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| path | backy-gevent | floor | ratio |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:] if line.startswith("|")}
    assert list(rows) == [path for path, runners in PATHS if runners in (None, 1)]
    for line in rows.values():
        assert re.fullmatch(
            r"\| [^|]+ \| [\d,.]+ (jobs/s|ms) \| [\d,.]+ (jobs/s|ms) \| \d+\.\d\d \|", line), line
    assert "floors:" in lines
    assert query(db, SCRATCH_SCHEMAS) == schemas_before


def test_sigint_mid_run_stops_the_runners_drops_the_schema_and_exits_130(
    server_dsn: str, db: Any
) -> None:
    schemas_before = set(query(db, SCRATCH_SCHEMAS))
    bench = subprocess.Popen(
        [CONSOLE_SCRIPT, "bench", *TINY[:4], "--rate", "1000", "--samples", "2000",
         "--dsn", server_dsn],
        env=cli_env(server_dsn), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bench.stderr is not None
        for line in bench.stderr:  # one line per phase: wait for the runner's
            if "1 idle runner" in line:
                break
        (schema,) = set(query(db, SCRATCH_SCHEMAS)) - schemas_before
        deadline = time.monotonic() + 30
        pids: list[tuple[int]] = []
        while not pids and time.monotonic() < deadline:
            pids = query(db, f'SELECT pid FROM "{schema[0]}".backy_bench_jobs_runners')
        assert pids, "the runner did not register"
        time.sleep(1)  # mid-measurement
        bench.send_signal(signal.SIGINT)
        stdout, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, stderr
    assert stderr.splitlines()[-1] == (
        "backy-gevent: bench: interrupted; runners stopped, scratch schema dropped")
    assert "Traceback" not in stderr and stdout == ""
    assert set(query(db, SCRATCH_SCHEMAS)) == schemas_before
    assert not any(_alive(pid) for (pid,) in pids)
