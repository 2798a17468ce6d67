"""Successes carried by claims: while a runner follows a stream, each claim also deletes
the rows of the attempts that succeeded since the last one (``Completer.carry``,
``complete_claim_one``), one commit for both. What that must not cost: a success is
written exactly once, or waits for the writer when the claim fails or is cut short; a
success whose job was cancelled or rescued meanwhile is counted lost, as the writer
counts it; finished rows that are kept are written by the writer, with their results.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import psycopg2
import pytest
from gevent.event import Event

from backy_gevent.client import Client
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.job import Job
from backy_gevent.runner.completer import Completer
from backy_gevent.runner.fetcher import Fetcher, Wakeup
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import DatabaseHealth
from tests.conftest import query
from tests.test_pools import RecordingExecutor

RUNNER_ID = "carrying-runner"


class HeldPool(WorkerPool):
    """A worker pool that holds the jobs it is given (none runs: the test says how
    each attempt ends)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[Job] = []

    def submit(self, job: Job) -> None:
        self.held.append(job)


class Carrier:
    """A fetcher and a completer of one runner, on a real database, not looping."""

    def __init__(self, client: Client, dsn: str, *, delete: bool, names: list[str]) -> None:
        self.pool = ConnectionPool(dsn, size=2, application_name="test", prepare=True)
        queries = Queries(client.settings.table_name)
        self.completer = Completer(self.pool, queries, RUNNER_ID, delete_finished_jobs=delete)
        self.pools = {
            name: HeldPool(client.registry.get(name), RecordingExecutor(),
                           fetch_limit=3, on_slot_free=lambda pool: None)
            for name in names
        }
        self.fetcher = Fetcher(
            client.settings, self.pool, queries, RUNNER_ID, self.pools,
            wakeup=Wakeup(), notified=lambda: True, stopping=Event(), health=DatabaseHealth(),
            completer=self.completer,
        )
        self.fetcher.streaming = True

    def claim(self) -> list[int]:
        """Claim up to 3 jobs of each worker: the ids claimed."""
        before = {job.id for job in self.held()}
        self.fetcher.claim({pool: 3 for pool in self.pools.values()})
        return sorted({job.id for job in self.held()} - before)

    def held(self) -> list[Job]:
        return [job for pool in self.pools.values() for job in pool.held]

    def succeed(self, ids: list[int]) -> None:
        for job in self.held():
            if job.id in ids:
                self.completer.completed(job, {"ok": job.id})

    def close(self) -> None:
        for pool in self.pools.values():
            pool.stop()
        self.pool.close()


@pytest.fixture
def carrier(client: Client, dsn: str) -> Iterator[Any]:
    made: list[Carrier] = []

    def make(*, delete: bool = True, names: tuple[str, ...] = ("record",)) -> Carrier:
        made.append(Carrier(client, dsn, delete=delete, names=list(names)))
        return made[-1]

    yield make
    for each in made:
        each.close()


def rows(db: Any) -> dict[int, tuple[str, str | None]]:
    return {row[0]: (row[1], row[2]) for row in query(db, "SELECT id, state, runner_id FROM jobs")}


@pytest.mark.parametrize("names", [("record",), ("record", "sleep")])
def test_a_claim_while_streaming_deletes_the_succeeded_rows_and_counts_the_lost(
    client: Client, db: Any, carrier: Any, names: tuple[str, ...]
) -> None:
    """One worker: complete_claim_one; two: complete_claim."""
    ids = sorted(job.id for name in names for job in client.enqueue_many(name, [{}] * 7))
    it = carrier(names=names)
    first = it.claim()
    assert len(first) == 3 * len(names)
    cancelled = first[0]
    client.cancel(cancelled)
    it.succeed(first)
    assert it.completer.pending == len(first)
    second = it.claim()
    assert len(second) == 3 * len(names) and not set(second) & set(first)
    assert it.completer.pending == 0 and it.completer.lost == 1  # the cancelled one
    state = rows(db)
    assert [job_id for job_id in first if job_id in state] == [cancelled]
    assert state[cancelled] == ("cancelled", None)
    assert all(state[job_id] == ("running", RUNNER_ID) for job_id in second)
    # A claim that finds nothing more still carries what succeeded.
    it.succeed(second)
    third = it.claim()
    it.succeed(third)
    assert it.claim() == []
    assert it.completer.pending == 0 and it.completer.lost == 1
    assert sorted(rows(db)) == [cancelled]
    assert sorted(first + second + third) == ids


def test_claims_carry_nothing_when_not_streaming_or_when_finished_rows_are_kept(
    client: Client, db: Any, carrier: Any
) -> None:
    client.enqueue_many("record", [{}] * 9)
    calm = carrier()
    calm.fetcher.streaming = False
    done = calm.claim()
    calm.succeed(done)
    calm.claim()
    assert calm.completer.pending == 3
    calm.completer.flush()
    assert calm.completer.pending == 0 and not set(done) & set(rows(db))

    keeping = carrier(delete=False)
    kept = keeping.claim()
    keeping.succeed(kept)
    keeping.claim()
    assert keeping.completer.pending == 3
    assert {rows(db)[job_id] for job_id in kept} == {("running", RUNNER_ID)}
    keeping.completer.flush()
    results = dict(query(db, "SELECT id, result FROM jobs WHERE state = 'completed'"))
    assert results == {job_id: {"ok": job_id} for job_id in kept}


def test_successes_of_a_failed_claim_wait_and_the_writer_writes_them(
    client: Client, db: Any, carrier: Any
) -> None:
    client.enqueue_many("record", [{}] * 6)
    it = carrier()
    done = it.claim()
    it.succeed(done)
    # The database goes away under the claim: its connection is ended.
    query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
              " WHERE application_name = 'test' AND pid <> pg_backend_pid()")
    with pytest.raises(psycopg2.OperationalError):
        it.claim()
    assert it.completer.pending == 3
    assert {rows(db)[job_id] for job_id in done} == {("running", RUNNER_ID)}
    it.completer.flush()
    assert it.completer.pending == 0 and it.completer.lost == 0
    assert not set(done) & set(rows(db))


def test_successes_of_a_claim_cut_short_at_shutdown_are_written_before_the_writer_ends(
    client: Client, db: Any, carrier: Any
) -> None:
    client.enqueue_many("record", [{}] * 3)
    it = carrier()
    done = it.claim()
    it.succeed(done)
    started = Event()

    def slow_claim(completions: dict[str, Any]) -> tuple[int, list[int]]:
        started.set()
        gevent.sleep(30)  # the round trip the runner's shutdown kills
        raise AssertionError("not reached")

    claim = gevent.spawn(it.completer.carry, slow_claim)
    started.wait(5)
    writer = gevent.spawn(lambda: [it.completer.step() for _ in iter(int, 1)])
    it.completer.stop()
    gevent.sleep(0.3)
    assert not it.completer.done.is_set(), "the writer ended with successes in a claim"
    claim.kill()
    assert it.completer.done.wait(5), "the writer did not write what the claim gave back"
    writer.kill()
    assert it.completer.pending == 0 and not set(done) & set(rows(db))
