"""The example worker distribution, installed with pip and run by the real console script.

``plugins/backy-example-workers`` is what the README's quick start installs; here it is
pip-installed into a ``--target`` directory and its workers are found through their
``backy.workers`` entry points, not through ``--import``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.distributions import ROOT, pip_install, python_path
from tests.conftest import cli_env, query, run_cli, wait_until


@pytest.fixture(scope="module")
def example_workers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install(
        [ROOT / "plugins" / "backy-example-workers"],
        tmp_path_factory.mktemp("example-workers"),
        tmp_path_factory.mktemp("example-build"),
    )


@pytest.fixture
def env(dsn: str, example_workers: Path) -> dict[str, str]:
    return cli_env(dsn, PYTHONPATH=python_path(example_workers))


def test_workers_lists_the_entry_points_with_their_distribution(
    dsn: str, env: dict[str, str]
) -> None:
    done = run_cli("workers", dsn=dsn, env=env)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["WORKER", "CLASS", "FROM", "SETTINGS"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert set(rows) == {"flaky", "greet", "nap"}
    assert rows["greet"][1:4] == ["backy_example_workers.workers:Greet",
                                  "backy-example-workers", "0.1.0"]
    assert "max_concurrency=2" in rows["nap"] and "retry_count=2" in rows["flaky"]


def test_the_quick_start_runs_greet_nap_and_flaky(
    dsn: str, env: dict[str, str], db: Any, runner: Any
) -> None:
    assert run_cli("setup", dsn=dsn, env=env).returncode == 0
    enqueued = {}
    for worker, args in (
        ("greet", {"name": "foo bar"}),
        # 2.5 s of work with max_runtime 2 s: lives only because it touches every 0.5 s.
        ("nap", {"seconds": 2.5, "touch_every": 0.5}),
        ("flaky", {}),
    ):
        done = run_cli("enqueue", worker, json.dumps(args), dsn=dsn, env=env)
        assert done.returncode == 0, done.stderr
        enqueued[worker] = json.loads(done.stdout)["id"]
    started = time.monotonic()
    process = runner("--poll-interval", "0.2", env=env)
    wait_until(lambda: "Job finished" in process.output, 20, what="greet to finish")
    assert "Job started for foo bar" in process.output
    # flaky: 3 attempts (retry_count 2), 0.5 s then 1 s apart, then failed.
    failed = wait_until(
        lambda: query(db, "SELECT attempt, errors FROM jobs WHERE id = %s AND state = 'failed'",
                      enqueued["flaky"]),
        20, what="flaky to fail for good",
    )
    attempt, errors = failed[0]
    assert attempt == 3 and [e["attempt"] for e in errors] == [1, 2, 3]
    assert all(e["message"].startswith("flaky failure on attempt") for e in errors)
    # nap and greet succeeded: their rows are deleted (delete_finished_jobs defaults true).
    wait_until(
        lambda: not query(db, "SELECT 1 FROM jobs WHERE id IN (%s, %s)",
                          enqueued["greet"], enqueued["nap"]),
        20, what="greet and nap rows to be deleted",
    )
    assert time.monotonic() - started >= 2.5
    assert "(nap) attempt" not in process.output, "nap failed or timed out despite touch"
    process.signal(15)
    assert process.wait() == 0
