"""Pausing a queue with real runners: every runner stops claiming its jobs at once,
running ones finish, the pause outlives the runners, and a resume wakes them."""

from __future__ import annotations

import time
from typing import Any

from backy_gevent.client import Client
from tests import workers
from tests.acceptance.test_runner import FAST, POLL, Runner, count_jobs, runs, seconds, state
from tests.conftest import query, wait_until


def test_a_paused_queue_is_skipped_by_every_runner_until_resumed(
    runner: Runner, client: Client, db: Any
) -> None:
    runners = [runner(*FAST, "--worker", "sleep") for _ in range(3)]
    running = client.enqueue(workers.Sleep, {"seconds": 0.8, "queue": "mail"}, queue="mail")
    wait_until(lambda: runs(db, running.id), timeout=10, what="the mail job to start")
    client.pause("mail")
    paused_at = time.monotonic()
    mail = client.enqueue_many(workers.Sleep, [{"seconds": 0, "queue": "mail"}] * 20,
                               queue="mail")
    other = client.enqueue_many(workers.Sleep, [{"seconds": 0, "queue": "default"}] * 20)
    # The other queue flows; the job that was running when the pause came finishes.
    wait_until(lambda: all(state(db, job.id) is None for job in other), timeout=15,
               what="the other queue's jobs to run")
    wait_until(lambda: state(db, running.id) is None, timeout=5, what="the running job")
    # Well past the poll interval and the idle poll of every runner: still nothing.
    time.sleep(max(0.0, 10 * POLL + 1 - (time.monotonic() - paused_at)))
    assert not any(runs(db, job.id) for job in mail)
    assert {state(db, job.id) for job in mail} == {"available"}
    # The pause outlives the runners.
    for process in runners:
        process.stop()
    runner(*FAST, "--worker", "sleep")
    time.sleep(1.0)
    assert not any(runs(db, job.id) for job in mail)
    assert client.resume("mail") is True
    resumed_at = db_now(db)
    wait_until(lambda: count_jobs(db) == 0, timeout=15, what="the mail jobs to run")
    first = min(runs(db, job.id)[0]["started_at"] for job in mail)
    woken = seconds(first - resumed_at)
    print(f"\nfirst mail job started {woken:.3f}s after the resume")
    assert woken < POLL  # the resume's NOTIFY wakes the runner: no waiting for a poll
    assert client.resume("mail") is False  # not paused any more


def db_now(db: Any) -> Any:
    return query(db, "SELECT clock_timestamp()")[0][0]
