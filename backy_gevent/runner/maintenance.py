"""Maintenance: the runner's heartbeat, and the rescue of jobs whose lease ran out.

Every ``poll_interval`` the runner rescues running jobs whose lease expired (their
runner died or froze): they become available again, or failed when the lost attempt
was their last. Every ``HEARTBEAT_SECONDS`` it also records that it is alive in the
runners table, where ``backy-gevent jobs`` shows it.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from typing import Any

from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.runner.supervision import DatabaseHealth

log = logging.getLogger("backy_gevent.runner")

HEARTBEAT_SECONDS = 5.0
FORGET_RUNNER_SECONDS = 3600.0


class Maintenance:
    """Beats and rescues; ``step`` is one round, returning the pause before the next."""

    def __init__(
        self,
        connections: ConnectionPool,
        queries: Queries,
        runner_id: str,
        *,
        workers: list[str],
        queues: list[str],
        poll_interval: float,
        health: DatabaseHealth,
    ) -> None:
        self.connections = connections
        self.queries = queries
        self.runner_id = runner_id
        self.workers = workers
        self.queues = queues
        self.poll_interval = poll_interval
        self.health = health
        #: Jobs this runner's rescuer took back from dead runners, by (worker, queue, state).
        self.rescued: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._next_beat = 0.0

    def step(self) -> float:
        """Beat if it is time, rescue expired leases; return the seconds until the next."""
        with self.connections.borrow() as conn, conn.cursor() as cur:
            if time.monotonic() >= self._next_beat:
                self._beat(cur)
                self._next_beat = time.monotonic() + HEARTBEAT_SECONDS
            self.queries.execute(cur, "rescue", {})
            rescued = cur.fetchall()
        for row in rescued:
            # Quarantined, uncounted: it may be a bystander of the job that killed the
            # runner (see the rescue statement).
            state = row["state"] if row["counted"] else "quarantined"
            self.rescued[row["worker"], row["queue"], state] += 1
            log.warning(
                "job %s (%s) lost its runner; now %s%s", row["id"], row["worker"],
                row["state"], "" if row["counted"] else
                ", quarantined (the lost attempt is not counted; its next attempts run"
                " in a process of their own)",
            )
        self.health.ok()
        return self.poll_interval

    def _beat(self, cur: Any) -> None:
        self.queries.execute(
            cur,
            "heartbeat",
            {
                "id": self.runner_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "workers": self.workers,
                "queues": self.queues,
                "forget_after": FORGET_RUNNER_SECONDS,
            },
        )

    def unregister(self) -> None:
        """Remove the runner's row (a clean stop); a database error is only logged."""
        try:
            with self.connections.borrow() as conn, conn.cursor() as cur:
                self.queries.execute(cur, "unregister_runner", {"id": self.runner_id})
        except CONNECTION_ERRORS as exc:
            log.warning("could not remove the runner's row: %s", exc)
