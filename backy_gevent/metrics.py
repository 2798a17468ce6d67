"""Prometheus metrics of a runner, on a registry of its own, and the HTTP endpoint.

``Metrics`` is the built-in ``metrics`` plugin: its hook implementations count attempts
and their outcomes, and it is registered through ``build_plugin_manager(builtins=...)``
like any outside plugin; its ``hook_error`` is the ``on_error`` of ``Hooks``. At scrape
time ``RunnerCollector`` reads the runner's own state (running jobs, health) and
``QueueCollector`` reads queue depth from the database, at most once per short while.
``MetricsServer`` is a runner service serving ``/metrics`` and ``/healthz`` from the
runner's gevent hub. Nothing here touches prometheus_client's global default registry.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg2
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from backy_gevent.config import Settings
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.errors import ConfigError
from backy_gevent.hooks import Hooks, build_plugin_manager, hookimpl
from backy_gevent.job import AVAILABLE, CANCELLED, FAILED, RUNNING, Job

if TYPE_CHECKING:
    from backy_gevent.runner import Runner

log = logging.getLogger("backy_gevent.metrics")

#: The name the plugin is registered under (``disable_plugins = ["metrics"]`` turns off
#: the job counters; the endpoint still serves the runner's and the queue's state).
PLUGIN_NAME = "metrics"

#: Histogram buckets in seconds, for job durations and waits alike: fine-grained from
#: 5 ms (a quick job, a wait cut short by LISTEN/NOTIFY) up to an hour, so that 5 ms and
#: 5 minute jobs both get useful percentiles.
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)

#: The states ``backy_queue_jobs`` reports. Completed rows (``delete_finished_jobs =
#: false``) are left out: counting them would read the whole history at every scrape,
#: and ``backy_jobs_completed_total`` already tells the throughput.
QUEUE_STATES = (AVAILABLE, RUNNING, FAILED, CANCELLED)

_JOB_LABELS = ("worker", "queue")


class Metrics:
    """The built-in metrics plugin: counts jobs through the hooks, on its own registry.

    ``registry`` defaults to a fresh ``CollectorRegistry``; pass an application's
    registry to count its enqueues there (see ``client_hooks``). The hook
    implementations only touch in-memory counters, so they can't fail a job.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        on = self.registry
        self.enqueued = Counter(
            "backy_jobs_enqueued", "Jobs written by enqueue in this process.",
            _JOB_LABELS, registry=on,
        )
        self.completed = Counter(
            "backy_jobs_completed", "Attempts that succeeded: completed jobs.",
            _JOB_LABELS, registry=on,
        )
        self.retries = Counter(
            "backy_job_retries", "Failed attempts (errors and timeouts) scheduled again.",
            _JOB_LABELS, registry=on,
        )
        self.failed = Counter(
            "backy_jobs_failed", "Jobs whose last allowed attempt failed: now failed.",
            _JOB_LABELS, registry=on,
        )
        self.timeouts = Counter(
            "backy_job_timeouts", "Attempts stopped at max_runtime (also counted as a"
            " retry or a failure).", _JOB_LABELS, registry=on,
        )
        self.duration = Histogram(
            "backy_job_duration_seconds", "Run time of perform in successful attempts.",
            _JOB_LABELS, registry=on, buckets=SECONDS_BUCKETS,
        )
        self.wait = Histogram(
            "backy_job_wait_seconds", "Time from when an attempt was due (run_at) until a"
            " runner claimed it.", _JOB_LABELS, registry=on, buckets=SECONDS_BUCKETS,
        )
        self.hook_errors = Counter(
            "backy_hook_errors", "Hook implementations that raised, by plugin and hook.",
            ("plugin", "hook"), registry=on,
        )

    # -- hook implementations -------------------------------------------------------

    @hookimpl
    def backy_job_enqueued(self, jobs: list[Job]) -> None:
        """Count the jobs this process wrote."""
        for (worker, queue), count in collections.Counter(
            (job.worker, job.queue) for job in jobs
        ).items():
            self.enqueued.labels(worker, queue).inc(count)

    @hookimpl
    def backy_before_job(self, job: Job) -> None:
        """Observe how long the attempt waited; both times come from the database clock."""
        if job.attempted_at is not None:
            waited = (job.attempted_at - job.run_at).total_seconds()
            self.wait.labels(job.worker, job.queue).observe(max(0.0, waited))

    @hookimpl
    def backy_after_job(self, job: Job, duration: float) -> None:
        """Count a completed job and observe its duration."""
        self.completed.labels(job.worker, job.queue).inc()
        self.duration.labels(job.worker, job.queue).observe(duration)

    @hookimpl
    def backy_on_failure(self, job: Job, will_retry: bool, timed_out: bool) -> None:
        """Count a retry or a failure, and a timeout if it was one."""
        labels = (job.worker, job.queue)
        if timed_out:
            self.timeouts.labels(*labels).inc()
        (self.retries if will_retry else self.failed).labels(*labels).inc()

    # -- not a hook -----------------------------------------------------------------

    def hook_error(self, plugin: str, hook: str) -> None:
        """Count a hook implementation that raised (``Hooks(on_error=...)``)."""
        self.hook_errors.labels(plugin, hook).inc()

    def watch(self, runner: Runner) -> QueueCollector:
        """Report ``runner``'s state and its jobs table at every scrape (once per runner).

        Returns the queue collector, whose connection the caller closes at the end.
        """
        name = f"backy-gevent metrics {runner.id}"
        queue = QueueCollector(
            ConnectionPool(runner.dsn, size=1, application_name=name),
            runner.queries,
            known=[(r.name, r.cls.queue) for r in runner.registry],
        )
        self.registry.register(RunnerCollector(runner))
        self.registry.register(queue)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        return queue


def client_hooks(
    registry: CollectorRegistry, *, load_entry_points: bool = True
) -> Hooks:
    """Hooks for an application's ``Client`` that count its enqueues on ``registry``.

    ``Client(hooks=client_hooks(registry))`` or ``backy_gevent.configure(hooks=...)``
    makes ``backy_jobs_enqueued_total`` count the jobs that process writes; expose
    ``registry`` the way the application exposes its other metrics. Entry-point plugins
    are loaded too (their ``backy_job_enqueued`` runs) unless ``load_entry_points`` is
    false.
    """
    metrics = Metrics(registry)
    plugin_manager = build_plugin_manager(
        [(PLUGIN_NAME, metrics)], load_entry_points=load_entry_points
    )
    return Hooks(plugin_manager, on_error=metrics.hook_error)


class RunnerCollector:
    """The runner's own state at scrape time: jobs in flight, health, outcome backlog."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        """The runner's gauges and counters, read now."""
        runner = self.runner
        running = GaugeMetricFamily(
            "backy_jobs_running", "Jobs claimed by this runner and not finished yet.",
            labels=["worker"],
        )
        for worker, count in sorted(runner.running_counts().items()):
            running.add_metric([worker], count)
        yield running
        healthy, _ = runner.health()
        yield GaugeMetricFamily(
            "backy_runner_healthy", "1 while /healthz answers 200: connected and not stopping.",
            value=1.0 if healthy else 0.0,
        )
        yield GaugeMetricFamily(
            "backy_runner_database_silent_seconds",
            "Seconds since the runner's last successful database statement.",
            value=max(0.0, runner.database.silent_for()),
        )
        yield GaugeMetricFamily(
            "backy_job_outcomes_pending",
            "Outcomes of finished attempts not yet written to the database.",
            value=runner.completer.pending,
        )
        rescued = CounterMetricFamily(
            "backy_jobs_rescued",
            "Running jobs this runner's rescuer took back after their lease ran out (their"
            " runner died or froze); state is what they became: available, or failed when"
            " the lost attempt was their last.",
            labels=["worker", "queue", "state"],
        )
        for (worker, queue, state), count in sorted(runner.rescued.items()):
            rescued.add_metric([worker, queue, state], count)
        yield rescued
        yield CounterMetricFamily(
            "backy_job_outcomes_discarded",
            "Outcomes the database refused: the job was cancelled, or rescued after its"
            " lease ran out, while the attempt ran.",
            value=runner.completer.lost,
        )


class QueueCollector:
    """Queue depth from the jobs table at scrape time, cached for a short while.

    One query (``queue_stats``) serves every scrape for ``max_age`` seconds, or for
    ``cost_factor`` times as long as the query took if that is longer, so a burst of
    scrapes hits the database once and a huge backlog can't make the scrapes a load.
    Concurrent scrapes wait for the one query in flight. ``known`` (worker, queue) pairs,
    and every pair seen since, are reported with zeros when they have no jobs, so their
    series don't vanish. A failed query leaves the queue gauges out of that scrape and
    counts in ``backy_queue_stats_errors_total``.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        queries: Queries,
        *,
        known: Iterable[tuple[str, str]] = (),
        max_age: float = 2.0,
        cost_factor: float = 50.0,
        statement_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.queries = queries
        self.max_age = max_age
        self.cost_factor = cost_factor
        self.statement_timeout = statement_timeout
        self.clock = clock
        self.groups: set[tuple[str, str]] = set(known)
        self.errors = 0
        self.queries_run = 0
        self.last_duration = 0.0
        self._rows: list[dict[str, Any]] | None = None
        self._fresh_until = float("-inf")
        self._lock = threading.Lock()

    def rows(self) -> list[dict[str, Any]] | None:
        """The ``queue_stats`` rows, from the cache while fresh; None if the query failed."""
        with self._lock:
            if self.clock() < self._fresh_until:
                return self._rows
            started = self.clock()
            try:
                with self.pool.borrow() as conn, conn.cursor() as cur:
                    cur.execute(
                        self.queries.composed("set_statement_timeout"),
                        {"milliseconds": str(int(self.statement_timeout * 1000))},
                    )
                    cur.execute(self.queries.composed("queue_stats"))
                    rows: list[dict[str, Any]] | None = [dict(row) for row in cur.fetchall()]
            except psycopg2.Error as exc:  # the server away, a statement timeout...
                self.errors += 1
                log.warning("queue depth for the metrics: database error: %s", exc)
                rows = None
            self.queries_run += 1
            self.last_duration = self.clock() - started
            self._rows = rows
            self._fresh_until = self.clock() + max(
                self.max_age, self.cost_factor * self.last_duration
            )
            return rows

    def collect(self) -> Iterator[Metric]:
        """The queue gauges (unless the query failed) and the query's own health."""
        rows = self.rows()
        yield CounterMetricFamily(
            "backy_queue_stats_errors",
            "Scrape-time queue depth queries that failed.",
            value=self.errors,
        )
        yield GaugeMetricFamily(
            "backy_queue_stats_query_seconds",
            "How long the last queue depth query took.",
            value=self.last_duration,
        )
        if rows is None:
            return
        jobs = GaugeMetricFamily(
            "backy_queue_jobs",
            "Jobs in the table by worker, queue and state (completed rows not counted);"
            " the same for every runner of one table.",
            labels=["worker", "queue", "state"],
        )
        due = GaugeMetricFamily(
            "backy_queue_due_jobs",
            "Waiting jobs whose run_at has come: ready to run now.",
            labels=["worker", "queue"],
        )
        oldest = GaugeMetricFamily(
            "backy_queue_oldest_wait_seconds",
            "How long the oldest due waiting job has waited since its run_at (0: none).",
            labels=["worker", "queue"],
        )
        counts: dict[tuple[str, str, str], float] = {}
        due_counts: dict[tuple[str, str], float] = {}
        waits: dict[tuple[str, str], float] = {}
        for row in rows:
            group = (row["worker"], row["queue"])
            self.groups.add(group)
            counts[(row["worker"], row["queue"], row["state"])] = float(row["jobs"])
            if row["state"] == AVAILABLE:
                due_counts[group] = float(row["due"])
                waits[group] = max(0.0, float(row["oldest_wait"] or 0.0))
        for worker, queue in sorted(self.groups):
            for state in QUEUE_STATES:
                jobs.add_metric([worker, queue, state], counts.get((worker, queue, state), 0.0))
            due.add_metric([worker, queue], due_counts.get((worker, queue), 0.0))
            oldest.add_metric([worker, queue], waits.get((worker, queue), 0.0))
        yield jobs
        yield due
        yield oldest

    def close(self) -> None:
        """Close the collector's connection."""
        self.pool.close()


class MetricsServer:
    """The runner's HTTP endpoint, a runner service: ``/metrics`` and ``/healthz``.

    The socket is bound when the server is built, so a taken port stops the runner at
    start-up with a one-line error; requests are served once the runner calls it, in
    greenlets of the runner's hub (at most ``MAX_REQUESTS`` at a time).
    """

    MAX_REQUESTS = 16

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        from gevent.pool import Pool
        from gevent.pywsgi import WSGIServer

        self.metrics = metrics
        self.runner: Runner | None = None
        self._metrics_app = make_wsgi_app(metrics.registry)
        self.server = WSGIServer(
            (host, port), self.application, log=None, error_log=log,
            spawn=Pool(self.MAX_REQUESTS),
        )
        try:
            self.server.init_socket()
        except OSError as exc:
            # gevent appends the address to strerror; the errno's own text reads better.
            code = exc.errno or 0
            reason = os.strerror(code) if code > 0 else exc.strerror or str(exc)
            taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
            option, value = ("metrics_port", port) if taken else ("metrics_host", host)
            raise ConfigError(
                f"option {option}: bad value {value!r}: can't listen on"
                f" {host}:{port} ({reason})"
            ) from None
        self.host, self.port = self.server.address[:2]

    def __call__(self, runner: Runner) -> None:
        """Serve until the runner kills this greenlet at its end."""
        self.runner = runner
        queue = self.metrics.watch(runner)
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)
        try:
            self.server.serve_forever(stop_timeout=1.0)
        finally:
            queue.close()

    def application(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The WSGI application: metrics, health, or 404."""
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            if self.runner is None:
                return _text(start_response, "503 Service Unavailable", "starting\n")
            healthy, reason = self.runner.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            return _text(start_response, status, reason + "\n")
        if path == "/":
            return _text(start_response, "200 OK", "backy-gevent: /metrics /healthz\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics or /healthz\n")


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def metrics_services(metrics: Metrics, settings: Settings) -> list[Callable[[Runner], None]]:
    """The runner services that serve ``metrics``: none when ``metrics_port`` is 0."""
    if not settings.metrics_port:
        return []
    return [MetricsServer(metrics, settings.metrics_host, settings.metrics_port)]
