"""Fleet-wide limits: ``global_concurrency`` and ``rate_limit`` hold across several real
runners, and a dead runner's slots come back with its lease.

Each attempt records when it started and finished (the ``runs`` table); the assertions
are on those times, read from the database clock.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from backy_gevent.client import Client
from tests import workers
from tests.acceptance.test_runner import (
    FAST,
    Runner,
    count_jobs,
    max_overlap,
    runs,
    seconds,
)
from tests.conftest import cli_env, query, wait_until


def spans_of(times: list[datetime.datetime], n: int) -> list[float]:
    """The seconds spanned by each run of ``n`` consecutive times (sorted)."""
    return [seconds(times[i + n - 1] - times[i]) for i in range(len(times) - n + 1)]


def test_global_concurrency_holds_across_three_runners(
    runner: Runner, client: Client, db: Any
) -> None:
    for _ in range(3):
        runner(*FAST, "--worker", "fleet_capped")
    began = time.monotonic()
    jobs = client.enqueue_many(workers.FleetCapped, [{"seconds": 0.3}] * 12)
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="the capped jobs to finish")
    elapsed = time.monotonic() - began
    done = runs(db)
    assert sorted(run["job_id"] for run in done) == sorted(job.id for job in jobs)
    overlap = max_overlap([(run["started_at"], run["finished_at"]) for run in done])
    print(f"\n12 jobs of 0.3 s, cap 2, 3 runners: {elapsed:.2f}s, at most {overlap} at once")
    assert overlap == workers.FleetCapped.global_concurrency
    # Two at a time: six rounds of 0.3 s at least; and no stall waiting for a poll.
    assert 1.7 <= elapsed < 8


def test_a_dead_runners_slots_come_back_with_its_lease(
    runner: Runner, client: Client, db: Any
) -> None:
    first = runner(*FAST, "--worker", "fleet_capped")
    held = client.enqueue_many(workers.FleetCapped, [{"seconds": 60}] * 2)
    wait_until(lambda: len(runs(db)) == 2, timeout=10, what="the cap's two slots to fill")
    [(lease_ends,)] = query(db, "SELECT max(expires_at) FROM jobs WHERE state = 'running'")
    first.process.kill()
    first.process.wait(10)
    waiting = client.enqueue(workers.FleetCapped, seconds=0)
    runner(*FAST, "--worker", "fleet_capped")
    wait_until(lambda: runs(db, waiting.id), timeout=20, what="the waiting job to start")
    [started] = runs(db, waiting.id)
    # Not before the dead runner's leases ran out: until then they hold the cap's slots.
    late = seconds(started["started_at"] - lease_ends)
    print(f"\nthe waiting job started {late:.2f}s after the dead runner's leases ended")
    assert 0 <= late < 5
    for job in held:
        assert runs(db, job.id)[0]["pid"] == first.process.pid


def test_rate_limit_holds_in_every_window_across_three_runners(
    runner: Runner, client: Client, db: Any, dsn: str
) -> None:
    for _ in range(3):
        runner(*FAST, "--worker", "rate_limited",
               env=cli_env(dsn, BACKY_DELETE_FINISHED_JOBS="false"))
    began = time.monotonic()
    jobs = client.enqueue_many(workers.RateLimited, [{}] * 12)
    wait_until(lambda: query(db, "SELECT count(*) FROM jobs WHERE state <> 'completed'")
               == [(0,)], timeout=30, what="the rate-limited jobs to finish")
    elapsed = time.monotonic() - began
    # A start is counted when its job is claimed, and attempted_at is that moment.
    claimed = [at for (at,) in query(db, "SELECT attempted_at FROM jobs ORDER BY 1")]
    assert len(claimed) == len(jobs) == len(runs(db))
    count, window = workers.RateLimited.rate_limit
    spans = spans_of(claimed, count + 1)
    # perform begins a moment after the claim; seen from inside it, starts may bunch up
    # by that moment.
    starts = sorted(run["started_at"] for run in runs(db))
    seen = spans_of(starts, count + 1)
    print(f"\n12 starts at 3 per second, 3 runners: {elapsed:.2f}s; narrowest window"
          f" holding 4 claims {min(spans):.3f}s, 4 perform starts {min(seen):.3f}s")
    # Any count + 1 claims span at least the window: no window holds more than count.
    assert min(spans) >= window
    # Four windows' worth, and the runners wake when the window frees a start (not at
    # their idle poll).
    assert 2.9 <= elapsed < 7
