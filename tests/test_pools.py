"""WorkerPool: bounded by max_concurrency, greenlets reused, free slots and hand-back."""

from __future__ import annotations

import datetime
from typing import Any

import gevent
import pytest

from backy_gevent.job import Job
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.worker import Registration, Worker


class Slow(Worker):
    name = "slow"
    max_concurrency = 2

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        return None


class Unlimited(Slow):
    name = "unlimited"
    max_concurrency = None


class RecordingExecutor:
    """Stands in for the Executor: records which greenlet ran each job, and overlap."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.seconds = seconds
        self.greenlets: list[Any] = []
        self.running = 0
        self.most_running = 0

    def run(self, job: Job, registration: Registration) -> None:
        self.greenlets.append(gevent.getcurrent())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        gevent.sleep(self.seconds)
        self.running -= 1


def job(n: int, worker: str = "slow") -> Job:
    now = datetime.datetime.now(datetime.timezone.utc)
    return Job(n, worker, {}, "default", 0, "running", 1, 4, now, now)


def pool_for(cls: type[Worker], executor: RecordingExecutor, freed: list[int]) -> WorkerPool:
    return WorkerPool(
        Registration(str(cls.name), cls, "test"),
        executor,  # type: ignore[arg-type]
        fetch_limit=50,
        on_slot_free=lambda pool: freed.append(pool.in_flight),
    )


def test_at_most_max_concurrency_run_and_greenlets_are_reused() -> None:
    executor = RecordingExecutor()
    freed: list[int] = []
    pool = pool_for(Slow, executor, freed)
    assert pool.free_slots() == 2
    for n in range(40):
        pool.submit(job(n))
    assert pool.free_slots() == 0
    assert pool.join(timeout=5)
    assert len(executor.greenlets) == 40
    assert executor.most_running == 2
    assert len(set(executor.greenlets)) == 2  # two greenlets ran all 40 jobs
    assert freed[-1] == 0 and len(freed) == 40
    assert pool.free_slots() == 2
    pool.stop()


def test_an_unlimited_pool_runs_a_whole_batch_at_once_and_keeps_its_greenlets() -> None:
    executor = RecordingExecutor(seconds=0.05)
    pool = pool_for(Unlimited, executor, [])
    assert pool.free_slots() == 50  # fetch_limit
    for n in range(30):
        pool.submit(job(n, "unlimited"))
    assert pool.join(timeout=5)
    assert executor.most_running == 30
    first = set(executor.greenlets)
    for n in range(30, 60):
        pool.submit(job(n, "unlimited"))
    assert pool.join(timeout=5)
    assert set(executor.greenlets[30:]) <= first  # the idle greenlets took the new jobs
    pool.stop()


def test_unstarted_jobs_can_be_taken_back() -> None:
    executor = RecordingExecutor(seconds=0.2)
    pool = pool_for(Slow, executor, [])
    for n in range(5):
        pool.submit(job(n))
    gevent.sleep(0)  # let the two greenlets take their first jobs
    taken = pool.take_unstarted()
    assert [j.id for j in taken] == [2, 3, 4]
    assert pool.in_flight == 2
    assert not pool.join(timeout=0.01)
    assert pool.join(timeout=5)
    assert len(executor.greenlets) == 2  # the three taken back never ran
    pool.stop()


@pytest.mark.parametrize("capacity", [1, 3])
def test_free_slots_never_exceed_the_fetch_limit(capacity: int) -> None:
    class Capped(Slow):
        name = "capped"
        max_concurrency = capacity

    pool = WorkerPool(
        Registration("capped", Capped, "test"), RecordingExecutor(),  # type: ignore[arg-type]
        fetch_limit=2, on_slot_free=lambda pool: None,
    )
    assert pool.free_slots() == min(capacity, 2)
