"""Periodic jobs: write this runner's schedules, and on the leader enqueue their ticks.

At start every runner writes the schedules of its workers that have a ``cron`` (the
``cron_sync`` statement keeps each known schedule's last tick) and drops those of its
workers that no longer have one. From then on only the runner that leads maintenance
(``Maintenance.leading``) enqueues ticks, for every schedule whose worker some live
runner has: each tick in one statement (``cron_tick``) that moves the schedule's last
tick up and inserts the job only if it is the one that moved it, so a tick is enqueued
once even when two runners both believe they lead. The ``backy_job_enqueued`` hook is
called for each job enqueued (so the runner's metrics count it).

Catch-up: when a schedule's last tick is behind (no leader for a while, or every runner
was down), only the latest missed tick is enqueued, and only if it is at most
``backy_gevent.cron.CATCH_UP_SECONDS`` (an hour) old; older ticks are skipped. Never a
burst of every missed tick.

The loop wakes at the next tick of any schedule, and at least every ``RECHECK_SECONDS``
to see whether it leads. It reads the schedules when it becomes the leader, when a tick
falls due, and every ``REREAD_SECONDS`` (to learn of schedules other runners wrote).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

from backy_gevent.cron import ALIVE_SECONDS, CronError, Schedule, due_tick, next_run
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.hooks import Hooks
from backy_gevent.job import Job
from backy_gevent.runner.supervision import DatabaseHealth
from backy_gevent.worker import Registration, retry_count_of, schedule_of

log = logging.getLogger("backy_gevent.runner")

RECHECK_SECONDS = 1.0
REREAD_SECONDS = 60.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclasses.dataclass
class _Entry:
    """One schedule as last read: its worker, parsed expression and last tick."""

    worker: str
    schedule: Schedule
    last_tick: dt.datetime


def sync_params(registrations: Iterable[Registration], retry_count: int) -> dict[str, list[Any]]:
    """The ``cron_sync`` parameters for the registered workers that have a cron."""
    params: dict[str, list[Any]] = {key: [] for key in (
        "workers", "expressions", "timezones", "queues", "priorities", "max_attempts")}
    for registration in registrations:
        cls = registration.cls
        if schedule_of(cls) is None:
            continue
        params["workers"].append(registration.name)
        params["expressions"].append(cls.cron)
        params["timezones"].append(cls.cron_timezone)
        params["queues"].append(cls.queue)
        params["priorities"].append(cls.priority)
        params["max_attempts"].append(retry_count_of(cls, retry_count) + 1)
    return params


class Periodic:
    """The runner's periodic-jobs loop; ``step`` is one round, returning the pause
    before the next."""

    def __init__(
        self,
        connections: ConnectionPool,
        queries: Queries,
        registrations: Iterable[Registration],
        *,
        retry_count: int,
        leading: Callable[[], bool],
        health: DatabaseHealth,
        hooks: Hooks | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.connections = connections
        self.queries = queries
        self.registrations = list(registrations)
        self.retry_count = retry_count
        self.leading = leading
        self.health = health
        self.hooks = hooks
        self.clock = clock
        #: Ticks this runner enqueued, by worker.
        self.enqueued: dict[str, int] = {}
        self._synced = False
        self._entries: list[_Entry] | None = None  # None: read them at the next step
        self._reread_at: dt.datetime | None = None
        self._bad: set[tuple[str, str]] = set()  # expressions already reported

    def step(self) -> float:
        """Sync once; then, while leading, enqueue due ticks; return the pause."""
        if not self._synced:
            self._sync()
        if not self.leading():
            self._entries = None  # read afresh when leading again
            return RECHECK_SECONDS
        now = self.clock()
        if self._entries is None or (self._reread_at is not None and now >= self._reread_at):
            self._read(now)
        assert self._entries is not None
        ticked = False
        for entry in self._entries:
            tick = due_tick(entry.schedule, entry.last_tick, now)
            if tick is not None:
                self._tick(entry.worker, tick)
                ticked = True
        if ticked:
            self._read(now)  # the last ticks as the database has them now
            assert self._entries is not None
        pause = RECHECK_SECONDS
        for entry in self._entries:
            later = next_run(entry.schedule, entry.last_tick, now)
            pause = min(pause, (later - now).total_seconds())
        return max(pause, 0.01)

    def _sync(self) -> None:
        params = sync_params(self.registrations, self.retry_count)
        without = [r.name for r in self.registrations if r.name not in params["workers"]]
        with self.connections.borrow() as conn, conn.cursor() as cur:
            if params["workers"]:
                self.queries.execute(cur, "cron_sync", params)
            if without:
                self.queries.execute(cur, "cron_forget", {"workers": without})
        self.health.ok()
        self._synced = True
        if params["workers"]:
            log.info("periodic jobs: %s", ", ".join(
                f"{name} ({expression}, {zone})" for name, expression, zone in zip(
                    params["workers"], params["expressions"], params["timezones"],
                    strict=True)))

    def _read(self, now: dt.datetime) -> None:
        """Read the schedules whose worker a live runner has."""
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, "cron_schedules", {"alive": ALIVE_SECONDS})
            rows = cur.fetchall()
        self.health.ok()
        entries = []
        for row in rows:
            if not row["served"]:
                continue
            try:
                schedule = Schedule.parse(row["expression"], row["timezone"])
            except CronError as exc:
                if (row["worker"], row["expression"]) not in self._bad:
                    self._bad.add((row["worker"], row["expression"]))
                    log.error("periodic job %s: skipped: %s", row["worker"], exc)
                continue
            entries.append(_Entry(row["worker"], schedule, row["last_tick"]))
        self._entries = entries
        self._reread_at = now + dt.timedelta(seconds=REREAD_SECONDS)

    def _tick(self, worker: str, tick: dt.datetime) -> None:
        """Enqueue ``tick`` of ``worker``'s schedule unless some runner already did."""
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, "cron_tick", {"worker": worker, "tick": tick})
            row = cur.fetchone()
        if row is None:
            log.debug("periodic job %s: tick %s was enqueued already", worker, tick)
            return
        self.enqueued[worker] = self.enqueued.get(worker, 0) + 1
        log.info("periodic job %s: enqueued job %s for tick %s", worker, row["id"],
                 tick.isoformat())
        if self.hooks is not None:
            self.hooks.call("backy_job_enqueued", jobs=[Job.from_row(row)])
