"""The runner process: start the loops, run until asked to stop, shut down cleanly.

One gevent hub runs: a fetcher that claims jobs in one statement for every worker with
free slots; a LISTEN/NOTIFY listener on its own autocommit connection that wakes the
fetcher at once (``poll_interval`` polling stays as the fallback); a greenlet pool per
worker; a completer that writes outcomes in batches; and a maintenance loop that
rescues jobs whose lease ran out and records the runner's heartbeat. Every loop runs
supervised (``runner.supervision``): one that loses the database logs it and retries
with backoff; no job is lost meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.event import Event
from psycopg2 import sql

from backy_gevent.config import Settings
from backy_gevent.db import schema
from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.errors import SchemaMissing, WorkerError
from backy_gevent.hooks import Hooks
from backy_gevent.runner.completer import Completer
from backy_gevent.runner.executor import Executor, HandBack, JobRevoked
from backy_gevent.runner.fetcher import Fetcher, Wakeup
from backy_gevent.runner.listener import Listener
from backy_gevent.runner.maintenance import HEARTBEAT_SECONDS, Maintenance
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import Backoff, DatabaseHealth, supervise
from backy_gevent.worker import Registry

log = logging.getLogger("backy_gevent.runner")


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
        self.connections = ConnectionPool(
            dsn, size=4, application_name=f"backy-gevent {self.id}",
            prepare=settings.prepare_statements,
        )
        self.services = list(services)
        self.stopping = Event()
        self.stop_now = Event()
        self.database = DatabaseHealth()
        self.table_oid: int | None = None  # learnt at start; names our NOTIFY channel
        self._greenlets: list[gevent.Greenlet] = []
        self._build_engine()

    def _build_engine(self) -> None:
        """The parts that run jobs: completer, executor, worker pools and the loops."""
        settings = self.settings
        self.wakeup = Wakeup()
        self.completer = Completer(
            self.connections,
            self.queries,
            self.id,
            delete_finished_jobs=settings.delete_finished_jobs,
            on_retry_scheduled=self.wakeup.set_later,
        )
        self.executor = Executor(settings, self.hooks, self.completer)
        self.worker_pools = {
            registration.name: WorkerPool(
                registration,
                self.executor,
                fetch_limit=settings.fetch_limit,
                on_slot_free=self.wakeup.slot_freed,
            )
            for registration in self.registry
        }
        self.fetcher = Fetcher(
            settings, self.connections, self.queries, self.id, self.worker_pools,
            wakeup=self.wakeup, stopping=self.stopping, health=self.database,
        )
        self.listener = Listener(
            self.dsn, self.id, table_oid=lambda: int(self.table_oid or 0),
            poll_interval=settings.poll_interval, wakeup=self.wakeup,
            cancelled=self._stop_if_running,
        )
        self.maintenance = Maintenance(
            self.connections, self.queries, self.id, workers=list(self.worker_pools),
            queues=list(settings.queues), poll_interval=settings.poll_interval,
            health=self.database,
        )

    # -- state for operators, plugins and metrics -------------------------------------

    def running_counts(self) -> dict[str, int]:
        """Jobs in flight per worker in this process."""
        return {name: pool.in_flight for name, pool in self.worker_pools.items()}

    @property
    def rescued(self) -> dict[tuple[str, str, str], int]:
        """Jobs this runner's rescuer took back, by (worker, queue, state they became)."""
        return dict(self.maintenance.rescued)

    def health(self) -> tuple[bool, str]:
        """Whether the runner is connected and working, and a line saying why."""
        if self.stopping.is_set():
            return False, "stopping"
        silent = self.database.silent_for()
        limit = max(3 * self.settings.poll_interval, 2 * HEARTBEAT_SECONDS)
        if self.database.error and silent > limit:
            return False, f"database unreachable for {silent:.0f}s: {self.database.error}"
        return True, f"ok: runner {self.id}"

    # -- lifecycle ------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop claiming and drain (warm). Second: stop jobs now (cold).

        Safe to call from a signal handler: it only sets events.
        """
        if self.stopping.is_set():
            self.stop_now.set()
        self.stopping.set()
        self.wakeup.set()

    def run(self) -> None:
        """Start every loop, run until asked to stop, then shut down cleanly."""
        self._wait_for_schema()
        fetcher = self._start_loops()
        log.info(
            "runner %s started: workers %s, queues %s",
            self.id,
            ", ".join(self.worker_pools),
            ", ".join(self.settings.queues) or "all",
        )
        self.hooks.call("backy_runner_started", runner=self)
        self.stopping.wait()
        log.info("runner %s stopping: no more claims; draining running jobs", self.id)
        self.hooks.call("backy_runner_stopping", runner=self)
        fetcher.join()  # it finishes a claim in flight and dispatches what it took
        self._drain()
        self._finish(fetcher)
        log.info("runner %s stopped", self.id)

    def _start_loops(self) -> gevent.Greenlet:
        """Spawn the loops and services; return the fetcher's greenlet."""
        completer_done = self.completer.done
        self._spawn(supervise, "writing outcomes", self.completer.step,
                    stop=completer_done, health=self.database)
        fetcher = self._spawn(supervise, "claiming jobs", self.fetcher.step,
                              stop=self.stopping, health=self.database)
        self._spawn(self._listen)
        self._spawn(supervise, "maintenance", self.maintenance.step,
                    stop=self.stopping, health=self.database)
        for service in self.services:
            self._spawn(service, self)
        return fetcher

    def _listen(self) -> None:
        try:
            supervise("listening", self.listener.step, stop=self.stopping, health=self.database)
        finally:
            self.listener.close()

    def _spawn(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> gevent.Greenlet:
        greenlet = gevent.spawn(function, *args, **kwargs)
        self._greenlets.append(greenlet)
        return greenlet

    def _drain(self) -> None:
        for worker_pool in self.worker_pools.values():
            for job in worker_pool.take_unstarted():
                self.completer.handed_back(job)
        deadline = time.monotonic() + self.settings.shutdown_timeout
        for worker_pool in self.worker_pools.values():
            while not self.stop_now.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or worker_pool.join(timeout=min(left, 0.1)):
                    break
        performing = list(self.executor.performing)
        if performing:
            log.warning("handing back %d unfinished jobs", len(performing))
            gevent.killall(performing, exception=HandBack, block=False)
        for worker_pool in self.worker_pools.values():
            worker_pool.join(timeout=5.0)

    def _finish(self, fetcher: gevent.Greenlet) -> None:
        """Write the last outcomes, leave the runners table, end every greenlet."""
        self.completer.stop()
        if not self.completer.wait_written(timeout=10.0):
            log.error(
                "%d outcomes could not be written; their jobs will be rescued when their"
                " leases run out",
                self.completer.pending,
            )
        self.maintenance.unregister()
        gevent.killall([g for g in self._greenlets if g is not fetcher], timeout=5)
        for worker_pool in self.worker_pools.values():
            worker_pool.stop()
        self.connections.close()

    def _wait_for_schema(self) -> None:
        backoff = Backoff()
        while True:
            try:
                with self.connections.borrow() as conn:
                    missing = schema.pending(conn, self.settings.table_name)
                    with conn.cursor() as cur:
                        table = sql.Identifier(self.settings.table_name).as_string(conn)
                        cur.execute(self.queries.composed("table_oid"), {"table": table})
                        self.table_oid = cur.fetchone()["oid"]
                break
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay()
                self.database.failed("start-up", exc, delay)
                if self.stopping.wait(delay):
                    raise SystemExit(0) from None
        if missing:
            raise SchemaMissing(
                f"the jobs table {self.settings.table_name!r} is missing or behind"
                f" ({len(missing)} migrations pending): run `backy-gevent setup`"
            )
        self.database.ok()

    def _stop_if_running(self, job_id: int) -> None:
        """Stop the attempt of a job cancelled while it runs here, if it does."""
        for greenlet, job in list(self.executor.performing.items()):
            if job.id == job_id:
                greenlet.kill(JobRevoked("cancelled while running"), block=False)
