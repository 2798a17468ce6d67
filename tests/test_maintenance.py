"""The leader's chores that no acceptance test sees directly: its VACUUM of the jobs table."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from backy_gevent.client import Client
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.runner.maintenance import Maintenance
from backy_gevent.runner.supervision import DatabaseHealth
from tests.conftest import query, wait_until

DEAD = 3000  # dead row versions made below, past the bound the test sets


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    connections = ConnectionPool(dsn, size=2, prepare=True)
    yield connections
    connections.close()


def leader(pool: ConnectionPool, vacuum_dead_rows: int) -> Maintenance:
    """A Maintenance that leads after its first round (no other runner competes)."""
    maintenance = Maintenance(pool, Queries("jobs"), "r1", workers=["record"], queues=[],
                              poll_interval=1.0, health=DatabaseHealth(),
                              vacuum_dead_rows=vacuum_dead_rows)
    maintenance.step()  # the beat takes the free leadership
    assert maintenance.leading()
    return maintenance


def vacuums(db: Any) -> int:
    [(n,)] = query(db, "SELECT vacuum_count FROM pg_stat_user_tables"
                       " WHERE relid = 'jobs'::regclass")
    return int(n)


def dead_rows(db: Any) -> int:
    [(n,)] = query(db, "SELECT pg_stat_get_dead_tuples('jobs'::regclass)")
    return int(n)


def make_dead_rows(db: Any) -> None:
    """DEAD claimed-and-deleted jobs, as a drain leaves them; autovacuum kept out."""
    query(db, "ALTER TABLE jobs SET (autovacuum_enabled = false)")
    query(db, "INSERT INTO jobs (worker) SELECT 'record' FROM generate_series(1, %s)", DEAD)
    query(db, "DELETE FROM jobs")
    # The statistics system hears of them within a second or so.
    wait_until(lambda: dead_rows(db) >= DEAD, timeout=10)


@pytest.mark.parametrize("bound", [DEAD // 2, 0])
def test_the_leader_vacuums_the_table_past_the_bound_of_dead_rows(
    client: Client, db: Any, pool: ConnectionPool, bound: int
) -> None:
    maintenance = leader(pool, vacuum_dead_rows=bound)
    make_dead_rows(db)
    before = vacuums(db)
    maintenance.step()  # the lead round sees the dead rows and starts the VACUUM
    if not bound:  # 0: never
        assert maintenance._vacuuming is None
        assert vacuums(db) == before
        return
    assert maintenance._vacuuming is not None
    maintenance._vacuuming.join(timeout=30)
    assert maintenance.vacuums == 1
    wait_until(lambda: vacuums(db) == before + 1, timeout=10)
    wait_until(lambda: dead_rows(db) < DEAD // 2, timeout=10)
    # Under the bound again: the next round starts none.
    maintenance.step()
    assert maintenance._vacuuming.dead and maintenance.vacuums == 1


def test_each_beat_counts_the_live_runners_that_share_a_runners_claims(
    client: Client, db: Any, pool: ConnectionPool
) -> None:
    """The fetcher spaces its claims by how many live runners serve the same workers in
    the same queues (runner.pacing): the leader's round and a plain beat both say."""
    told: dict[str, list[int]] = {}

    def runner(name: str, workers: list[str], queues: list[str]) -> Maintenance:
        return Maintenance(pool, Queries("jobs"), name, workers=workers, queues=queues,
                           poll_interval=1.0, health=DatabaseHealth(),
                           on_peers=told.setdefault(name, []).append)

    first = runner("r1", ["record", "sleep"], [])
    first.step()
    assert first.leading() and told["r1"] == [1]
    runner("r2", ["sleep"], ["mail"]).step()  # shares "sleep", every queue of r1
    runner("r3", ["record"], ["other"]).step()  # shares "record"
    runner("r4", ["fail"], []).step()  # another worker: no claim of r1's
    runner("r5", ["sleep"], ["bulk"]).step()
    assert [told[name][-1] for name in ("r2", "r3", "r4")] == [2, 2, 1]
    first.step()  # the leader's round
    assert told["r1"][-1] == 4
    second = runner("r2", ["sleep"], ["mail"])
    second.step()
    assert told["r2"][-1] == 2  # r1 (every queue) but not r5 (another queue)
    query(db, "UPDATE jobs_runners SET heartbeat_at = now() - interval '1 hour'"
              " WHERE id IN ('r3', 'r5')")
    first.step()
    assert told["r1"][-1] == 2  # silent runners no longer count


def test_a_leader_that_may_not_vacuum_says_so_once_and_leads_on(
    client: Client, db: Any, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the table's owner may VACUUM it: the server warns and skips. The leader says
    so once, stops trying, and its rounds go on."""
    role = "backy_not_owner_" + uuid.uuid4().hex[:8]
    [(schema,)] = query(db, "SELECT current_schema()")
    query(db, f'CREATE ROLE "{role}" LOGIN')
    try:
        query(db, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}";'
                  f' GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}";'
                  f' GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"')
        parameters = psycopg2.extensions.parse_dsn(dsn) | {"user": role}
        pool = ConnectionPool(psycopg2.extensions.make_dsn(**parameters), size=2)
        try:
            maintenance = leader(pool, vacuum_dead_rows=DEAD // 2)
            make_dead_rows(db)
            before = vacuums(db)
            with caplog.at_level(logging.WARNING, logger="backy_gevent.runner"):
                for _ in range(3):
                    maintenance.step()
                    if maintenance._vacuuming is not None:
                        maintenance._vacuuming.join(timeout=30)
            refusals = [r for r in caplog.records if "may not VACUUM" in r.getMessage()]
            assert len(refusals) == 1, caplog.text
            assert maintenance.vacuums == 0 and vacuums(db) == before
            assert maintenance.leading()  # its rounds went on
        finally:
            pool.close()
    finally:
        query(db, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
