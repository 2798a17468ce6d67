"""Maintenance: the runner's heartbeat, and, on the one runner that leads, the chores.

One runner at a time leads maintenance: the one whose lease on the leader row is
current (``LEADER_LEASE_SECONDS``). Every ``poll_interval`` (more often if that is
longer than a third of the lease) the leader, in one statement (``lead``), renews that
lease, beats, and rescues running jobs whose lease
expired (their runner died or froze): they become available again, quarantined (see
the statement). Every ``FORGET_EVERY`` seconds it also drops the rows of runners
silent for an hour, and when the jobs table holds more than ``vacuum_dead_rows`` dead
row versions it VACUUMs it (beside its rounds). Every other runner only beats, every
``BEAT_SECONDS``, and in the same statement (``beat``) takes the leadership when the
leader's lease ran out: a leader that dies or loses the database is replaced within its
lease plus a beat. A leader acts only while its lease holds by its own clock.

So an idle fleet costs the database one statement a second from its leader and one
every five seconds from each other runner.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

import gevent
import psycopg2

from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool, connect
from backy_gevent.db.queries import Queries
from backy_gevent.runner.supervision import DatabaseHealth

log = logging.getLogger("backy_gevent.runner")

BEAT_SECONDS = 5.0
LEADER_LEASE_SECONDS = 4.0
FORGET_RUNNER_SECONDS = 3600.0
#: A runner that has not beaten for this long no longer counts as a peer that shares
#: claims (three missed beats).
PEER_SILENCE_SECONDS = 3 * BEAT_SECONDS
FORGET_EVERY = 60.0
PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000
PRUNE_BUDGET = 0.5


def retention_of(
    prune_completed_after: float | None, prune_failed_after: float | None
) -> dict[str, float]:
    """The retention options as seconds per finished state; a state kept for good is
    absent. Cancelled jobs go with failed ones: both are jobs that did not succeed, kept
    for someone to look at."""
    retention = {}
    if prune_completed_after is not None:
        retention["completed"] = prune_completed_after
    if prune_failed_after is not None:
        retention["failed"] = retention["cancelled"] = prune_failed_after
    return retention


class Maintenance:
    """Beats, leads when it may, and does the leader's chores; ``step`` is one round,
    returning the pause before the next."""

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
        retention: dict[str, float] | None = None,
        vacuum_dead_rows: int = 0,
        on_peers: Callable[[int], None] = lambda peers: None,
    ) -> None:
        self.connections = connections
        self.queries = queries
        self.runner_id = runner_id
        self.workers = workers
        self.queues = queues
        self.poll_interval = poll_interval
        self.health = health
        #: Seconds after which finished rows of each state go (see retention_of).
        self.retention = retention or {}
        #: Dead row versions in the jobs table past which it VACUUMs it (0: never; see
        #: _vacuum).
        self.vacuum_dead_rows = vacuum_dead_rows
        #: Told, at every beat, how many live runners (this one included) serve any of
        #: this runner's workers in any of its queues (the fetcher spaces claims by it).
        self.on_peers = on_peers
        #: Finished rows this runner deleted while it led, by state.
        self.pruned: collections.Counter[str] = collections.Counter()
        #: Jobs this runner's rescuer took back from dead runners, by (worker, queue, state).
        self.rescued: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._leads_until = 0.0  # time.monotonic(): the lease by this runner's own clock
        self._said_leading = False
        self._next_forget = 0.0
        self._next_prune = 0.0
        #: VACUUMs of the jobs table this runner ran while it led.
        self.vacuums = 0
        self._vacuuming: gevent.Greenlet | None = None
        self._may_vacuum = True  # False once the server refused (not the table's owner)
        self._next_vacuum = 0.0  # time.monotonic(): after a failed one, not before

    def leading(self) -> bool:
        """Whether this runner leads maintenance now, by its own clock."""
        return time.monotonic() < self._leads_until

    def step(self) -> float:
        """The leader's round when it leads (every ``poll_interval``), a beat when it does
        not (every ``BEAT_SECONDS``); return the seconds until the next."""
        if self.leading():
            self._lead()
            if time.monotonic() >= self._next_forget:
                with self.connections.borrow() as conn, conn.cursor() as cur:
                    self.queries.execute(cur, "forget_runners",
                                         {"forget_after": FORGET_RUNNER_SECONDS})
                self._next_forget = time.monotonic() + FORGET_EVERY
            if self.retention and time.monotonic() >= self._next_prune:
                self._prune()
        else:
            self._beat()
        self.health.ok()
        if self.leading():
            return min(self.poll_interval, LEADER_LEASE_SECONDS / 3)
        return BEAT_SECONDS

    def _beat(self) -> None:
        sent = time.monotonic()
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, "beat", {
                "id": self.runner_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "workers": self.workers,
                "queues": self.queues,
                "lease": LEADER_LEASE_SECONDS,
                "alive": PEER_SILENCE_SECONDS,
            })
            row = cur.fetchone()
        self._now_leading(row["leader"] == self.runner_id, sent)
        self.on_peers(row["peers"])

    def _lead(self) -> None:
        sent = time.monotonic()
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, "lead", {
                "id": self.runner_id, "lease": LEADER_LEASE_SECONDS,
                "table": self.queries.quoted_table, "workers": self.workers,
                "queues": self.queues, "alive": PEER_SILENCE_SECONDS,
            })
            row = cur.fetchone()
        self._now_leading(row["leader"] == self.runner_id, sent)
        self.on_peers(row["peers"])
        if (0 < self.vacuum_dead_rows < row["dead_rows"] and self._may_vacuum
                and self.leading() and time.monotonic() >= self._next_vacuum
                and (self._vacuuming is None or self._vacuuming.dead)):
            self._vacuuming = gevent.spawn(self._vacuum)
        for job in row["rescued"]:
            # Quarantined, uncounted: it may be a bystander of the job that killed the
            # runner (see the lead statement).
            state = job["state"] if job["counted"] else "quarantined"
            self.rescued[job["worker"], job["queue"], state] += 1
            log.warning(
                "job %s (%s) lost its runner; now %s%s", job["id"], job["worker"],
                job["state"], "" if job["counted"] else
                ", quarantined (the lost attempt is not counted; its next attempts run"
                " in a process of their own)",
            )

    def _vacuum(self) -> None:
        """VACUUM the jobs table, in a greenlet of its own: it takes seconds on a big
        table, and the rounds must go on renewing the lease meanwhile.

        Every claim leaves its row's entry in the fetch index, dead, at the front, where
        the next claim starts; until a VACUUM removes them each claim walks past all of
        them. Autovacuum looks once a minute at best and waits for a fifth of the table
        to be dead: mid-drain of a million jobs each claim spent 12-16 ms reaching its
        first row (0.3-6.5 ms with these VACUUMs). A server error is logged and the
        next try waits ``FORGET_EVERY`` seconds (autovacuum still comes); a refusal (only
        the table's owner may VACUUM it; the server warns and skips) is said once and
        ends the tries. On a connection of its own, not the pool's: no pool slot held
        for seconds, and none of the pool's bounds (``database_timeout`` also sets a
        statement timeout, which a VACUUM of a big table may outlast).
        """
        try:
            conn = connect(self.connections.dsn,
                           application_name=f"{self.connections.application_name} vacuum")
            with contextlib.closing(conn), conn.cursor() as cur:
                cur.execute(self.queries.composed("vacuum"))
                refused = [n.strip() for n in conn.notices
                           if "owner" in n or "permission" in n]
        except psycopg2.Error as exc:
            log.warning("VACUUM of the jobs table failed: %s", str(exc).strip())
            self._next_vacuum = time.monotonic() + FORGET_EVERY
            return
        if refused:
            self._may_vacuum = False
            log.warning("the runner may not VACUUM the jobs table (%s); autovacuum alone"
                        " will remove its dead rows", refused[0])
            return
        self.vacuums += 1

    def _prune(self) -> None:
        """Delete finished rows past their retention, oldest first, within the budget."""
        params = {"states": list(self.retention), "ages": list(self.retention.values()),
                  "lim": PRUNE_BATCH}
        deadline = time.monotonic() + PRUNE_BUDGET
        deleted: collections.Counter[str] = collections.Counter()
        while True:
            with self.connections.borrow() as conn, conn.cursor() as cur:
                self.queries.execute(cur, "prune_batch", params)
                counts = {row["state"]: row["n"] for row in cur.fetchall()}
            deleted.update(counts)
            if not any(n >= PRUNE_BATCH for n in counts.values()):
                self._next_prune = time.monotonic() + PRUNE_EVERY
                break
            if time.monotonic() >= deadline or not self.leading():
                break  # more are due: the next round goes on
        self.pruned.update(deleted)
        if deleted:
            log.info("retention: deleted %s", ", ".join(
                f"{n} {state}" for state, n in sorted(deleted.items())))

    def _now_leading(self, leads: bool, sent: float) -> None:
        """What the last statement said; the lease is judged from before it was sent."""
        self._leads_until = sent + LEADER_LEASE_SECONDS if leads else 0.0
        if leads != self._said_leading:
            self._said_leading = leads
            log.info("runner %s %s maintenance", self.runner_id,
                     "leads" if leads else "no longer leads")

    def unregister(self) -> None:
        """Remove the runner's row and give up the leadership (a clean stop); a database
        error is only logged."""
        self._leads_until = 0.0
        if self._vacuuming is not None:
            self._vacuuming.kill(block=False)
        try:
            with self.connections.borrow() as conn, conn.cursor() as cur:
                self.queries.execute(cur, "unregister_runner", {"id": self.runner_id})
        except CONNECTION_ERRORS as exc:
            log.warning("could not remove the runner's row: %s", exc)
