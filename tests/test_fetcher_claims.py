"""The fetcher's plain claims against a real database: the jobs it hands out start before
its claim returns, and the claims it keeps made (``PlainClaim``, one per set of pools
and limits) claim exactly what claims made afresh would, while it keeps a bounded
number of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gevent.event import Event

from backy_gevent.client import Client
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.runner import fetcher as fetcher_module
from backy_gevent.runner.fetcher import Fetcher, Wakeup
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import DatabaseHealth
from tests import workers
from tests.conftest import query
from tests.test_pools import RecordingExecutor


@pytest.fixture
def connections(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(dsn, size=2, application_name="test", prepare=True)
    yield pool
    pool.close()


def fetcher_of(client: Client, connections: ConnectionPool,
               executor: RecordingExecutor) -> tuple[Fetcher, WorkerPool]:
    wakeup = Wakeup()
    pool = WorkerPool(client.registry.get("record"), executor,  # type: ignore[arg-type]
                      fetch_limit=100, on_slot_free=wakeup.slot_freed)
    fetcher = Fetcher(client.settings, connections, client.queries, "runner-1",
                      {pool.name: pool}, wakeup=wakeup, notified=lambda: True,
                      stopping=Event(), health=DatabaseHealth())
    return fetcher, pool


def test_the_jobs_a_claim_hands_out_have_started_when_it_returns(
    client: Client, connections: ConnectionPool, db: Any
) -> None:
    """The fetcher yields to them before its own bookkeeping (an idle runner's latency)."""
    enqueued = client.enqueue_many(workers.Record, [{"n": n} for n in range(3)])
    executor = RecordingExecutor(seconds=0.5)
    fetcher, pool = fetcher_of(client, connections, executor)
    try:
        assert fetcher.claim({pool: 10}) == 3
        assert executor.running == 3  # all three inside run(), none waiting its turn
        assert pool.maybe_more is False  # 3 of a batch of 10: the table is drained
    finally:
        pool.stop()
    assert [job.id for job in enqueued] == _running_ids(db)


def test_kept_claims_claim_what_fresh_ones_would_and_stay_few(
    client: Client, connections: ConnectionPool, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher_module, "KNOWN_CLAIMS", 2)
    enqueued = client.enqueue_many(workers.Record, [{"n": n} for n in range(7)])
    executor = RecordingExecutor(seconds=0.0)
    fetcher, pool = fetcher_of(client, connections, executor)
    counts = []
    try:
        # Limits 1, 2, 1 (the kept claim of limit 1 again), 3 (past the bound: forgotten
        # and made again), then 1 more than is left.
        for limit in (1, 2, 1, 3, 5):
            counts.append(fetcher.claim({pool: limit}))
            assert len(fetcher._plain_claims) <= 2
            assert pool.maybe_more is (counts[-1] >= limit)
    finally:
        pool.stop()
    assert counts == [1, 2, 1, 3, 0]
    # Every job claimed once, in order, by this runner, as a fresh claim would.
    assert _running_ids(db) == [job.id for job in enqueued]
    assert query(db, "SELECT DISTINCT attempt, runner_id FROM jobs") == [(1, "runner-1")]


def _running_ids(db: Any) -> list[int]:
    return [row[0] for row in query(db, "SELECT id FROM jobs WHERE state = 'running' ORDER BY id")]
