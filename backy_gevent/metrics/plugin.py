"""The built-in ``metrics`` plugin: job counters on a Prometheus registry of its own.

``Metrics``'s hook implementations count attempts and their outcomes; it is registered
through ``build_plugin_manager(builtins=...)`` like any outside plugin, and its
``hook_error`` is the ``on_error`` of ``Hooks``. ``client_hooks`` lets an application
count its own enqueues. Nothing here touches prometheus_client's global registry.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    PlatformCollector,
    ProcessCollector,
)

from backy_gevent.db.connections import ConnectionPool
from backy_gevent.hooks import Hooks, build_plugin_manager, hookimpl
from backy_gevent.job import Job
from backy_gevent.metrics.collectors import QueueCollector, RunnerCollector
from backy_gevent.metrics.tally import TallyCounter, TallyHistogram

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
        # The three counted for every job are tallies (see ``metrics.tally``).
        self.completed = TallyCounter(
            "backy_jobs_completed", "Attempts that succeeded: completed jobs.", _JOB_LABELS,
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
        self.duration = TallyHistogram(
            "backy_job_duration_seconds", "Run time of perform in successful attempts.",
            _JOB_LABELS, SECONDS_BUCKETS,
        )
        self.wait = TallyHistogram(
            "backy_job_wait_seconds", "Time from when an attempt was due (run_at) until a"
            " runner claimed it.", _JOB_LABELS, SECONDS_BUCKETS,
        )
        for tally in (self.completed, self.duration, self.wait):
            on.register(tally)
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
            self.wait.observe((job.worker, job.queue), max(0.0, waited))

    @hookimpl
    def backy_after_job(self, job: Job, duration: float) -> None:
        """Count a completed job and observe its duration."""
        labels = (job.worker, job.queue)
        self.completed.inc(labels)
        self.duration.observe(labels, duration)

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
            ConnectionPool(
                runner.dsn, size=1, application_name=name,
                timeout=runner.settings.database_timeout,
            ),
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
