"""Quiet when idle: a fleet of idle runners costs the database a handful of transactions
a second, whatever its size, and a job enqueued after a long idle spell starts at once."""

from __future__ import annotations

import time

from tests import workers
from tests.conftest import wait_until
from tests.faults.cluster import PrivateCluster
from tests.faults.conftest import RunnerOn, make_client

#: The issue's budget: five idle runners at the default poll interval, in all.
BUDGET_PER_SECOND = 6.0
RUNNERS = 5
MEASURE_SECONDS = 20.0


def commits(cluster: PrivateCluster) -> int:
    """Transactions committed in the cluster's database so far (our query included)."""
    return int(cluster.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )[0][0])


def test_five_idle_runners_cost_at_most_six_transactions_a_second(
    private_cluster: PrivateCluster, runner_on: RunnerOn
) -> None:
    runners = [runner_on(private_cluster.dsn, "--worker", "record") for _ in range(RUNNERS)]
    # Past start-up. A backend adds its counts to pg_stat_database at the end of a
    # transaction at least a second after its last flush, or after 10 s idle: the
    # start-up's transactions (schema checks, prepares, the election) are all counted
    # before the window opens only after that long.
    time.sleep(12.0)
    before, started = commits(private_cluster), time.monotonic()
    time.sleep(MEASURE_SECONDS)
    spent = commits(private_cluster) - before - 1  # minus our own first query
    per_second = spent / (time.monotonic() - started)
    print(f"\n{RUNNERS} idle runners: {per_second:.2f} transactions/s in all"
          f" (budget {BUDGET_PER_SECOND:g})")
    assert per_second <= BUDGET_PER_SECOND
    # After the idle spell, a new job starts at once: the notification wakes a runner.
    with make_client(private_cluster.dsn) as client:
        enqueued = time.monotonic()
        job = client.enqueue(workers.Record, n=1)
    wait_until(lambda: private_cluster.execute("SELECT 1 FROM runs WHERE job_id = %s", job.id),
               5, 0.01, what="the job to start")
    took = time.monotonic() - enqueued
    print(f"a job enqueued after {MEASURE_SECONDS:g}s idle started within {took * 1000:.0f} ms")
    assert took < 0.5
    assert all(runner.process.poll() is None for runner in runners)
