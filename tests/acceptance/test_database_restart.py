"""A runner outlives a restart of its PostgreSQL server and loses no job.

The shared test server can't be restarted under other tests, so this one runs its own:
the embedded server in a private data directory, stopped with a fast shutdown (what
``pg_ctl stop -m fast`` does) while the runner is connected, then started again.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from backy_gevent import embedded
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.embedded import server as pgserver
from backy_gevent.worker import Registry
from tests import workers
from tests.conftest import RunnerProcess, cli_env, wait_until

#: These tests run PostgreSQL servers of their own.
pytestmark = pytest.mark.db


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Reachable by the unprivileged account the server runs as when we are root.
    path = Path(tempfile.mkdtemp(prefix="backy-restart-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def finished_runs(dsn: str) -> list[tuple[int, int]]:
    """(job id, number of finished runs) for every job that ran."""
    try:
        with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT job_id, count(*) FROM runs WHERE finished_at IS NOT NULL GROUP BY 1"
            )
            return cur.fetchall()
    except psycopg2.OperationalError:
        return []


def test_the_runner_recovers_from_a_server_restart(data_dir: Path, tmp_path: Path) -> None:
    quiet = {"announce": lambda line: None}
    with embedded.embedded_server(data_dir, **quiet) as dsn:
        client = Client(Settings(dsn=dsn), registry=Registry.from_classes(*workers.ALL))
        client.setup()
        with contextlib.closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
            cur.execute(workers.RUNS_TABLE)
        first = [job.id for job in client.enqueue_many("record", [{"n": n} for n in range(20)])]
        runner = RunnerProcess(
            dsn, ["--poll-interval", "0.2"], tmp_path / "runner.log", cli_env(dsn)
        )
        try:
            runner.wait_started()
            wait_until(lambda: len(finished_runs(dsn)) == 20, 20, what="the first batch")
            client.close()

            pgserver.stop(pgserver.Layout(data_dir))  # fast shutdown, under the runner
            wait_until(lambda: "database error" in runner.output, 20,
                       what="the runner to notice the database is gone")
            assert runner.process.poll() is None, runner.output

            # Starting it again: this process still uses the data directory, so
            # embedded_server finds no server running and starts one.
            with embedded.embedded_server(data_dir, **quiet) as again:
                assert again == dsn
                client = Client(Settings(dsn=dsn), registry=Registry.from_classes(*workers.ALL))
                second = [
                    job.id for job in client.enqueue_many("record", [{"n": n} for n in range(20)])
                ]
                wait_until(lambda: len(finished_runs(dsn)) == 40, 30,
                           what="the runner to reconnect and run the second batch")
                counts = dict(finished_runs(dsn))
                assert sorted(counts) == sorted(first + second)
                assert set(counts.values()) == {1}  # each job ran exactly once
                client.close()
                runner.signal(signal.SIGTERM)
                assert runner.wait(30) == 0, runner.output
        finally:
            runner.stop()
