"""The runner process: fetch, listen, run pools, rescue, beat, and shut down cleanly.

One gevent hub runs: a fetcher that claims jobs in one statement for every worker with
free slots; a LISTEN/NOTIFY listener on its own autocommit connection that wakes the
fetcher at once (``poll_interval`` polling stays as the fallback); a greenlet pool per
worker; a completer that writes outcomes in batches; and a maintenance loop that
rescues jobs whose lease ran out and records the runner's heartbeat. Every loop that
loses the database logs it and retries with backoff; no job is lost meanwhile.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.socket
from gevent.event import Event
from psycopg2 import sql
from psycopg2.extensions import cursor as plain_cursor

from backy_gevent.completer import Backoff, Completer
from backy_gevent.config import Settings
from backy_gevent.db import schema
from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool, connect
from backy_gevent.db.queries import Queries, channel_name
from backy_gevent.errors import SchemaMissing, WorkerError
from backy_gevent.executor import Executor, HandBack, JobRevoked, lease_seconds
from backy_gevent.hooks import Hooks
from backy_gevent.job import Job
from backy_gevent.pools import WorkerPool
from backy_gevent.worker import Registry

log = logging.getLogger("backy_gevent.runner")

HEARTBEAT_SECONDS = 5.0
FORGET_RUNNER_SECONDS = 3600.0


class Runner:
    """Runs the jobs of the registered workers until asked to stop.

    Build one per process from settings, a worker registry and hooks; ``run()`` blocks
    until ``request_stop()`` has been called (once: warm shutdown; twice: cold).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        hooks: Hooks,
        *,
        dsn: str,
        services: Iterable[Callable[[Runner], Any]] = (),
    ) -> None:
        if not len(registry):
            raise WorkerError(
                "no workers registered: install a package with backy.workers entry points,"
                " or name worker classes with --import module:Class"
            )
        self.settings = settings
        self.registry = registry
        self.hooks = hooks
        self.dsn = dsn
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queries = Queries(settings.table_name)
        self.pool = ConnectionPool(
            dsn, size=4, application_name=f"backy-gevent {self.id}",
            prepare=settings.prepare_statements,
        )
        self.completer = Completer(
            self.pool,
            self.queries,
            self.id,
            delete_finished_jobs=settings.delete_finished_jobs,
            on_retry_scheduled=self._wake_later,
        )
        self.executor = Executor(settings, hooks, self.completer)
        self.pools = {
            registration.name: WorkerPool(
                registration,
                self.executor,
                fetch_limit=settings.fetch_limit,
                on_slot_free=self._slot_freed,
            )
            for registration in registry
        }
        self.services = list(services)
        self.stopping = Event()
        self.stop_now = Event()
        self.stopped = Event()
        #: Jobs this runner's rescuer took back from dead runners, by (worker, queue, state).
        self.rescued: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.last_db_ok = 0.0  # time.monotonic() of the last statement that succeeded
        self.db_error: str | None = None
        self.table_oid: int | None = None  # learnt at start; names our NOTIFY channel
        self._wake = Event()
        self._greenlets: list[gevent.Greenlet] = []

    # -- state for operators, plugins and metrics -------------------------------------

    def running_counts(self) -> dict[str, int]:
        """Jobs in flight per worker in this process."""
        return {name: pool.in_flight for name, pool in self.pools.items()}

    def health(self) -> tuple[bool, str]:
        """Whether the runner is connected and working, and a line saying why."""
        if self.stopping.is_set():
            return False, "stopping"
        silent = time.monotonic() - self.last_db_ok
        limit = max(3 * self.settings.poll_interval, 2 * HEARTBEAT_SECONDS)
        if self.db_error and silent > limit:
            return False, f"database unreachable for {silent:.0f}s: {self.db_error}"
        return True, f"ok: runner {self.id}"

    # -- lifecycle ------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop claiming and drain (warm). Second: stop jobs now (cold).

        Safe to call from a signal handler: it only sets events.
        """
        if self.stopping.is_set():
            self.stop_now.set()
        self.stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Start every loop, run until asked to stop, then shut down cleanly."""
        self._wait_for_schema()
        spawn = self._spawn
        spawn(self.completer.run)
        fetcher = spawn(self._fetch_loop)
        spawn(self._listen_loop)
        spawn(self._maintenance_loop)
        for service in self.services:
            spawn(service, self)
        log.info(
            "runner %s started: workers %s, queues %s",
            self.id,
            ", ".join(self.pools),
            ", ".join(self.settings.queues) or "all",
        )
        self.hooks.call("backy_runner_started", runner=self)
        self.stopping.wait()
        log.info("runner %s stopping: no more claims; draining running jobs", self.id)
        self.hooks.call("backy_runner_stopping", runner=self)
        fetcher.join()  # it finishes a claim in flight and dispatches what it took
        self._drain()
        self.completer.stop()
        if not self.completer.wait_written(timeout=10.0):
            log.error(
                "%d outcomes could not be written; their jobs will be rescued when their"
                " leases run out",
                self.completer.pending,
            )
        self._unregister()
        gevent.killall([g for g in self._greenlets if g is not fetcher], timeout=5)
        for worker_pool in self.pools.values():
            worker_pool.stop()
        self.pool.close()
        self.stopped.set()
        log.info("runner %s stopped", self.id)

    def _spawn(self, function: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        greenlet = gevent.spawn(function, *args)
        self._greenlets.append(greenlet)
        return greenlet

    def _drain(self) -> None:
        for worker_pool in self.pools.values():
            for job in worker_pool.take_unstarted():
                self.completer.handed_back(job)
        deadline = time.monotonic() + self.settings.shutdown_timeout
        for worker_pool in self.pools.values():
            while not self.stop_now.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or worker_pool.join(timeout=min(left, 0.1)):
                    break
        performing = list(self.executor.performing)
        if performing:
            log.warning("handing back %d unfinished jobs", len(performing))
            gevent.killall(performing, exception=HandBack, block=False)
        for worker_pool in self.pools.values():
            worker_pool.join(timeout=5.0)

    # -- database helpers -----------------------------------------------------------

    def _db_ok(self) -> None:
        self.last_db_ok = time.monotonic()
        self.db_error = None

    def _db_failed(self, what: str, exc: BaseException, backoff: Backoff) -> float:
        delay = backoff.next_delay()
        self.db_error = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("%s: database error (%s); retrying in %.1fs", what, self.db_error, delay)
        return delay

    def _wait_for_schema(self) -> None:
        backoff = Backoff()
        while True:
            try:
                with self.pool.borrow() as conn:
                    missing = schema.pending(conn, self.settings.table_name)
                    with conn.cursor() as cur:
                        table = sql.Identifier(self.settings.table_name).as_string(conn)
                        cur.execute(self.queries.table_oid, {"table": table})
                        self.table_oid = cur.fetchone()["oid"]
                break
            except CONNECTION_ERRORS as exc:
                if self.stopping.wait(self._db_failed("start-up", exc, backoff)):
                    raise SystemExit(0) from None
        if missing:
            raise SchemaMissing(
                f"the jobs table {self.settings.table_name!r} is missing or behind"
                f" ({len(missing)} migrations pending): run `backy-gevent setup`"
            )
        self._db_ok()

    # -- the fetcher ----------------------------------------------------------------

    def _slot_freed(self, worker_pool: WorkerPool) -> None:
        if worker_pool.maybe_more:
            self._wake.set()

    def _wake_later(self, delay: float) -> None:
        gevent.get_hub().loop.timer(max(delay, 0.0)).start(self._wake.set)

    def _fetch_loop(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            self._wake.wait(timeout=self.settings.poll_interval)
            self._wake.clear()
            if self.stopping.is_set():
                return
            wanted = {}  # pool -> how many jobs to claim for it
            for worker_pool in self.pools.values():
                free = worker_pool.free_slots()
                if free:
                    wanted[worker_pool] = free
                else:
                    worker_pool.maybe_more = True  # unknown until a slot frees
            if not wanted:
                continue
            try:
                self._claim(wanted)
            except CONNECTION_ERRORS as exc:
                self.stopping.wait(self._db_failed("claiming jobs", exc, backoff))
                self._wake.set()
                continue
            backoff.reset()
            self._db_ok()
            if any(worker_pool.maybe_more for worker_pool in wanted):
                self._wake.set()

    def _claim(self, wanted: dict[WorkerPool, int]) -> None:
        """Claim up to ``wanted[pool]`` jobs for each pool in one statement; hand them out."""
        params = {
            "workers": [worker_pool.name for worker_pool in wanted],
            "limits": list(wanted.values()),
            "leases": [lease_seconds(worker_pool.registration.cls) for worker_pool in wanted],
            "queues": list(self.settings.queues),
            "runner_id": self.id,
        }
        # Plain tuples: building a dict per row by zip is cheaper than RealDictCursor's,
        # and this runs for every job.
        with self.pool.borrow() as conn, conn.cursor(cursor_factory=plain_cursor) as cur:
            self.queries.execute(cur, "claim", params)
            names = [column.name for column in cur.description]
            rows = cur.fetchall()
        jobs = sorted(
            (Job.from_row(dict(zip(names, row, strict=True))) for row in rows),
            key=lambda j: (j.priority, j.run_at, j.id),
        )
        claimed = collections.Counter(job.worker for job in jobs)
        for job in jobs:
            self.pools[job.worker].submit(job)
        for worker_pool, limit in wanted.items():
            # A full batch suggests more are due; a short one that the table is drained.
            worker_pool.maybe_more = claimed[worker_pool.name] >= limit

    # -- the listener ---------------------------------------------------------------

    def _listen_loop(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            conn = None
            try:
                conn = connect(self.dsn, application_name=f"backy-gevent listener {self.id}")
                with conn.cursor() as cur:
                    channel = sql.Identifier(channel_name(int(self.table_oid or 0)))
                    cur.execute(sql.SQL("LISTEN {}").format(channel))
                backoff.reset()
                self._wake.set()  # notifications may have been missed while away
                while not self.stopping.is_set():
                    try:
                        gevent.socket.wait_read(conn.fileno(), timeout=self.settings.poll_interval)
                    except TimeoutError:
                        continue
                    conn.poll()
                    if conn.notifies:
                        for notify in conn.notifies:
                            self._stop_if_cancelled(notify.payload)
                        conn.notifies.clear()
                        self._wake.set()
            except CONNECTION_ERRORS as exc:
                self.stopping.wait(self._db_failed("listening", exc, backoff))
            finally:
                if conn is not None:
                    conn.close()

    def _stop_if_cancelled(self, payload: str) -> None:
        """Stop the attempt of a job cancelled while it runs here, if it does.

        ``payload`` is ``cancel:<job id>`` for a cancel, empty for new work.
        """
        kind, _, job_id = payload.partition(":")
        if kind != "cancel":
            return
        for greenlet, job in list(self.executor.performing.items()):
            if str(job.id) == job_id:
                greenlet.kill(JobRevoked("cancelled while running"), block=False)

    # -- maintenance: rescue and heartbeat -------------------------------------------

    def _maintenance_loop(self) -> None:
        backoff = Backoff()
        next_beat = 0.0
        while not self.stopping.is_set():
            try:
                with self.pool.borrow() as conn, conn.cursor() as cur:
                    if time.monotonic() >= next_beat:
                        self.queries.execute(
                            cur,
                            "heartbeat",
                            {
                                "id": self.id,
                                "hostname": socket.gethostname(),
                                "pid": os.getpid(),
                                "workers": list(self.pools),
                                "queues": list(self.settings.queues),
                                "forget_after": FORGET_RUNNER_SECONDS,
                            },
                        )
                        next_beat = time.monotonic() + HEARTBEAT_SECONDS
                    self.queries.execute(cur, "rescue", {})
                    rescued = cur.fetchall()
                for row in rescued:
                    self.rescued[row["worker"], row["queue"], row["state"]] += 1
                    log.warning(
                        "job %s (%s) lost its runner; now %s", row["id"], row["worker"],
                        row["state"],
                    )
                backoff.reset()
                self._db_ok()
                delay = self.settings.poll_interval
            except CONNECTION_ERRORS as exc:
                delay = self._db_failed("maintenance", exc, backoff)
            self.stopping.wait(delay)

    def _unregister(self) -> None:
        try:
            with self.pool.borrow() as conn, conn.cursor() as cur:
                cur.execute(self.queries.unregister_runner, {"id": self.id})
        except CONNECTION_ERRORS as exc:
            log.warning("could not remove the runner's row: %s", exc)
