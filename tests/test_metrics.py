"""The metrics plugin, the runner and queue collectors, and the HTTP application, in
process: real hooks, a real executor, the real database; no HTTP server loop."""

from __future__ import annotations

import contextlib
import datetime
import socket
import time
import wsgiref.util
from collections.abc import Iterator
from typing import Any

import gevent
import prometheus_client
import psycopg2
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import backy_gevent as backy
from backy_gevent.client import Client
from backy_gevent.config import ConfigError, Settings
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.db.queries import Queries
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import Job
from backy_gevent.metrics import (
    PLUGIN_NAME,
    SECONDS_BUCKETS,
    Metrics,
    client_hooks,
)
from backy_gevent.metrics.collectors import QueueCollector, RunnerCollector
from backy_gevent.metrics.server import MetricsServer, metrics_services
from backy_gevent.metrics.tally import TallyCounter, TallyHistogram
from backy_gevent.runner import Runner
from backy_gevent.runner.executor import Executor
from backy_gevent.worker import Registration, Registry
from tests import workers
from tests.conftest import query

# -- workers and a sink for the executor ------------------------------------------------


class Ok(backy.Worker):
    name = "ok"

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        gevent.sleep(0.01)


class Boom(backy.Worker):
    name = "boom"

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        raise ValueError("boom")


class Slow(backy.Worker):
    name = "slow"
    max_runtime = 0.05

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        gevent.sleep(5)


class NullSink:
    """An OutcomeSink that forgets: these tests look at the metrics only."""

    def completed(self, job: Job, result: Any = None) -> None:
        pass

    def snoozed(self, job: Job, seconds: float) -> None:
        pass

    def cancelled(self, job: Job, error: dict[str, Any]) -> None:
        pass

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None:
        pass

    def handed_back(self, job: Job) -> None:
        pass

    def touch(self, job: Job, lease: float) -> None:
        pass


class Raiser:
    """A plugin whose hook raises."""

    @backy.hookimpl
    def backy_before_job(self) -> None:
        raise RuntimeError("plugin broke")


def make_job(worker: str, *, attempt: int = 1, max_attempts: int = 4, waited: float = 0.0,
             queue: str = "mail") -> Job:
    run_at = datetime.datetime.now(datetime.timezone.utc)
    return Job(
        id=1, worker=worker, args={}, queue=queue, priority=0, state="running",
        attempt=attempt, max_attempts=max_attempts, run_at=run_at, enqueued_at=run_at,
        attempted_at=run_at + datetime.timedelta(seconds=waited),
    )


def hooks_with(metrics: Metrics, *others: tuple[str, object]) -> Hooks:
    plugin_manager = build_plugin_manager(
        [(PLUGIN_NAME, metrics), *others], load_entry_points=False
    )
    return Hooks(plugin_manager, on_error=metrics.hook_error)


def attempt(executor: Executor, job: Job, worker: type[backy.Worker]) -> None:
    greenlet = gevent.spawn(executor.run, job, Registration(worker.name or "", worker, "test"))
    greenlet.join(timeout=10)
    assert greenlet.dead
    greenlet.get()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# -- the plugin -------------------------------------------------------------------------


def test_the_plugin_counts_each_outcome_of_real_attempts() -> None:
    metrics = Metrics()
    executor = Executor(Settings(), hooks_with(metrics), NullSink())
    for _ in range(3):
        attempt(executor, make_job("ok", waited=0.3), Ok)
    attempt(executor, make_job("boom", attempt=1, max_attempts=2), Boom)  # retried
    attempt(executor, make_job("boom", attempt=2, max_attempts=2), Boom)  # failed
    attempt(executor, make_job("slow", attempt=1, max_attempts=1), Slow)  # timeout, failed
    ok, boom, slow = ({"worker": w, "queue": "mail"} for w in ("ok", "boom", "slow"))
    assert sample(metrics, "backy_jobs_completed_total", **ok) == 3
    assert sample(metrics, "backy_job_retries_total", **boom) == 1
    assert sample(metrics, "backy_jobs_failed_total", **boom) == 1
    assert sample(metrics, "backy_job_timeouts_total", **boom) is None
    assert sample(metrics, "backy_job_timeouts_total", **slow) == 1
    assert sample(metrics, "backy_jobs_failed_total", **slow) == 1
    assert sample(metrics, "backy_job_retries_total", **slow) is None
    # Durations of the successful attempts only; waits of every attempt.
    assert sample(metrics, "backy_job_duration_seconds_count", **ok) == 3
    duration_sum = sample(metrics, "backy_job_duration_seconds_sum", **ok)
    assert duration_sum is not None and 0.03 <= duration_sum < 1
    assert sample(metrics, "backy_job_duration_seconds_count", **slow) is None
    assert sample(metrics, "backy_job_wait_seconds_count", **ok) == 3
    assert sample(metrics, "backy_job_wait_seconds_sum", **ok) == pytest.approx(0.9)
    assert sample(metrics, "backy_job_wait_seconds_bucket", le="0.25", **ok) == 0
    assert sample(metrics, "backy_job_wait_seconds_bucket", le="0.5", **ok) == 3
    assert sample(metrics, "backy_job_wait_seconds_count", **boom) == 2


def test_buckets_suit_both_quick_and_five_minute_jobs() -> None:
    assert SECONDS_BUCKETS[0] == 0.005
    assert 300.0 in SECONDS_BUCKETS and SECONDS_BUCKETS[-1] >= 600
    assert list(SECONDS_BUCKETS) == sorted(SECONDS_BUCKETS)


def test_a_wait_is_never_negative() -> None:
    metrics = Metrics()
    metrics.backy_before_job(make_job("ok", waited=-0.5))  # clocks a hair apart
    assert sample(metrics, "backy_job_wait_seconds_sum", worker="ok", queue="mail") == 0


def test_a_raising_plugin_is_counted_by_plugin_and_hook() -> None:
    metrics = Metrics()
    hooks = hooks_with(metrics, ("raiser", Raiser()))
    executor = Executor(Settings(), hooks, NullSink())
    attempt(executor, make_job("ok"), Ok)
    assert sample(metrics, "backy_hook_errors_total", plugin="raiser",
                  hook="backy_before_job") == 1
    # The job's outcome is untouched by the plugin's error.
    assert sample(metrics, "backy_jobs_completed_total", worker="ok", queue="mail") == 1


def test_metrics_live_on_their_own_registry_never_the_global_one() -> None:
    first, second = Metrics(), Metrics()  # two at once: no duplicate-name error
    first.completed.labels("ok", "mail").inc()
    assert sample(second, "backy_jobs_completed_total", worker="ok", queue="mail") is None
    default = prometheus_client.REGISTRY
    assert default.get_sample_value(
        "backy_jobs_completed_total", {"worker": "ok", "queue": "mail"}
    ) is None
    assert b"backy_" not in generate_latest(default)


def test_the_plugin_is_a_builtin_registered_like_outside_plugins() -> None:
    metrics = Metrics()
    plugin_manager = build_plugin_manager([(PLUGIN_NAME, metrics)], load_entry_points=False)
    assert plugin_manager.get_plugin(PLUGIN_NAME) is metrics
    hooks = {caller.name for caller in plugin_manager.get_hookcallers(metrics) or []}
    assert hooks == {
        "backy_job_enqueued", "backy_before_job", "backy_after_job", "backy_on_failure"
    }


def test_an_application_counts_its_enqueues_on_its_own_registry(client: Client) -> None:
    registry = CollectorRegistry()
    app = Client(client.settings, registry=client.registry,
                 hooks=client_hooks(registry, load_entry_points=False))
    try:
        app.enqueue("record")
        app.enqueue_many("record", [{}, {}], queue="other")
        app.enqueue("record", unique_key="once")
        app.enqueue("record", unique_key="once")  # already waiting: nothing written
    finally:
        app.close()

    def enqueued(queue: str) -> float | None:
        return registry.get_sample_value(
            "backy_jobs_enqueued_total", {"worker": "record", "queue": queue}
        )

    assert (enqueued("default"), enqueued("other")) == (2, 2)


# -- the queue collector ----------------------------------------------------------------


@pytest.fixture
def queue_pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(dsn, size=1)
    yield pool
    pool.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauges(collector: Any) -> dict[tuple[str, tuple[str, ...]], float]:
    """The collector's samples: (name, label values) -> value."""
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_queue_depth_by_worker_queue_and_state(
    client: Client, db: Any, queue_pool: ConnectionPool
) -> None:
    client.enqueue_many("record", [{}] * 3)
    client.enqueue("record", delay=3600)
    query(db, "UPDATE jobs SET run_at = now() - interval '60 seconds'"
              " WHERE id = (SELECT min(id) FROM jobs)")
    client.enqueue("fail", queue="other")
    running = client.enqueue("fail", queue="other")
    query(db, "UPDATE jobs SET state = 'running', attempt = 1, runner_id = 'elsewhere',"
              " expires_at = now() + interval '1 minute' WHERE id = %s", running.id)
    dead = client.enqueue("fail", queue="other")
    query(db, "UPDATE jobs SET state = 'failed', finished_at = now() WHERE id = %s", dead.id)
    client.cancel(client.enqueue("fail", queue="other").id)
    kept = client.enqueue("record")
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = %s", kept.id)

    collector = QueueCollector(queue_pool, Queries("jobs"), known=[("sleep", "default")])
    got = gauges(collector)
    jobs = {k[1]: v for k, v in got.items() if k[0] == "backy_queue_jobs"}
    assert jobs == {
        ("record", "default", "available"): 4,
        ("record", "default", "running"): 0,
        ("record", "default", "failed"): 0,
        ("record", "default", "cancelled"): 0,
        ("fail", "other", "available"): 1,
        ("fail", "other", "running"): 1,
        ("fail", "other", "failed"): 1,
        ("fail", "other", "cancelled"): 1,
        # A worker the runner knows, with no jobs: zeros, so its series don't vanish.
        ("sleep", "default", "available"): 0,
        ("sleep", "default", "running"): 0,
        ("sleep", "default", "failed"): 0,
        ("sleep", "default", "cancelled"): 0,
    }
    assert got[("backy_queue_due_jobs", ("record", "default"))] == 3
    assert got[("backy_queue_due_jobs", ("fail", "other"))] == 1
    assert 60 <= got[("backy_queue_oldest_wait_seconds", ("record", "default"))] < 120
    assert got[("backy_queue_oldest_wait_seconds", ("sleep", "default"))] == 0
    assert got[("backy_queue_stats_errors_total", ())] == 0
    # The same numbers as `backy-gevent jobs` (its query reads the whole table).
    for row in client.stats():
        if row["state"] != "completed":
            assert jobs[(row["worker"], row["queue"], row["state"])] == row["jobs"]


def test_a_group_seen_once_reports_zeros_after_its_jobs_are_gone(
    client: Client, db: Any, queue_pool: ConnectionPool
) -> None:
    clock = Clock()
    collector = QueueCollector(queue_pool, Queries("jobs"), clock=clock)
    client.enqueue("record", queue="burst")
    assert gauges(collector)[("backy_queue_jobs", ("record", "burst", "available"))] == 1
    query(db, "DELETE FROM jobs")
    clock.now += 60
    assert gauges(collector)[("backy_queue_jobs", ("record", "burst", "available"))] == 0


def test_a_burst_of_scrapes_queries_the_database_once(
    client: Client, queue_pool: ConnectionPool
) -> None:
    clock = Clock()
    collector = QueueCollector(queue_pool, Queries("jobs"), max_age=2.0, clock=clock)
    client.enqueue("record")
    key = ("backy_queue_jobs", ("record", "default", "available"))
    assert gauges(collector)[key] == 1
    client.enqueue("record")
    clock.now += 1.0
    for _ in range(5):
        assert gauges(collector)[key] == 1  # cached
    assert collector.queries_run == 1
    clock.now += 1.5
    assert gauges(collector)[key] == 2
    assert collector.queries_run == 2


def test_a_slow_query_is_cached_for_longer(client: Client, dsn: str) -> None:
    clock = Clock()

    class SlowPool(ConnectionPool):
        """A real pool whose queries take (fake) time, as on a big backlog."""

        @contextlib.contextmanager
        def borrow(self) -> Iterator[Any]:
            with super().borrow() as conn:
                yield conn
                clock.now += 0.2

    pool = SlowPool(dsn, size=1)
    collector = QueueCollector(pool, Queries("jobs"), max_age=2.0, cost_factor=50.0,
                               clock=clock)
    try:
        collector.rows()
        assert collector.last_duration == pytest.approx(0.2)
        clock.now += 9.0  # within 50 x 0.2 s: still cached
        collector.rows()
        assert collector.queries_run == 1
        clock.now += 1.5
        collector.rows()
        assert collector.queries_run == 2
    finally:
        pool.close()


def test_a_failed_query_leaves_the_gauges_out_and_is_counted(
    client: Client, db: Any, queue_pool: ConnectionPool
) -> None:
    collector = QueueCollector(queue_pool, Queries("jobs"), statement_timeout=0.2,
                               known=[("record", "default")])
    # Hold a lock the query must wait for: the statement timeout cancels it.
    locker = psycopg2.connect(client.settings.dsn)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            got = gauges(collector)
            assert time.monotonic() - started < 3
    finally:
        locker.rollback()
        locker.close()
    assert got[("backy_queue_stats_errors_total", ())] == 1
    assert not any(name == "backy_queue_jobs" for name, _ in got)


def test_the_queue_query_reads_indexes_not_the_table(
    client: Client, db: Any
) -> None:
    # A large history of completed rows and a few live jobs.
    query(db, "INSERT INTO jobs (worker, queue, state, finished_at)"
              " SELECT 'record', 'default', 'completed', now() FROM generate_series(1, 50000)")
    client.enqueue_many("record", [{}] * 5)
    query(db, "ANALYZE jobs")
    sql = Queries("jobs").composed("queue_stats").as_string(db)
    [(plan,)] = query(db, "EXPLAIN (FORMAT JSON) " + sql)

    def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    scans = {n["Node Type"] for n in nodes(plan[0]["Plan"]) if "Scan" in n["Node Type"]}
    assert "Seq Scan" not in scans, scans
    indexes = {n.get("Index Name") for n in nodes(plan[0]["Plan"])}
    assert {"jobs_fetch_idx", "jobs_lease_idx", "jobs_failed_idx"} <= indexes, indexes


# -- the runner collector and the HTTP application --------------------------------------


@pytest.fixture
def idle_runner(settings: Settings) -> Iterator[Runner]:
    """A real Runner that is built but not run: its state, without its loops."""
    registry = Registry.from_classes(*workers.ALL)
    runner = Runner(settings, registry, Hooks(build_plugin_manager(load_entry_points=False)),
                    dsn=str(settings.dsn))
    yield runner
    runner.connections.close()


def test_the_runner_collector_reads_the_runners_state(idle_runner: Runner) -> None:
    idle_runner.database.last_ok = time.monotonic()
    got = gauges(RunnerCollector(idle_runner))
    assert {k[1][0] for k in got if k[0] == "backy_jobs_running"} == {
        cls.name for cls in workers.ALL
    }
    assert all(v == 0 for k, v in got.items() if k[0] == "backy_jobs_running")
    assert got[("backy_runner_healthy", ())] == 1
    assert got[("backy_runner_database_silent_seconds", ())] < 5
    assert got[("backy_job_outcomes_pending", ())] == 0
    assert got[("backy_job_outcomes_discarded_total", ())] == 0


def call(server: MetricsServer, path: str) -> tuple[str, str]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(server.application(environ, lambda s, headers: status.append(s)))
    return status[0], body.decode()


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    # Port 0 here asks the OS for a free port (the metrics_port option 0 means off).
    server = MetricsServer(Metrics(), "127.0.0.1", 0)
    yield server
    server.server.close()


def test_healthz_follows_the_runners_health(server: MetricsServer, idle_runner: Runner) -> None:
    assert call(server, "/healthz")[0].startswith("503")  # not serving a runner yet
    server.runner = idle_runner
    status, body = call(server, "/healthz")
    assert (status, body) == ("200 OK", f"ok: runner {idle_runner.id}\n")
    idle_runner.database.error = "connection refused"
    idle_runner.database.last_ok = time.monotonic() - 60
    status, body = call(server, "/healthz")
    assert status.startswith("503")
    assert body.startswith("database unreachable for 60s: connection refused")
    idle_runner.request_stop()
    assert call(server, "/healthz") == ("503 Service Unavailable", "stopping\n")


def test_metrics_and_unknown_paths(server: MetricsServer) -> None:
    server.metrics.completed.labels("ok", "mail").inc()
    status, body = call(server, "/metrics")
    assert status == "200 OK"
    assert 'backy_jobs_completed_total{queue="mail",worker="ok"} 1.0' in body
    assert call(server, "/nope")[0] == "404 Not Found"


def test_a_taken_port_is_a_one_line_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"option metrics_port: bad value {port}"):
            MetricsServer(Metrics(), "127.0.0.1", port)


def test_an_address_not_of_this_host_is_a_metrics_host_error() -> None:
    # 192.0.2.1 is TEST-NET-1: documentation only, never a local address.
    with pytest.raises(ConfigError, match=r"option metrics_host: bad value '192.0.2.1'"):
        MetricsServer(Metrics(), "192.0.2.1", 0)


def test_port_zero_serves_nothing() -> None:
    assert metrics_services(Metrics(), Settings(metrics_port=0)) == []


def test_the_per_job_tallies_read_as_prometheus_clients_own_metrics() -> None:
    """The completed counter and the two histograms are plain tallies (metrics.tally):
    a scrape must read exactly what prometheus_client's Counter and Histogram give."""
    values = [0.0, 0.005, 0.0051, 0.7, 1.0, 3600.0, 5000.0, 0.2]
    theirs = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("h_seconds", "h", ("worker", "queue"),
                                            registry=theirs, buckets=SECONDS_BUCKETS)
    counter = prometheus_client.Counter("c", "c", ("worker", "queue"), registry=theirs)
    ours = prometheus_client.CollectorRegistry()
    tally = TallyHistogram("h_seconds", "h", ("worker", "queue"), SECONDS_BUCKETS)
    tally_counter = TallyCounter("c", "c", ("worker", "queue"))
    ours.register(tally)
    ours.register(tally_counter)
    for value in values:
        histogram.labels("w", "q").observe(value)
        tally.observe(("w", "q"), value)
        counter.labels("w", "q").inc()
        tally_counter.inc(("w", "q"))
    tally_counter.labels("w", "other").inc(2)
    counter.labels("w", "other").inc(2)

    def samples(registry: prometheus_client.CollectorRegistry) -> dict[Any, float]:
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in registry.collect() for sample in family.samples
                if not sample.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert ours.get_sample_value("h_seconds_bucket",
                                 {"worker": "w", "queue": "q", "le": "0.005"}) == 2
