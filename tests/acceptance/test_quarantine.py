"""Jobs that kill or freeze their runner: the culprit pays, the jobs beside it don't.

Real ``backy-gevent run`` processes; workers from tests/poison.py and tests/workers.py
record every attempt in ``runs``. A job that was running when its runner died is
quarantined: the lost attempt is not counted, and its next attempts run in a process of
their own, so the poison job fails on its own while its innocent neighbours complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from backy_gevent.client import Client
from backy_gevent.worker import Registry
from tests import poison, workers
from tests.acceptance.test_runner import (
    POLL,
    count_jobs,
    job_row,
    rescue_bound,
    runs,
    seconds,
    state,
)
from tests.conftest import RunnerProcess, query, wait_until

FAST = ("--poll-interval", str(POLL))
Runner = Callable[..., RunnerProcess]


@pytest.fixture
def poison_client(client: Client) -> Client:
    client._registry = Registry.from_classes(*workers.ALL, *poison.ALL)
    return client


def errors_of(db: Any, job_id: int) -> list[tuple[int, str]]:
    row = job_row(db, job_id)
    assert row is not None
    return [(entry["attempt"], entry["error"]) for entry in row["errors"]]


@pytest.mark.parametrize("worker", [poison.Exit, poison.Segfault])
def test_the_job_that_kills_its_runner_fails_alone_and_its_neighbours_complete(
    runner: Runner, poison_client: Client, db: Any, worker: type,
) -> None:
    first = runner(*FAST, *poison.POISON_IMPORTS)
    # Innocents that run until their runner dies (and finish at once in quarantine).
    innocents = poison_client.enqueue_many(workers.Hang, [{"seconds": 60}] * 5)
    wait_until(lambda: len(runs(db)) == 5, timeout=10, what="the innocents to start")
    culprit = poison_client.enqueue(worker)
    assert first.process.wait(10) != 0
    died_at = time.monotonic()
    second = runner(*FAST, *poison.POISON_IMPORTS)
    # The rest of the queue keeps flowing meanwhile.
    later = poison_client.enqueue_many(workers.Record, [{"n": n} for n in range(30)])
    wait_until(lambda: state(db, culprit.id) == "failed" and count_jobs(db) == 1,
               timeout=30, what="the culprit to fail and every other job to finish")
    print(f"\nquarantine settled {time.monotonic() - died_at:.1f}s after the crash")
    assert second.process.poll() is None, "the culprit took a second runner down"
    assert errors_of(db, culprit.id) == [
        (1, "backy_gevent.job.JobCrashed"), (2, "backy_gevent.job.JobCrashed"),
    ]
    # First beside the innocents, uncharged; then in quarantine: beside some of them again
    # (each crash splits the attempts cut short in two) until alone, charged each time.
    attempts = [run["attempt"] for run in runs(db, culprit.id)]
    assert attempts[-1] == 2 and attempts.count(2) == 1 and set(attempts) == {1, 2}
    for job in innocents:
        # Cut short in the first runner, and perhaps by the culprit's crashes in
        # quarantine; never charged, done in the end.
        first_run, *again = runs(db, job.id)
        assert (first_run["pid"], first_run["finished_at"]) == (first.process.pid, None)
        assert {run["attempt"] for run in again} == {1}
        assert again[-1]["finished_at"] is not None
        assert all((run["pid"], run["isolated"]) == (second.process.pid, True) for run in again)
        assert job_row(db, job.id) is None  # completed
    for job in later:
        # (An attempt may fail on a busy shared server: "too many clients".)
        [run] = [run for run in runs(db, job.id) if run["finished_at"] is not None]
        assert run["pid"] == second.process.pid


def test_a_rescued_job_keeps_its_place_and_restarts_within_the_bound_under_a_backlog(
    runner: Runner, client: Client, db: Any
) -> None:
    first = runner(*FAST, "--worker", "hang")
    job = client.enqueue(workers.Hang, seconds=60)
    wait_until(lambda: runs(db, job.id), timeout=10, what="the job to start")
    run_at = job_row(db, job.id)["run_at"]  # type: ignore[index]
    first.process.kill()
    first.process.wait(10)
    killed_at = query(db, "SELECT clock_timestamp()")[0][0]
    # A backlog of thousands of newer jobs of the same worker waits behind it.
    client.enqueue_many(workers.Hang, [{"seconds": 0}] * 3000)
    runner(*FAST, "--worker", "hang", "--fetch-limit", "5")
    bound = rescue_bound(workers.Hang, leader_died=True)  # the first runner led
    wait_until(lambda: len(runs(db, job.id)) == 2, timeout=bound + 10,
               what="the rescued job to run again")
    recovery = seconds(runs(db, job.id)[1]["started_at"] - killed_at)
    print(f"\nrescue under a backlog of 3000: {recovery:.2f}s (bound {bound:.1f}s)")
    assert recovery <= bound
    row = job_row(db, job.id)
    assert row is None or row["run_at"] == run_at


def test_a_pure_cpu_job_past_max_runtime_times_out_and_the_runner_lives_on(
    runner: Runner, client: Client, db: Any
) -> None:
    proc = runner(*FAST, *poison.POISON_IMPORTS)
    client._registry = Registry.from_classes(*workers.ALL, *poison.ALL)
    spin = client.enqueue(poison.Spin)
    wait_until(lambda: runs(db, spin.id), timeout=10, what="the spinning job to start")
    started = time.monotonic()
    wait_until(lambda: state(db, spin.id) == "failed", timeout=10,
               what="the spinning job to be stopped")
    stopped_after = time.monotonic() - started
    print(f"\na pure-CPU job with max_runtime 1 was stopped after {stopped_after:.1f}s")
    assert stopped_after < poison.Spin.max_runtime + 3.0
    assert errors_of(db, spin.id) == [(1, "backy_gevent.job.JobTimeout")]
    after = client.enqueue(workers.Record)
    wait_until(lambda: job_row(db, after.id) is None, timeout=10, what="a job after it")
    assert proc.process.poll() is None


def test_a_hub_stuck_in_a_c_call_ends_the_runner_and_the_job_runs_isolated_next(
    runner: Runner, client: Client, db: Any
) -> None:
    proc = runner(*FAST, *poison.POISON_IMPORTS, "--worker", "poison_backtrack")
    client._registry = Registry.from_classes(*poison.ALL)
    stuck = client.enqueue(poison.Backtrack)
    wait_until(lambda: runs(db, stuck.id), timeout=10, what="the stuck job to start")
    started = time.monotonic()
    # The hub stays blocked, the GIL held: faulthandler's thread ends the process after
    # the longest max_runtime (1 s) plus 5 to 6 s, so that the job's lease can free it
    # (armed for 7 s, re-armed about once a second).
    assert proc.process.wait(15) == 1
    took = time.monotonic() - started
    print(f"\na hub stuck in C was ended after {took:.1f}s")
    assert 5.0 < took < 10.0
    assert "Timeout (0:00:07)!" in proc.output and "in perform" in proc.output


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "BaseException"])
def test_a_job_raising_a_base_exception_fails_like_any_other(
    runner: Runner, client: Client, db: Any, kind: str
) -> None:
    proc = runner(*FAST, *poison.POISON_IMPORTS)
    client._registry = Registry.from_classes(*workers.ALL, *poison.ALL)
    job = client.enqueue(poison.Raise, kind=kind)
    wait_until(lambda: state(db, job.id) == "failed", timeout=10, what="the job to fail")
    [(attempt, error)] = errors_of(db, job.id)
    assert attempt == 1 and error.endswith(kind)
    after = client.enqueue(workers.Record)
    wait_until(lambda: job_row(db, after.id) is None, timeout=10, what="a job after it")
    assert proc.process.poll() is None


def test_a_ten_megabyte_args_object_runs(runner: Runner, client: Client, db: Any) -> None:
    runner(*FAST)
    big = {"blob": "x" * 10_000_000}
    job = client.enqueue(workers.Record, big)
    wait_until(lambda: job_row(db, job.id) is None, timeout=30, what="the big job to finish")
    [run] = runs(db, job.id)
    assert len(run["args"]["blob"]) == 10_000_000
