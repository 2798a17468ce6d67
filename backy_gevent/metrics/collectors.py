"""What a runner's metrics read at scrape time: the runner's own state, and queue depth.

``RunnerCollector`` reads the runner (jobs in flight, health, outcome backlog, rescues);
``QueueCollector`` reads the jobs table, at most once per short while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from backy_gevent.db.connections import ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.job import AVAILABLE, CANCELLED, FAILED, RUNNING

if TYPE_CHECKING:
    from backy_gevent.runner import Runner

log = logging.getLogger("backy_gevent.metrics")

#: The states ``backy_queue_jobs`` reports. Completed rows (``delete_finished_jobs =
#: false``) are left out: counting them would read the whole history at every scrape,
#: and ``backy_jobs_completed_total`` already tells the throughput.
QUEUE_STATES = (AVAILABLE, RUNNING, FAILED, CANCELLED)


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
            "backy_runner_leader",
            "1 while this runner leads maintenance (rescue, pruning, periodic jobs).",
            value=1.0 if runner.maintenance.leading() else 0.0,
        )
        yield GaugeMetricFamily(
            "backy_runner_listening",
            "1 while notifications wake this runner's claims; 0 while it follows a stream"
            " of enqueues on its own, or polls (LISTEN can't reach the database).",
            value=1.0 if runner.listener.listening else 0.0,
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
        pruned = CounterMetricFamily(
            "backy_jobs_pruned",
            "Finished rows this runner deleted for retention (prune_completed_after,"
            " prune_failed_after) while it led maintenance, by state.",
            labels=["state"],
        )
        for state, count in sorted(runner.pruned.items()):
            pruned.add_metric([state], count)
        yield pruned
        failures = CounterMetricFamily(
            "backy_runner_loop_failures",
            "Steps of the runner's loops that failed with anything but a lost database (a"
            " permission revoked, a bug); each is logged with its traceback and retried.",
            labels=["loop"],
        )
        for loop, count in sorted(runner.supervisor.failures.items()):
            failures.add_metric([loop], count)
        yield failures
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
                    # The bound lives and dies with one transaction: a pooled server
                    # connection (PgBouncer) is left with no setting of ours.
                    cur.execute("BEGIN")
                    cur.execute(
                        self.queries.composed("set_statement_timeout"),
                        {"milliseconds": str(int(self.statement_timeout * 1000))},
                    )
                    cur.execute(self.queries.composed("queue_stats"))
                    rows: list[dict[str, Any]] | None = [dict(row) for row in cur.fetchall()]
                    cur.execute("COMMIT")
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
        if rows is not None:
            yield from self._depth(rows)

    def _depth(self, rows: list[dict[str, Any]]) -> Iterator[Metric]:
        """The queue gauges from ``queue_stats`` rows, zeros for groups without jobs."""
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
