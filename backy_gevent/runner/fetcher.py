"""The fetcher: claims due jobs for every worker with free slots, in one statement.

It sleeps until woken (a notification, a freed slot, a retry falling due, a stop) or
until ``poll_interval`` passes, then claims at most each worker pool's free slots and
hands the jobs to the pools.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent
from gevent.event import Event
from psycopg2.extensions import cursor as plain_cursor

from backy_gevent.config import Settings
from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.job import Job
from backy_gevent.runner.executor import lease_seconds
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import DatabaseHealth
from backy_gevent.worker import Registration

#: How many poll intervals an idle fetcher sleeps while notifications arrive: for jobs
#: that became due without one (rows written by hand, a retry whose runner died).
IDLE_POLLS = 10


class Wakeup:
    """What wakes the fetcher before its poll interval is up."""

    def __init__(self) -> None:
        self._event = Event()

    def set(self) -> None:
        """Wake the fetcher now."""
        self._event.set()

    def set_later(self, delay: float) -> None:
        """Wake the fetcher in ``delay`` seconds (a retry falls due then)."""
        gevent.get_hub().loop.timer(max(delay, 0.0)).start(self._event.set)

    def slot_freed(self, worker_pool: WorkerPool) -> None:
        """A slot came free in ``worker_pool``: claim again if more may be waiting."""
        if worker_pool.maybe_more:
            self._event.set()

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout``; the next wake-up starts afresh."""
        self._event.wait(timeout=timeout)
        self._event.clear()


class Fetcher:
    """Claims jobs for the runner's worker pools; ``step`` is one wake-up and claim."""

    def __init__(
        self,
        settings: Settings,
        connections: ConnectionPool,
        queries: Queries,
        runner_id: str,
        worker_pools: dict[str, WorkerPool],
        *,
        wakeup: Wakeup,
        notified: Callable[[], bool],
        stopping: Event,
        health: DatabaseHealth,
    ) -> None:
        self.settings = settings
        self.connections = connections
        self.queries = queries
        self.runner_id = runner_id
        self.worker_pools = worker_pools
        self.wakeup = wakeup
        self.notified = notified
        self.stopping = stopping
        self.health = health

    def step(self) -> None:
        """Wait for a reason to claim, then claim for every pool with free slots.

        While notifications arrive (LISTEN works), they say when there is work, delayed
        jobs included, and the poll is only a safety net, every ``IDLE_POLLS`` poll
        intervals; without them, it polls every ``poll_interval``.
        """
        poll = self.settings.poll_interval
        self.wakeup.wait(timeout=poll * IDLE_POLLS if self.notified() else poll)
        if self.stopping.is_set():
            return
        wanted = {}  # pool -> how many jobs to claim for it
        for worker_pool in self.worker_pools.values():
            free = worker_pool.free_slots()
            if free:
                wanted[worker_pool] = free
            else:
                worker_pool.maybe_more = True  # unknown until a slot frees
        if not wanted:
            return
        try:
            self.claim(wanted)
        except CONNECTION_ERRORS:
            self.wakeup.set()  # try again as soon as the pause is over
            raise
        self.health.ok()
        if any(worker_pool.maybe_more for worker_pool in wanted):
            self.wakeup.set()

    def claim(self, wanted: dict[WorkerPool, int]) -> None:
        """Claim up to ``wanted[pool]`` jobs for each pool in one statement; hand them out."""
        jobs = claim_jobs(
            self.connections, self.queries, self.runner_id,
            {pool.registration: limit for pool, limit in wanted.items()},
            queues=self.settings.queues,
        )
        claimed = collections.Counter(job.worker for job in jobs)
        for job in jobs:
            self.worker_pools[job.worker].submit(job)
        for worker_pool, limit in wanted.items():
            # A full batch suggests more are due; a short one that the table is drained.
            worker_pool.maybe_more = claimed[worker_pool.name] >= limit


def claim_jobs(
    connections: ConnectionPool,
    queries: Queries,
    runner_id: str,
    wanted: Mapping[Registration, int],
    *,
    queues: Sequence[str],
) -> list[Job]:
    """Claim up to ``wanted[registration]`` due jobs of each worker (of ``queues``; all
    when empty) for ``runner_id``, in one statement; return them in the order to start
    them (priority, ``run_at``, id), each knowing when its lease ends by this process's
    clock. The fetcher claims with it, and so does ``backy_gevent.testing.drain``.
    """
    leases = {registration.name: lease_seconds(registration.cls) for registration in wanted}
    params = {
        "workers": list(leases),
        "limits": list(wanted.values()),
        "leases": list(leases.values()),
        "queues": list(queues),
        "runner_id": runner_id,
    }
    # The lease is judged by this runner's own clock from before the claim was sent:
    # a reply held up on the way must not start an attempt another runner may have.
    sent = time.monotonic()
    jobs = sorted(
        (Job.from_row(row) for row in _claimed_rows(connections, queries, params)),
        key=lambda j: (j.priority, j.run_at, j.id),
    )
    for job in jobs:
        job._lease_ends = sent + leases[job.worker]
    return jobs


def _claimed_rows(
    connections: ConnectionPool, queries: Queries, params: dict[str, Any]
) -> list[dict[str, Any]]:
    # Plain tuples: building a dict per row by zip is cheaper than RealDictCursor's,
    # and this runs for every job.
    with connections.borrow() as conn, conn.cursor(cursor_factory=plain_cursor) as cur:
        queries.execute(cur, "claim", params)
        names = [column.name for column in cur.description]
        rows = cur.fetchall()
    return [dict(zip(names, row, strict=True)) for row in rows]
