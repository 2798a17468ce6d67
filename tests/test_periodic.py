"""Periodic jobs against a real PostgreSQL: the tick statement, the runner's loop, the
listing. The loop runs in-process with its own clock and leadership flag; the runs with
real runners are in tests/acceptance/test_cron.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from backy_gevent.db.connections import ConnectionPool, connect
from backy_gevent.db.queries import Queries
from backy_gevent.runner.periodic import Periodic
from backy_gevent.runner.supervision import DatabaseHealth
from backy_gevent.worker import Registry
from tests import workers
from tests.conftest import query, wait_until

UTC = dt.timezone.utc
MINUTE = dt.timedelta(minutes=1)


def minute_floor(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


class Clock:
    """A settable clock for the loop."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    connections = ConnectionPool(dsn, size=2, prepare=True)
    yield connections
    connections.close()


class HookCalls(list):  # type: ignore[type-arg]
    """Stands in for the runner's Hooks: records each call."""

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        self.append((hook_name, kwargs))
        return []


def periodic(pool: ConnectionPool, clock: Clock, *classes: Any, leading: bool = True,
             hooks: Any = None) -> Any:
    registry = Registry.from_classes(*classes)
    return Periodic(pool, Queries("jobs"), registry, retry_count=3, leading=lambda: leading,
                    health=DatabaseHealth(), hooks=hooks, clock=clock)


def serve(db: Any, *names: str) -> None:
    """A live runner row that has these workers (the leader ticks only those)."""
    query(db, "INSERT INTO jobs_runners (id, hostname, pid, workers, queues)"
              " VALUES ('r1', 'h', 1, %s, '{}')", list(names))


def cron_jobs(db: Any) -> list[tuple[str, dt.datetime]]:
    return query(db, "SELECT worker, run_at FROM jobs ORDER BY id")


def test_two_runners_racing_for_one_tick_enqueue_it_once(
    client: Client, db: Any, dsn: str
) -> None:
    query(db, "INSERT INTO jobs_cron (worker, expression, last_tick)"
              " VALUES ('every_minute', '* * * * *', now() - interval '1 hour')")
    tick = minute_floor(dt.datetime.now(UTC))
    queries = Queries("jobs")
    first = connect(dsn, autocommit=False, prepare=True)
    second = connect(dsn, prepare=True)
    results: list[list[Any]] = []
    with contextlib.closing(first), contextlib.closing(second):
        with first.cursor() as cur:
            queries.execute(cur, "cron_tick", {"worker": "every_minute", "tick": tick})
            results.append(cur.fetchall())  # not committed yet

        def race() -> None:
            with second.cursor() as cur:
                queries.execute(cur, "cron_tick", {"worker": "every_minute", "tick": tick})
                results.append(cur.fetchall())

        racer = threading.Thread(target=race)
        racer.start()
        wait_until(lambda: query(
            db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            second.get_backend_pid()), what="the second tick to wait for the row lock")
        first.commit()
        racer.join(10)
    assert [len(rows) for rows in results] == [1, 0]
    assert cron_jobs(db) == [("every_minute", tick)]
    assert query(db, "SELECT last_tick FROM jobs_cron") == [(tick,)]


def test_the_same_tick_again_or_an_earlier_one_enqueues_nothing(client: Client, db: Any) -> None:
    query(db, "INSERT INTO jobs_cron (worker, expression, last_tick)"
              " VALUES ('every_minute', '* * * * *', now() - interval '1 hour')")
    tick = minute_floor(dt.datetime.now(UTC))
    with psycopg2.connect(db.dsn) as conn, conn.cursor() as cur:
        for moment in (tick, tick, tick - MINUTE):
            cur.execute(Queries("jobs").composed("cron_tick"),
                        {"worker": "every_minute", "tick": moment})
    assert cron_jobs(db) == [("every_minute", tick)]


def test_a_new_schedule_starts_from_now(
    client: Client, db: Any, pool: ConnectionPool
) -> None:
    serve(db, "every_minute", "hourly")
    clock = Clock()
    loop = periodic(pool, clock, workers.EveryMinute, workers.Hourly, workers.Record)
    loop.step()
    rows = query(db, "SELECT worker, expression, timezone, max_attempts, last_tick > now()"
                     " - interval '1 minute' FROM jobs_cron ORDER BY worker")
    assert rows == [("every_minute", "* * * * *", "UTC", 4, True),
                    ("hourly", "0 * * * *", "Europe/Berlin", 4, True)]
    assert cron_jobs(db) == []


def test_the_leader_catches_up_the_latest_missed_tick_once(
    client: Client, db: Any, pool: ConnectionPool
) -> None:
    serve(db, "every_minute")
    query(db, "INSERT INTO jobs_cron (worker, expression, last_tick)"
              " VALUES ('every_minute', '* * * * *', now() - interval '10 minutes')")
    clock = Clock()
    hooks = HookCalls()
    loop = periodic(pool, clock, workers.EveryMinute, hooks=hooks)
    pause = loop.step()
    latest = minute_floor(clock.now)
    assert cron_jobs(db) == [("every_minute", latest)]
    [(hook, kwargs)] = hooks
    assert hook == "backy_job_enqueued"
    assert [(job.worker, job.run_at, job.args, job.max_attempts) for job in kwargs["jobs"]] == [
        ("every_minute", latest, {}, 4)]
    assert 0 < pause <= 1.0
    loop.step()
    assert cron_jobs(db) == [("every_minute", latest)]
    clock.now = latest + MINUTE + dt.timedelta(seconds=0.5)
    loop.step()
    assert cron_jobs(db) == [("every_minute", latest), ("every_minute", latest + MINUTE)]
    assert loop.enqueued == {"every_minute": 2}
    assert len(hooks) == 2


def test_a_tick_missed_more_than_an_hour_ago_is_skipped(
    client: Client, db: Any, pool: ConnectionPool
) -> None:
    serve(db, "hourly")
    clock = Clock()
    # A daily schedule whose latest tick is 61 minutes old: none is due.
    latest = minute_floor(clock.now) - dt.timedelta(minutes=61)
    query(db, "INSERT INTO jobs_cron (worker, expression, last_tick) VALUES ('hourly', %s, %s)",
          f"{latest.minute} {latest.hour} * * *", latest - dt.timedelta(hours=5))
    loop = periodic(pool, clock, workers.EveryMinute)
    loop.step()
    assert cron_jobs(db) == []


def test_only_the_leader_ticks_and_only_schedules_a_live_runner_serves(
    client: Client, db: Any, pool: ConnectionPool
) -> None:
    query(db, "INSERT INTO jobs_cron (worker, expression, last_tick)"
              " VALUES ('every_minute', '* * * * *', now() - interval '10 minutes')")
    clock = Clock()
    periodic(pool, clock, workers.EveryMinute, leading=False).step()
    periodic(pool, clock, workers.EveryMinute).step()  # leads, but no live runner has it
    assert cron_jobs(db) == []
    serve(db, "every_minute")
    periodic(pool, clock, workers.EveryMinute).step()
    assert cron_jobs(db) == [("every_minute", minute_floor(clock.now))]


def test_a_changed_cron_is_resynced_keeping_the_last_tick(
    client: Client, db: Any, pool: ConnectionPool
) -> None:
    last = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    query(db, "INSERT INTO jobs_cron (worker, expression, timezone, last_tick) VALUES"
              " ('every_minute', '0 0 * * *', 'Asia/Tokyo', %s), ('record', '* * * * *',"
              " 'UTC', %s)", last, last)
    periodic(pool, Clock(), workers.EveryMinute, workers.Record, leading=False).step()
    # every_minute took its new expression and kept its tick; record has no cron any more.
    assert query(db, "SELECT worker, expression, timezone, last_tick FROM jobs_cron") == [
        ("every_minute", "* * * * *", "UTC", last)]


def test_schedules_lists_each_with_its_next_run(client: Client, db: Any) -> None:
    serve(db, "hourly")
    last = minute_floor(dt.datetime.now(UTC))
    query(db, "INSERT INTO jobs_cron (worker, expression, timezone, last_tick) VALUES"
              " ('hourly', '0 * * * *', 'Europe/Berlin', %s),"
              " ('gone', 'not cron', 'UTC', %s)", last, last)
    gone, hourly = client.schedules()
    assert gone == {"worker": "gone", "expression": "not cron", "timezone": "UTC",
                    "queue": "default", "last_tick": last, "next_run": None, "active": False}
    assert hourly["worker"] == "hourly" and hourly["active"] is True
    assert hourly["next_run"] == (last + dt.timedelta(hours=1)).replace(minute=0)
