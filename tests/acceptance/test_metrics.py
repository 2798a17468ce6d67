"""The metrics endpoint of a real ``backy-gevent run``: counts, format, health, ports."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

from backy_gevent.client import Client
from tests.acceptance.scraping import (
    free_port,
    get,
    parse,
    promtool_check_metrics,
    scrape,
    scrape_text,
    value,
)
from tests.conftest import TEST_WORKER_IMPORTS, RunnerProcess, query, run_cli, wait_until


def start_with_metrics(runner: Callable[..., RunnerProcess], *args: str) -> tuple[Any, int]:
    """A runner serving metrics on a free port (after conftest's ``--metrics-port 0``)."""
    port = free_port()
    return runner("--metrics-port", str(port), *args), port


def settled(db: Any) -> bool:
    """No job is waiting or running any more."""
    rows = query(db, "SELECT count(*) FROM jobs WHERE state IN ('available', 'running')")
    return rows[0][0] == 0


def test_counters_match_the_workload_and_promtool_accepts_the_scrape(
    client: Client, db: Any, runner: Callable[..., RunnerProcess]
) -> None:
    _, port = start_with_metrics(runner)
    completed, failing, timing_out, fanned_out = 4, 2, 1, 3
    client.enqueue_many("record", [{}] * completed)
    client.enqueue_many("fail", [{}] * failing)  # retry_count 2: 2 retries, then failed
    client.enqueue("sleep", seconds=3)  # max_runtime 1, retry_count 0: timeout, failed
    client.enqueue("fan_out", count=fanned_out)  # enqueues 3 record jobs in the runner
    wait_until(lambda: settled(db), 20, what="the workload to finish")
    # Hooks fire before outcomes are written, so the counters are final now.
    samples = scrape(port)
    record = {"worker": "record", "queue": "default"}
    fail = {"worker": "fail", "queue": "default"}
    sleep = {"worker": "sleep", "queue": "default"}
    expected = {
        ("backy_jobs_completed_total", "record"): completed + fanned_out,
        ("backy_jobs_completed_total", "fan_out"): 1,
        ("backy_job_retries_total", "fail"): 2 * failing,
        ("backy_jobs_failed_total", "fail"): failing,
        ("backy_jobs_failed_total", "sleep"): timing_out,
        ("backy_job_timeouts_total", "sleep"): timing_out,
        ("backy_jobs_enqueued_total", "record"): fanned_out,
        ("backy_job_duration_seconds_count", "record"): completed + fanned_out,
        ("backy_job_wait_seconds_count", "fail"): 3 * failing,
        ("backy_job_wait_seconds_count", "record"): completed + fanned_out,
    }
    got = {
        (name, worker): value(samples, name, worker=worker, queue="default")
        for name, worker in expected
    }
    assert got == expected
    assert value(samples, "backy_job_retries_total", **sleep) is None  # never retried
    assert value(samples, "backy_job_timeouts_total", **fail) is None
    assert value(samples, "backy_hook_errors_total", plugin="metrics",
                 hook="backy_after_job") is None
    # The database agrees on what ran.
    attempts = dict(query(db, "SELECT worker, count(*) FROM runs GROUP BY worker"))
    assert attempts == {"record": 7, "fail": 6, "sleep": 1, "fan_out": 1}
    # Durations land in the histogram's buckets; the +Inf bucket is the count.
    assert value(samples, "backy_job_duration_seconds_bucket", le="+Inf", **record) == 7

    def queue_gauges() -> bool:
        now = scrape(port)
        return (
            value(now, "backy_queue_jobs", state="failed", **fail) == failing
            and value(now, "backy_queue_jobs", state="failed", **sleep) == timing_out
            and value(now, "backy_queue_jobs", state="available", **record) == 0
        )

    wait_until(queue_gauges, 10, what="queue gauges to show the failed jobs")
    text = scrape_text(port)
    promtool_check_metrics(text)
    now = parse(text)
    assert value(now, "backy_jobs_running", worker="record") == 0
    assert value(now, "backy_runner_healthy") == 1
    assert value(now, "backy_queue_stats_errors_total") == 0
    assert "process_start_time_seconds" in text
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert (status, body.split(":")[0]) == (200, "ok")


def test_queue_depth_and_oldest_wait_come_from_the_table(
    client: Client, db: Any, runner: Callable[..., RunnerProcess]
) -> None:
    # A runner that serves another queue leaves these jobs waiting in "parked".
    _, port = start_with_metrics(runner, "--queue", "elsewhere")
    client.enqueue_many("record", [{}] * 3, queue="parked")
    client.enqueue("record", queue="parked", delay=3600)
    query(db, "UPDATE jobs SET run_at = now() - interval '90 seconds' WHERE id ="
              " (SELECT min(id) FROM jobs)")
    labels = {"worker": "record", "queue": "parked"}

    def depth() -> Any:
        now = scrape(port)
        if value(now, "backy_queue_jobs", state="available", **labels) != 4:
            return None
        return now

    now = wait_until(depth, 10, what="the queue depth of the parked jobs")
    assert value(now, "backy_queue_due_jobs", **labels) == 3
    oldest = value(now, "backy_queue_oldest_wait_seconds", **labels)
    assert oldest is not None and 90 <= oldest < 150, oldest


def test_two_runners_side_by_side_expose_their_own_counts(
    client: Client, db: Any, runner: Callable[..., RunnerProcess]
) -> None:
    _, port_a = start_with_metrics(runner, "--queue", "a")
    _, port_b = start_with_metrics(runner, "--queue", "b")
    assert port_a != port_b
    client.enqueue_many("record", [{}] * 3, queue="a")
    client.enqueue_many("record", [{}] * 5, queue="b")
    wait_until(lambda: settled(db), 20, what="both runners to finish their queues")
    a, b = scrape(port_a), scrape(port_b)
    assert value(a, "backy_jobs_completed_total", worker="record", queue="a") == 3
    assert value(a, "backy_jobs_completed_total", worker="record", queue="b") is None
    assert value(b, "backy_jobs_completed_total", worker="record", queue="b") == 5
    assert value(b, "backy_jobs_completed_total", worker="record", queue="a") is None


def test_healthz_turns_503_while_the_runner_drains(
    client: Client, runner: Callable[..., RunnerProcess]
) -> None:
    process, port = start_with_metrics(runner)
    healthz = f"http://127.0.0.1:{port}/healthz"
    status, body = get(healthz)
    assert status == 200 and body.startswith("ok"), body
    client.enqueue("limited", seconds=3)  # max_runtime 5: still running when we stop
    wait_until(
        lambda: value(scrape(port), "backy_jobs_running", worker="limited") == 1,
        10, what="the job to be running",
    )
    process.signal(signal.SIGTERM)
    wait_until(lambda: get(healthz) == (503, "stopping\n"), 5, what="/healthz to say stopping")
    assert value(scrape(port), "backy_runner_healthy") == 0
    assert process.wait(20) == 0


def test_a_taken_metrics_port_stops_the_runner_with_one_line(client: Client, dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        imports = [arg for path in TEST_WORKER_IMPORTS for arg in ("--import", path)]
        result = run_cli("run", "--metrics-port", str(port), *imports, dsn=dsn, timeout=30)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("backy-gevent: error: option metrics_port: bad value"), last
    assert f"127.0.0.1:{port}" in last
