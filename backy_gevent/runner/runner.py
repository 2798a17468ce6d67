"""The runner process: start the loops, run until asked to stop, shut down cleanly.

One gevent hub runs: a fetcher that claims jobs in one statement for every worker with
free slots; a LISTEN/NOTIFY listener on its own autocommit connection that wakes the
fetcher at once (``poll_interval`` polling stays as the fallback); a greenlet pool per
worker; a completer that writes outcomes in batches; and a maintenance loop that
rescues jobs whose lease ran out and records the runner's heartbeat; and a periodic-jobs
loop that, on the leader of maintenance, enqueues the ticks of cron schedules. Every loop runs
supervised (``runner.supervision``): one that loses the database logs it and retries
with backoff, no job is lost meanwhile, and one that can't recover stops the runner
with exit status 1. Every wait for the database is bounded (``database_timeout``), and
so is every step of a shutdown: a warm one ends within ``shutdown_timeout`` plus a few
seconds, a cold one (a second signal) within two, whatever the database does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import psycopg2
from gevent.event import Event
from psycopg2 import sql

from backy_gevent.config import Settings
from backy_gevent.db import schema
from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.errors import DatabaseUnavailable, SchemaMissing, WorkerError
from backy_gevent.hooks import Hooks
from backy_gevent.runner.completer import Completer
from backy_gevent.runner.executor import Executor, HandBack, JobRevoked
from backy_gevent.runner.fetcher import Fetcher, Wakeup
from backy_gevent.runner.guard import HubGuard
from backy_gevent.runner.listener import Listener
from backy_gevent.runner.maintenance import Maintenance, retention_of
from backy_gevent.runner.periodic import Periodic
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import Backoff, DatabaseHealth, Supervisor, one_line
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
        self.queries = Queries(settings.table_name, relaxed_commits=settings.relaxed_commits)
        self.connections = ConnectionPool(
            dsn, size=4, application_name=f"backy-gevent {self.id}",
            prepare=settings.prepare_statements, timeout=settings.database_timeout,
        )
        self.services = list(services)
        self.stopping = Event()
        self.stop_now = Event()
        self.database = DatabaseHealth()
        self.supervisor = Supervisor(
            self.database, give_up_after=settings.give_up_after, on_give_up=self._give_up
        )
        #: Why the runner gave up, when it did: the process then exits with status 1.
        self.fatal: str | None = None
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
        self.executor = Executor(
            settings, self.hooks, self.completer,
            isolation={
                "imports": list(settings.imports),
                "log_level": settings.log_level,
                "client": {"dsn": self.dsn, "table_name": settings.table_name},
            },
        )
        self.worker_pools = {
            registration.name: WorkerPool(
                registration,
                self.executor,
                fetch_limit=settings.fetch_limit,
                on_slot_free=self.wakeup.slot_freed,
            )
            for registration in self.registry
        }
        self.listener = Listener(
            settings.listen_dsn or self.dsn, self.id, table_oid=lambda: int(self.table_oid or 0),
            workers=list(self.worker_pools), queues=settings.queues,
            poll_interval=settings.poll_interval, timeout=settings.database_timeout,
            wakeup=self.wakeup, cancelled=self._stop_if_running, catch_up=self._catch_up,
        )
        self.fetcher = Fetcher(
            settings, self.connections, self.queries, self.id, self.worker_pools,
            wakeup=self.wakeup, notified=lambda: self.listener.listening,
            stopping=self.stopping, health=self.database,
            on_stream=self._on_stream,
        )
        self.maintenance = Maintenance(
            self.connections, self.queries, self.id, workers=list(self.worker_pools),
            queues=list(settings.queues), poll_interval=settings.poll_interval,
            health=self.database,
            retention=retention_of(settings.prune_completed_after, settings.prune_failed_after),
            vacuum_dead_rows=settings.vacuum_dead_rows, on_peers=self.fetcher.share_claims,
        )
        self.periodic = Periodic(
            self.connections, self.queries, self.registry,
            retry_count=settings.retry_count, leading=self.maintenance.leading,
            health=self.database, hooks=self.hooks,
        )
        longest = max(float(r.cls.max_runtime) for r in self.registry)
        self.guard = HubGuard(self.executor, stuck_after=longest + 5.0)

    # -- state for operators, plugins and metrics -------------------------------------

    def running_counts(self) -> dict[str, int]:
        """Jobs in flight per worker in this process."""
        return {name: pool.in_flight for name, pool in self.worker_pools.items()}

    @property
    def rescued(self) -> dict[tuple[str, str, str], int]:
        """Jobs this runner's rescuer took back, by (worker, queue, state they became)."""
        return dict(self.maintenance.rescued)

    @property
    def pruned(self) -> dict[str, int]:
        """Finished rows this runner deleted for retention while it led, by state."""
        return dict(self.maintenance.pruned)

    def health(self) -> tuple[bool, str]:
        """Whether the runner is connected and working, and a line saying why."""
        if self.fatal:
            return False, f"giving up: {self.fatal}"
        if self.stopping.is_set():
            return False, "stopping"
        trouble = self.supervisor.trouble()
        if trouble:
            return False, trouble
        silent = self.database.silent_for()
        limit = max(3 * self.settings.poll_interval, self.settings.database_timeout)
        if self.database.error and silent > limit:
            return False, f"database unreachable for {silent:.0f}s: {self.database.error}"
        return True, f"ok: runner {self.id}"

    # -- lifecycle ------------------------------------------------------------------

    def request_stop(self, *_signal: Any) -> None:
        """First call: stop claiming and drain (warm). Second: stop jobs now (cold).

        Safe to call from a signal handler: it only sets flags.
        """
        if self.stopping.is_set():
            self.stop_now.set()
            self.guard.exit_soon()
        self.stopping.set()
        self.wakeup.set()

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT call ``request_stop``.

        Plain signal handlers, not gevent's: they run even while a job blocks the hub,
        so a second signal can always end the process (see ``runner.guard``).
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)

    def run(self) -> None:
        """Start every loop, run until asked to stop, then shut down cleanly."""
        self._wait_for_schema()
        self.guard.start()
        self.executor.quarantine.start()
        try:
            self._start_loops()
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
            self._shutdown()
        finally:
            self.guard.stop()
        if self.fatal:
            log.critical("runner %s stopped: %s", self.id, self.fatal)
        else:
            log.info("runner %s stopped", self.id)

    def _give_up(self, loop: str, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = f"{loop}: {one_line(exc)}"
        self.request_stop()

    def _start_loops(self) -> None:
        """Spawn the supervised loops and the services."""
        run = self.supervisor.run
        self.completer_loop = self._spawn(run, "writing outcomes", self.completer.step,
                                          stop=self.completer.done)
        self.fetcher_loop = self._spawn(run, "claiming jobs", self.fetcher.step,
                                        stop=self.stopping)
        self._spawn(self._listen)
        self._spawn(run, "maintenance", self.maintenance.step, stop=self.stopping)
        self._spawn(run, "periodic jobs", self.periodic.step, stop=self.stopping)
        for service in self.services:
            self._spawn(service, self)

    def _listen(self) -> None:
        try:
            self.supervisor.run("listening", self.listener.step, stop=self.stopping)
        finally:
            self.listener.close()

    def _spawn(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> gevent.Greenlet:
        greenlet = gevent.spawn(function, *args, **kwargs)
        greenlet.link_exception(self._died)
        self._greenlets.append(greenlet)
        return greenlet

    def _died(self, greenlet: gevent.Greenlet) -> None:
        """A loop or service ended with an exception its supervision did not take."""
        log.critical("a runner greenlet died: %r", greenlet.exception, exc_info=greenlet.exc_info)
        self._give_up(getattr(greenlet, "name", "a loop"), greenlet.exception)

    # -- shutdown: every step bounded, a second signal cuts each short -------------

    def _wait(self, waitables: list[Any], until: float) -> None:
        """Wait until every one of ``waitables`` (events, greenlets) is ready, the
        monotonic time ``until`` comes, or a cold stop is asked for."""
        while not self.stop_now.is_set():
            pending = [waitable for waitable in waitables if not waitable.ready()]
            left = until - time.monotonic()
            if not pending or left <= 0:
                return
            gevent.wait([*pending, self.stop_now], timeout=left, count=1)

    def _shutdown(self) -> None:
        ends = time.monotonic() + self.settings.shutdown_timeout
        # A claim in flight finishes and hands out what it took (bounded: a silent
        # database makes it fail within database_timeout anyway).
        self._wait([self.fetcher_loop], until=max(ends, time.monotonic() + 1.0))
        self.fetcher_loop.kill(block=False)
        if self.fetcher.streaming:
            # Enqueues notify again, and the other runners are woken for what was
            # enqueued quietly since this one's last claim (bounded: else it lapses).
            gevent.spawn(self._end_quiet).join(timeout=0.5)
        for worker_pool in self.worker_pools.values():
            for job in worker_pool.take_unstarted():
                self.completer.handed_back(job)
        self._wait([pool.drained for pool in self.worker_pools.values()], until=ends)
        unfinished = self.executor.interrupt(HandBack())
        if unfinished:
            log.warning("handing back %d unfinished jobs", unfinished)
            # Not cut short by a cold stop: the interrupted attempts report their
            # hand-back as they end, a moment later on the hub, and only what they
            # reported can be written. (A cold stop's whole shutdown stays within the
            # guard's 2 s: this, 0.7 s of writing, 0.3 s to unregister.)
            gevent.wait([pool.drained for pool in self.worker_pools.values()],
                        timeout=0.5 if self.stop_now.is_set() else 1.0)
        self._finish()

    def _end_quiet(self) -> None:
        try:
            self.fetcher.end_quiet()
        except psycopg2.Error as exc:  # a silent or broken database: it lapses anyway
            log.warning("could not end quiet enqueues (they lapse within a second): %s", exc)

    def _finish(self) -> None:
        """Write the last outcomes, leave the runners table, end every greenlet."""
        cold = self.stop_now.is_set()
        self.completer.stop()
        if not self.completer.wait_written(timeout=0.7 if cold else 2.0):
            log.error(
                "%d outcomes could not be written; their jobs will be rescued when their"
                " leases run out",
                self.completer.pending,
            )
        gevent.spawn(self.maintenance.unregister).join(timeout=0.3 if cold else 0.5)
        gevent.killall(self._greenlets, block=False)
        self.executor.quarantine.close()
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
            except psycopg2.Error as exc:
                raise DatabaseUnavailable(f"start-up: {one_line(exc)}") from None
        if missing:
            raise SchemaMissing(
                f"the jobs table {self.settings.table_name!r} is missing or behind"
                f" ({len(missing)} migrations pending): run `backy-gevent setup`"
            )
        self.database.ok()

    def _stop_if_running(self, job_id: int) -> None:
        """Stop the attempt of a job cancelled while it runs here, if it does."""
        self.executor.interrupt(JobRevoked("cancelled while running"), job_id=job_id)

    def _on_stream(self, streaming: bool) -> None:
        """The fetcher starts (or stops) following a stream: the listener stops (or
        starts) listening."""
        if streaming:
            self.listener.hush()
        else:
            self.listener.rouse()

    def _catch_up(self, next_due: bool) -> None:
        """What the notifications the listener did not hear would have said (see
        ``Fetcher.catch_up``): stop the attempts no longer this runner's."""
        running = [entry.job for entry in list(self.executor.running.values())]
        for job_id in self.fetcher.catch_up(running, next_due=next_due):
            self.executor.interrupt(
                JobRevoked("no longer this runner's (cancelled or rescued)"), job_id=job_id)
