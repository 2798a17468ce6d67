"""The fetcher: claims due jobs for every worker with free slots, in one statement.

It sleeps until woken (a notification, a freed slot, a retry falling due, a stop) or
until ``poll_interval`` passes, then claims at most each worker pool's free slots and
hands the jobs to the pools. Workers with a fleet-wide limit (``global_concurrency``,
``rate_limit``) are claimed by a second statement that takes turns with the other
runners under an advisory lock, and the fetcher wakes again when the limit may allow
more: when the rate's window frees a start, or every poll interval while capped.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent
from gevent.event import Event

from backy_gevent.config import Settings
from backy_gevent.db.arrays import with_array_literals
from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool
from backy_gevent.db.queries import Queries, Statement
from backy_gevent.job import Job
from backy_gevent.runner.executor import lease_seconds
from backy_gevent.runner.pacing import CLAIM_GAP, JITTER, STREAM_CLAIM_GAP, Spacing
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import DatabaseHealth
from backy_gevent.worker import Registration

log = logging.getLogger("backy_gevent.runner")

#: How many poll intervals an idle fetcher sleeps while notifications arrive: for jobs
#: that became due without one (rows written by hand, a retry whose runner died).
IDLE_POLLS = 10
#: How many claims in a row must bring more than one job (or fill the room they had),
#: each woken before its claim gap was up, for the fetcher to call it a stream: it then
#: claims on its own, every stream gap, and the notifications, which would say nothing
#: new, are not listened to (``on_stream``; see ``runner.listener``). It stops following
#: once as many claims in a row bring at most one job each while they had room for more:
#: a trickle, which notifications serve sooner (a job each, claimed at once, where a
#: stream claim waits out its gap: 12 ms at the median instead of 2.5). Before
#: 2026-12-06 a claim of one job counted as a stream's, both ways: a trickle of 50 jobs
#: a second after a burst, or of 80 with none, was followed for as long as it lasted.
STREAM_CLAIMS = 3
#: While following a stream, each claim also tells enqueues of the workers it claimed
#: for not to notify for this long (``quiet_enqueues`` in queries.sql; renewed by every
#: claim, so it only lapses when the claims stop: the runner died or is stuck), or for
#: four stream claim gaps when that is longer (many runners share the claims).
QUIET_FOR = 0.5
#: How many plain claims (sets of pools and limits) the fetcher keeps made; past it, it
#: forgets them all and starts again (a runner of many workers may meet many sets).
KNOWN_CLAIMS = 256


class Wakeup:
    """What wakes the fetcher before its poll interval is up, and for which workers.

    A wake-up names the worker it is for (its notification said so, or a slot of its
    pool came free) or none (anything may have become due: a poll, a rescue, a
    reconnection). The claim that follows claims for the workers named since the last
    one, or for all when any wake-up named none: a claim for one worker costs much less
    than one for several (the ``claim_one`` statement).
    """

    def __init__(self) -> None:
        self._event = Event()
        #: Set while no wake-up is pending (the fetcher took the last one).
        self._taken = Event()
        self._taken.set()
        #: Workers named since the last claim; None: every worker.
        self._workers: builtins.set[str] | None = set()

    def set(self, worker: str | None = None) -> None:
        """Wake the fetcher now, for ``worker``'s jobs (None: for any worker's)."""
        if worker is None:
            self._workers = None
        elif self._workers is not None:
            self._workers.add(worker)
        self._taken.clear()
        self._event.set()

    def set_later(self, delay: float, worker: str | None = None) -> None:
        """Wake the fetcher in ``delay`` seconds (a retry falls due then)."""
        gevent.get_hub().loop.timer(max(delay, 0.0)).start(self.set, worker)

    def slot_freed(self, worker_pool: WorkerPool) -> None:
        """A slot came free in ``worker_pool``: claim again if more may be waiting."""
        if worker_pool.maybe_more:
            self.set(worker_pool.name)

    def wait_taken(self, timeout: float) -> None:
        """Sleep until the fetcher takes the pending wake-up (or ``timeout``): news that
        arrives before then changes nothing, as the claim that starts then sees it.

        It yields first: a fetcher that waits is woken in that same turn of the hub, and
        usually takes the wake-up then, so this greenlet sets up no timer on the
        latency's path (0.02 ms of an idle runner's enqueue-to-perform)."""
        if not self._taken.is_set():
            gevent.sleep(0)
            self._taken.wait(timeout=timeout)

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` (which is a wake-up for every worker)."""
        if not self._event.wait(timeout=timeout):
            self._workers = None

    def clear(self) -> builtins.set[str] | None:
        """Forget the reasons to wake so far (a claim starting now covers them); the
        workers they named (None: every worker)."""
        workers, self._workers = self._workers, set()
        self._event.clear()
        self._taken.set()
        return workers


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
        on_stream: Callable[[bool], None] = lambda streaming: None,
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
        self.spacing = Spacing(CLAIM_GAP, JITTER)
        self.on_stream = on_stream
        #: True while following a stream: claiming every gap, not woken by notifications.
        self.streaming = False
        #: Claims in a row that brought a stream's jobs and had to wait their turn; while
        #: streaming, less those in a row that brought a trickle (``STREAM_CLAIMS``).
        self._streak = 0
        #: Live runners sharing the claims (this one included), as the beat says.
        self._runners = 1
        #: The plain claims made so far, by the pools and limits they claim for.
        self._plain_claims: dict[tuple[tuple[WorkerPool, int], ...], PlainClaim] = {}

    def share_claims(self, runners: int) -> None:
        """``runners`` live runners (this one included) claim the same jobs: space this
        one's claims so that together they claim about once per ``CLAIM_GAP`` (once per
        ``STREAM_CLAIM_GAP`` while following a stream). A follower claims alone, and is
        spaced for every live runner all the same: with its gap unscaled, two runners'
        stream read 0.037 lower (standard error 0.013, 16 rounds): each claim's commit
        costs the clients more than the jobs it brings."""
        self._runners = max(1, runners)
        self._space()

    def _space(self) -> None:
        gap = STREAM_CLAIM_GAP if self.streaming else CLAIM_GAP
        self.spacing.gap = gap * self._runners

    def step(self) -> None:
        """Wait for a reason to claim, then claim for every pool with free slots.

        While notifications arrive (LISTEN works), they say when there is work, delayed
        jobs included, and the poll is only a safety net, every ``IDLE_POLLS`` poll
        intervals; without them, it polls every ``poll_interval``. Under a stream of
        wake-ups, claims are spaced (``runner.pacing``): the wake-ups meanwhile share
        the claim; and once that has gone on for ``STREAM_CLAIMS`` claims, the fetcher
        follows the stream on its own.
        """
        poll = self.settings.poll_interval
        self.wakeup.wait(timeout=poll * IDLE_POLLS if self.notified() else poll)
        pressed = self.spacing.wait_turn()
        named = self.wakeup.clear()
        if self.stopping.is_set():
            return
        wanted = {}  # pool -> how many jobs to claim for it
        for name, worker_pool in self.worker_pools.items():
            if named is not None and name not in named:
                continue
            free = worker_pool.free_slots()
            if free:
                wanted[worker_pool] = free
            else:
                worker_pool.maybe_more = True  # unknown until a slot frees
        if not wanted:
            return
        try:
            claimed = self.claim(wanted)
        except CONNECTION_ERRORS:
            self.wakeup.set()  # try again, for every worker, as soon as the pause is over
            raise
        self.health.ok()
        self._follow_stream(claimed, sum(wanted.values()), pressed)
        if self.streaming:
            self.wakeup.set()  # following a stream: no notification names its workers
            return
        for worker_pool in wanted:
            if worker_pool.maybe_more and not worker_pool.capped:
                self.wakeup.set(worker_pool.name)

    def _follow_stream(self, claimed: int, room: int, pressed: bool) -> None:
        """Count the claims of a stream (``claimed`` jobs where ``room`` would fit); start
        or stop following it."""
        flowing = claimed > 1 or claimed >= room
        if self.streaming:
            self._streak = STREAM_CLAIMS if flowing else self._streak - 1
            if self._streak <= 0:
                self._set_streaming(False)
        elif flowing and pressed:
            self._streak += 1
            if self._streak >= STREAM_CLAIMS:
                if self.start_following():
                    self._set_streaming(True)
                else:
                    self._streak = 0  # another runner follows it: one is enough
        else:
            self._streak = 0

    def _set_streaming(self, streaming: bool) -> None:
        """Start or stop following a stream: its claim gap, and the listener told.
        Before it stops, enqueues are told to notify again (``end_quiet``), and only
        then does the listener listen again and wake the fetcher: that claim sees every
        job enqueued quietly before."""
        if not streaming:
            self.end_quiet()
        self.streaming = streaming
        self._space()
        log.debug("%s following a stream of jobs", "started" if streaming else "stopped")
        self.on_stream(streaming)

    def claim(self, wanted: dict[WorkerPool, int]) -> int:
        """Claim up to ``wanted[pool]`` jobs for each pool; hand them out; how many."""
        limited = {pool: n for pool, n in wanted.items() if pool.limited}
        plain = wanted
        if limited:
            plain = {pool: n for pool, n in wanted.items() if pool not in limited}
        # Each list comes in start order, and the two hold different workers' jobs
        # (each pool runs its own in the order it is given them).
        jobs: list[Job] = []
        if plain:
            jobs += self._claim_plain(plain)
        if limited:
            jobs += self._claim_limited(limited)
        for job in jobs:
            self.worker_pools[job.worker].submit(job)
        if jobs:
            # Let them start now, and do this step's bookkeeping after: the hand-off to a
            # pool's greenlet took 0.07 ms instead of 0.095 in an idle runner.
            gevent.sleep(0)
        return len(jobs)

    def start_following(self) -> bool:
        """Mark this runner as following a stream, with its enqueues quiet; or, when
        another runner follows one of its workers already (in queues both serve), leave
        the stream to it: False. The runners decide one at a time. Two runners that
        both followed one stream held it 0.03 below one alone (the clients' rate, 16
        rounds); one follows, and the other wakes again when notifications resume."""
        params = {
            "runner_id": self.runner_id, "queues": list(self.settings.queues),
            "quiet_workers": list(self.worker_pools),
            "quiet_for": self._quiet_for(),
            # Not "backy/<table>/<name>": that is a limited worker's lock (_claim_limited),
            # and a worker may be named "follow".
            "follow_key": f"backy-follow/{self.queries.table_name}",
        }
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute_together(cur, ["follow_lock", "start_following"], params)
            return bool(cur.fetchall())

    def _quiet_for(self) -> float:
        """How long a following runner's quiet mark lasts: ``QUIET_FOR``, or four of
        its stream claim gaps when that is longer."""
        return max(QUIET_FOR, 4 * STREAM_CLAIM_GAP * self._runners)

    def end_quiet(self) -> None:
        """Enqueues of this runner's workers notify again, and the runners of the table
        are woken (for what was enqueued quietly since their last claim): this one stops
        following a stream, or stops."""
        params = {"runner_id": self.runner_id, "table": self.queries.quoted_table}
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, "end_quiet", params)

    def catch_up(self, running: Sequence[Job], *, next_due: bool) -> list[int]:
        """What notifications would have said while they were not heard: which of the
        ``running`` attempts are no longer this runner's (their ids; they were cancelled
        or rescued), and, with ``next_due``, when the next job not due yet falls due
        (the fetcher is woken then)."""
        if not running and not next_due:
            return []  # nothing to ask
        params = {
            "ids": [job.id for job in running],
            "attempts": [job.attempt for job in running],
            "runner_id": self.runner_id,
            "workers": list(self.worker_pools) if next_due else [],
            "queues": list(self.settings.queues),
        }
        with self.connections.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, "catch_up", params)
            row = cur.fetchone()
        if row["next_in"] is not None:
            self.wakeup.set_later(row["next_in"])
        return list(row["lost"])

    def _claim_plain(self, wanted: dict[WorkerPool, int]) -> list[Job]:
        key = tuple(wanted.items())
        claim = self._plain_claims.get(key)
        if claim is None:
            if len(self._plain_claims) >= KNOWN_CLAIMS:
                self._plain_claims.clear()
            claim = self._plain_claims[key] = PlainClaim.of(
                self.runner_id, {pool.registration: limit for pool, limit in wanted.items()},
                self.settings.queues)
        jobs = run_claim(self.connections, self.queries, claim,
                         quiet_for=self._quiet_for() if self.streaming else 0.0)
        claimed = _per_worker(jobs)
        for worker_pool, limit in wanted.items():
            # A full batch suggests more are due; a short one that the table is drained.
            worker_pool.maybe_more = claimed.get(worker_pool.name, 0) >= limit
        return jobs

    def _claim_limited(self, wanted: dict[WorkerPool, int]) -> list[Job]:
        """Claim for workers with fleet-wide limits, taking turns with other runners."""
        classes = [pool.registration.cls for pool in wanted]
        params = _claim_params(
            self.runner_id, {pool.registration: limit for pool, limit in wanted.items()},
            self.settings.queues,
        ) | {
            "lock_keys": sorted(f"backy/{self.queries.table_name}/{pool.name}"
                                for pool in wanted),
            "caps": [cls.global_concurrency for cls in classes],
            "rate_counts": [cls.rate_limit and cls.rate_limit[0] for cls in classes],
            "rate_seconds": [cls.rate_limit and float(cls.rate_limit[1]) for cls in classes],
        }
        columns, tuples, sent = _claimed_rows(self.connections, self.queries,
                                              ["lock_limited", "claim_limited"], params)
        rows = [dict(zip(columns, row, strict=True)) for row in tuples]
        jobs = sorted(_leased([Job.from_row(row) for row in rows if row["id"] is not None],
                              _lease_of(params), sent), key=_start_order)
        claimed = _per_worker(jobs)
        info = {row["limited_worker"]: row for row in rows}
        for worker_pool, limit in wanted.items():
            row, cls = info[worker_pool.name], worker_pool.registration.cls
            taken = claimed.get(worker_pool.name, 0)
            worker_pool.capped = taken < limit and taken >= row["room"]
            if not worker_pool.capped:
                worker_pool.maybe_more = taken >= limit
                continue
            # Wake when the limit may allow more: the rate's window frees a start; a slot
            # of the cap frees when an attempt ends, here (a freed slot wakes the
            # fetcher: maybe_more) or on another runner (no notification: poll).
            worker_pool.maybe_more = cls.global_concurrency is not None
            waits = [self.settings.poll_interval] if cls.global_concurrency else []
            if row["next_start_in"] is not None:
                waits.append(row["next_start_in"])
            self.wakeup.set_later(max(min(waits), 0.001), worker_pool.name)
        return jobs


def claim_jobs(
    connections: ConnectionPool,
    queries: Queries,
    runner_id: str,
    wanted: Mapping[Registration, int],
    *,
    queues: Sequence[str],
    quiet_for: float = 0.0,
) -> list[Job]:
    """Claim up to ``wanted[registration]`` due jobs of each worker (of ``queues``; all
    when empty) for ``runner_id``, in one statement, fleet-wide limits aside; return
    them in the order to start them (priority, ``run_at``, id). The fetcher claims
    workers without limits this way (``run_claim``), and ``backy_gevent.testing.drain``
    every worker. With ``quiet_for``, the same transaction tells enqueues of these
    workers not to notify for that many seconds (the runner follows a stream).
    """
    claim = PlainClaim.of(runner_id, wanted, queues)
    return run_claim(connections, queries, claim, quiet_for=quiet_for)


@dataclasses.dataclass(frozen=True)
class PlainClaim:
    """One claim of workers without fleet-wide limits: its statement, its parameters
    (the lists already array literals) and each worker's lease. It is the same for
    every claim of the same workers and limits, and the fetcher makes each one once
    (``Fetcher._plain_claims``): made again for every claim, it cost an idle runner
    0.03 ms of its enqueue-to-perform latency."""

    statement: Statement
    params: Mapping[str, Any]
    lease_of: Mapping[str, float]

    @classmethod
    def of(cls, runner_id: str, wanted: Mapping[Registration, int],
           queues: Sequence[str]) -> PlainClaim:
        params = _claim_params(runner_id, wanted, queues)
        return cls("claim_one" if len(wanted) == 1 else "claim", with_array_literals(params),
                   _lease_of(params))


def run_claim(connections: ConnectionPool, queries: Queries, claim: PlainClaim, *,
              quiet_for: float = 0.0) -> list[Job]:
    """Run ``claim`` (see ``claim_jobs``); the jobs claimed, in the order to start them."""
    names: list[Statement] = [claim.statement]
    params = claim.params
    if quiet_for > 0:
        names.insert(0, "quiet_enqueues")
        params = {**params, "quiet_for": quiet_for, "quiet_workers": params["workers"]}
    columns, rows, sent = _claimed_rows(connections, queries, names, params)
    return sorted(_leased(Job.from_tuples(columns, rows), claim.lease_of, sent),
                  key=_start_order)


def _start_order(job: Job) -> tuple[Any, ...]:
    return (job.priority, job.run_at, job.id)


def _claim_params(
    runner_id: str, wanted: Mapping[Registration, int], queues: Sequence[str]
) -> dict[str, Any]:
    return {
        "workers": [registration.name for registration in wanted],
        "limits": list(wanted.values()),
        "leases": [lease_seconds(registration.cls) for registration in wanted],
        "queues": list(queues),
        "runner_id": runner_id,
    }


def _lease_of(params: Mapping[str, Any]) -> dict[str, float]:
    """Each claimed worker's lease in seconds, from a claim's parameters."""
    return dict(zip(params["workers"], params["leases"], strict=True))


def _per_worker(jobs: list[Job]) -> dict[str, int]:
    """How many of ``jobs`` each worker has. A plain dict, not a ``collections.Counter``,
    whose first use after a pause cost 0.025 ms of an idle runner's enqueue-to-perform
    latency."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.worker] = counts.get(job.worker, 0) + 1
    return counts


def _leased(jobs: list[Job], lease_of: Mapping[str, float], sent: float) -> list[Job]:
    """Claimed jobs, each told when its lease ends (``lease_of`` its worker's lease, in
    seconds) by this process's clock from before the claim was sent (``sent``): a reply
    held up on the way must not start an attempt another runner may have."""
    for job in jobs:
        job._lease_ends = sent + lease_of[job.worker]
    return jobs


def _claimed_rows(
    connections: ConnectionPool, queries: Queries, names: list[Statement],
    params: Mapping[str, Any],
) -> tuple[list[str], list[tuple[Any, ...]], float]:
    """The columns and rows (plain tuples: no dict is built per job) that statements
    ``names`` return (run together), and when they were sent."""
    sent = time.monotonic()
    with connections.borrow() as conn:
        cur = conn.tuple_cursor()
        queries.execute_together(cur, names, params)
        columns = [column.name for column in cur.description]
        rows = cur.fetchall()
    return columns, rows, sent
