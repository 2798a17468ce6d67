"""``backy-gevent bench``: jobs per second of real runners, next to pgbench's commits.

It works in a scratch schema of its own (dropped afterwards): enqueues ``--jobs`` no-op
jobs with ``enqueue_many``, starts ``--runners`` real ``backy-gevent run`` processes,
times how long they take to drain the table, then runs pgbench on the same server for
the same number of seconds with one single-row INSERT per transaction, the smallest
thing a job queue has to commit. The two numbers come from the same machine in the same
run, so they can be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.worker import Registry, Worker


class Noop(Worker):
    """Does nothing: the benchmark measures the queue, not the work."""

    name = "backy_bench_noop"
    max_runtime = 30.0

    def perform(self, job: Any, args: dict[str, Any]) -> None:
        return None


@dataclasses.dataclass
class BenchResult:
    """What one bench run measured."""

    jobs: int
    runners: int
    enqueue_seconds: float
    drain_seconds: float
    single_jobs: int
    single_seconds: float
    pgbench_tps: float | None
    pgbench_clients: int

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_seconds

    @property
    def job_rate(self) -> float:
        return self.jobs / self.drain_seconds

    @property
    def single_rate(self) -> float:
        return self.single_jobs / self.single_seconds if self.single_jobs else 0.0

    def report(self) -> str:
        lines = [
            f"enqueue_many: {self.jobs} jobs in {self.enqueue_seconds:.2f}s"
            f" = {self.enqueue_rate:,.0f} jobs/s",
            f"run ({self.runners} runner{'s' if self.runners > 1 else ''}): {self.jobs} jobs in"
            f" {self.drain_seconds:.2f}s = {self.job_rate:,.0f} jobs/s",
        ]
        if self.single_jobs:
            lines.append(
                f"one job per enqueue transaction ({self.pgbench_clients} enqueuers, the"
                f" runners working alongside): {self.single_jobs} jobs enqueued and run in"
                f" {self.single_seconds:.2f}s = {self.single_rate:,.0f} jobs/s"
            )
        if self.pgbench_tps is None:
            lines.append("pgbench: not found on PATH; no baseline")
        else:
            lines.append(
                f"pgbench (-c {self.pgbench_clients}, one INSERT per transaction):"
                f" {self.pgbench_tps:,.0f} commits/s"
            )
            lines.append(
                f"as a share of pgbench's commits/s: batched {self.job_rate / self.pgbench_tps:.0%}"
                + (f", one per transaction {self.single_rate / self.pgbench_tps:.0%}"
                   if self.single_jobs else "")
            )
        return "\n".join(lines)


def _scoped(dsn: str, schema: str) -> str:
    parameters = psycopg2.extensions.parse_dsn(dsn)
    options = parameters.get("options", "")
    parameters["options"] = f"{options} -csearch_path={schema}".strip()
    return psycopg2.extensions.make_dsn(**parameters)


def _count(dsn: str, table: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")  # a fixed name, not input
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _wait_for_runners(dsn: str, count: int, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while _count(dsn, "backy_bench_jobs_runners") < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError("the runners did not start")
        time.sleep(0.05)


def _pgbench(dsn: str, seconds: float, clients: int) -> float | None:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO backy_bench_commits (v) VALUES (1);\n")
    try:
        done = subprocess.run(
            [pgbench, "-n", "-f", script.name, "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(max(1, round(seconds))), dsn],
            capture_output=True, text=True, check=True,
        )
    finally:
        os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    return float(match[1]) if match else None


def _enqueue_one_by_one(dsn: str, settings: Settings, jobs: int, clients: int) -> None:
    """``jobs`` single enqueues, one transaction each, from ``clients`` greenlets at once."""
    import gevent.pool

    pool = ConnectionPool(
        dsn, size=clients, application_name="backy-gevent bench",
        prepare=settings.prepare_statements,
    )
    client = Client(settings, registry=Registry.from_classes(Noop), pool=pool)
    try:
        gevent.pool.Pool(clients).map(lambda n: client.enqueue(Noop, n=n), range(jobs))
    finally:
        client.close()


def _wait_drained(dsn: str, processes: list[subprocess.Popen[bytes]]) -> None:
    while _count(dsn, "backy_bench_jobs") > 0:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a runner exited during the benchmark")
        time.sleep(0.01)


@contextlib.contextmanager
def _scratch_schema(dsn: str) -> Iterator[str]:
    """A schema of the bench's own, dropped afterwards; yields a DSN whose connections
    see only it."""
    schema = "backy_bench_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _scoped(dsn, schema)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@contextlib.contextmanager
def _runner_processes(dsn: str, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` real runners of the Noop worker, started and idle; killed if still
    running when the block ends (``_stop`` ends them cleanly)."""
    env = dict(os.environ, BACKY_DSN=dsn, BACKY_TABLE_NAME="backy_bench_jobs")
    command = [sys.executable, "-m", "backy_gevent", "run", "--import",
               "backy_gevent.cli.bench:Noop", "--metrics-port", "0", "--log-level", "warning"]
    processes = [subprocess.Popen(command, env=env) for _ in range(count)]
    try:
        _wait_for_runners(dsn, count, processes)
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(30)


def _enqueue_backlog(client: Client, dsn: str, jobs: int) -> float:
    """Commit ``jobs`` no-op jobs in one transaction (so the runners see the whole
    backlog at once); return the seconds it took."""
    conn = psycopg2.connect(dsn)
    started = time.monotonic()
    try:
        for first in range(0, jobs, 1000):
            batch = [{"n": n} for n in range(first, min(jobs, first + 1000))]
            client.enqueue_many(Noop, batch, connection=conn)
        conn.commit()
    finally:
        conn.close()
    return time.monotonic() - started


def run_bench(
    settings: Settings,
    *,
    jobs: int,
    runners: int,
    pgbench_clients: int,
    single_jobs: int = 0,
) -> BenchResult:
    """Measure; ``settings.dsn`` must be set. Leaves nothing behind in the database."""
    assert settings.dsn is not None
    with _scratch_schema(settings.dsn) as dsn:
        bench_settings = settings.replace(dsn=dsn, table_name="backy_bench_jobs")
        with Client(bench_settings, registry=Registry.from_classes(Noop)) as client:
            client.setup()
            # Runners start first and wait idle, so their start-up is not timed.
            with _runner_processes(dsn, runners) as processes:
                enqueue_seconds = _enqueue_backlog(client, dsn, jobs)
                started = time.monotonic()
                _wait_drained(dsn, processes)
                drain_seconds = time.monotonic() - started
                # The other way jobs arrive: one per transaction, while the runners work.
                started = time.monotonic()
                if single_jobs:
                    _enqueue_one_by_one(dsn, bench_settings, single_jobs, pgbench_clients)
                    _wait_drained(dsn, processes)
                single_seconds = time.monotonic() - started
                _stop(processes)
        with contextlib.closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE backy_bench_commits (v int)")
        tps = _pgbench(dsn, seconds=max(drain_seconds, 5.0), clients=pgbench_clients)
    return BenchResult(
        jobs, runners, enqueue_seconds, drain_seconds, single_jobs, single_seconds, tps,
        pgbench_clients,
    )


def command_bench(arguments: argparse.Namespace, settings: Settings) -> int:
    result = run_bench(
        settings,
        jobs=arguments.jobs,
        runners=arguments.runners,
        pgbench_clients=arguments.pgbench_clients,
        single_jobs=arguments.single_jobs,
    )
    print(result.report())
    return 0
