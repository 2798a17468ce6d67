"""Runners and the enqueueing API behind PgBouncer in transaction pooling mode.

PgBouncer (Debian's package) stands between the runners and a private cluster, with one
server connection in its pool, so that whatever a client leaves on a pooled session (a
LISTEN, a prepared statement, an advisory lock, a cursor, a setting) would show in the
next client's transaction.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from tests import workers
from tests.acceptance.scraping import free_port, scrape
from tests.conftest import wait_until
from tests.faults.cluster import PrivateCluster
from tests.faults.conftest import RunnerOn, make_client
from tests.faults.pgbouncer import PgBouncer, pgbouncer_binary

ARGS = ("--poll-interval", "0.5", "--worker", "record", "--metrics-port", "0",
        "--fetch-limit", "10")


@pytest.fixture
def pgbouncer(private_cluster: PrivateCluster) -> Iterator[PgBouncer]:
    if pgbouncer_binary() is None:
        pytest.fail("pgbouncer is not installed: scripts/test installs Debian's pgbouncer")
    bouncer = PgBouncer(private_cluster.port)
    bouncer.start()
    yield bouncer
    bouncer.stop()


def done(cluster: PrivateCluster) -> bool:
    return not cluster.execute(
        "SELECT 1 FROM jobs WHERE state IN ('available', 'running') LIMIT 1")


def latencies(cluster: PrivateCluster, enqueue_dsn: str, count: int = 15) -> list[float]:
    """Seconds from enqueue (committed) to the job's run starting, one job at a time."""
    seconds = []
    with make_client(enqueue_dsn) as client:
        for n in range(count):
            before = cluster.execute("SELECT clock_timestamp()")[0][0]
            job = client.enqueue(workers.Record, n=n)
            started = wait_until(lambda j=job.id: cluster.execute(
                "SELECT started_at FROM runs WHERE job_id = %s", j), 10, 0.01,
                what="the job to start")[0][0]
            seconds.append((started - before).total_seconds())
    return seconds


def test_runners_and_enqueues_through_pgbouncer_leave_nothing_on_pooled_sessions(
    private_cluster: PrivateCluster, pgbouncer: PgBouncer, runner_on: RunnerOn
) -> None:
    pooled, direct = pgbouncer.dsn(), private_cluster.dsn
    port = free_port()
    runner = runner_on(pooled, *ARGS, "--worker", "fleet_capped", "--worker", "rate_limited",
                       "--listen-dsn", direct, "--metrics-port", str(port))
    scrape(port)  # the queue-depth query runs on a pooled connection too
    with make_client(pooled) as client:
        jobs = client.enqueue_many(workers.Record, [{"n": n} for n in range(200)])
        client.enqueue(workers.Record, n=-1, delay=0.5)
        # Limited workers' claims take an advisory lock for their transaction only.
        jobs += client.enqueue_many(workers.FleetCapped, [{"seconds": 0.05}] * 4)
        jobs += client.enqueue_many(workers.RateLimited, [{}] * 4)
    wait_until(lambda: done(private_cluster), 30, what="every job to run")
    twice = private_cluster.execute(
        "SELECT job_id, attempt, worker, started_at, finished_at FROM runs WHERE job_id IN"
        " (SELECT job_id FROM runs GROUP BY job_id HAVING count(*) > 1) ORDER BY 1, 4")
    assert not twice, f"jobs ran more than once: {twice}\n{runner.output}"
    assert private_cluster.execute("SELECT count(*) FROM runs")[0][0] == len(jobs) + 1
    assert "pooler" in runner.output and "LISTEN can't work" not in runner.output
    # What the pool's one server session holds now, seen through the pooler itself.
    with make_client(pooled) as client, client.pool.borrow() as conn, conn.cursor() as cur:
        cur.execute("BEGIN")  # keep the session for the checks below
        cur.execute("SELECT count(*) AS n FROM pg_prepared_statements")
        assert cur.fetchone()["n"] == 0, "a prepared statement was left on the session"
        cur.execute("SELECT count(*) AS n FROM pg_listening_channels()")
        assert cur.fetchone()["n"] == 0, "a LISTEN was left on the session"
        cur.execute("SELECT count(*) AS n FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        assert cur.fetchone()["n"] == 0, "an advisory lock was left on the session"
        cur.execute("SELECT count(*) AS n FROM pg_cursors")
        assert cur.fetchone()["n"] == 0, "a cursor was left open on the session"
        cur.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
        assert cur.fetchone()["setting"] == "0", "a statement_timeout was left set"
        cur.execute("SELECT name, setting FROM pg_settings WHERE source = 'session'")
        settings = {row["name"]: row["setting"] for row in cur.fetchall()}
        # PgBouncer itself passes application_name on to each transaction's session.
        assert set(settings) <= {"application_name"}, f"session settings left: {settings}"
        cur.execute("ROLLBACK")


def test_latency_through_pgbouncer_with_listen_dsn_matches_a_direct_connection(
    private_cluster: PrivateCluster, pgbouncer: PgBouncer, runner_on: RunnerOn
) -> None:
    pooled, direct = pgbouncer.dsn(), private_cluster.dsn
    through = runner_on(pooled, *ARGS, "--listen-dsn", direct)
    via_pool = latencies(private_cluster, pooled)
    through.signal(15)
    assert through.wait(15) == 0
    runner_on(direct, *ARGS)
    straight = latencies(private_cluster, direct)
    p50_pool, p50_direct = statistics.median(via_pool), statistics.median(straight)
    print(f"\nenqueue to start, p50: through PgBouncer with listen_dsn {p50_pool * 1000:.1f} ms,"
          f" direct {p50_direct * 1000:.1f} ms")
    # Both are woken by the notification, well under the 0.5 s poll interval.
    assert p50_pool < 0.25 and p50_pool <= 2 * p50_direct + 0.02


def test_without_listen_dsn_a_runner_behind_pgbouncer_says_so_once_and_polls(
    private_cluster: PrivateCluster, pgbouncer: PgBouncer, runner_on: RunnerOn
) -> None:
    runner = runner_on(pgbouncer.dsn(), *ARGS)
    with make_client(pgbouncer.dsn()) as client:
        client.enqueue_many(workers.Record, [{"n": n} for n in range(20)])
    wait_until(lambda: done(private_cluster), 15, what="every job to run by polling")
    time.sleep(1.0)
    assert runner.output.count("LISTEN can't work through a connection pooler") == 1
    assert "set listen_dsn" in runner.output


def test_the_leaders_vacuum_works_through_pgbouncer(
    private_cluster: PrivateCluster, pgbouncer: PgBouncer, runner_on: RunnerOn
) -> None:
    """VACUUM can't run inside a transaction block; in transaction pooling mode each
    statement on its own connection is one, so the leader's VACUUM goes through."""
    runner = runner_on(pgbouncer.dsn(), *ARGS, "--vacuum-dead-rows", "1000")

    def vacuums() -> int:
        return int(private_cluster.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass"
        )[0][0])

    private_cluster.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
    before = vacuums()
    private_cluster.execute("INSERT INTO jobs (worker, run_at)"
                            " SELECT 'record', now() + interval '1 day'"
                            " FROM generate_series(1, 3000)")
    private_cluster.execute("DELETE FROM jobs")
    wait_until(lambda: vacuums() > before, 20, 0.1, what="the leader's VACUUM")
    assert "VACUUM of the jobs table failed" not in runner.output
    assert "may not VACUUM" not in runner.output
