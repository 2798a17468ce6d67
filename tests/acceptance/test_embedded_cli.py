"""The console script with no DSN at all: it starts, shares and stops the embedded server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from backy_gevent.embedded import server as pgserver
from tests import workers
from tests.conftest import CONSOLE_SCRIPT, ROOT, RunnerProcess, wait_until

#: These tests run PostgreSQL servers of their own.
pytestmark = pytest.mark.db

IMPORT = ("--import", "tests.workers:Record")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory the server account can reach (pytest's tmp_path is in a 0700 dir)."""
    base = Path(tempfile.mkdtemp(prefix="backy-embedded-cli-"))
    base.chmod(0o755)
    yield base / "data"
    server = pgserver.postmaster(pgserver.Layout(base / "data"))
    if server and server.pid:  # a failed test left it running
        os.kill(server.pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def embedded_env(data_dir: Path) -> dict[str, str]:
    """No DSN anywhere: only a data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKY_", "PG"))}
    env.update(
        BACKY_DATA_DIR=str(data_dir),
        BACKY_TEST_RECORD_DSN=pgserver.Layout(data_dir).dsn("backy"),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CONSOLE_SCRIPT, *args], env=embedded_env(data_dir),
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result


def finished(dsn: str, job_id: int) -> Any:
    """Whether the Record worker ran the job to its end."""
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM runs WHERE job_id = %s AND finished_at IS NOT NULL",
                       (job_id,))
        return cursor.fetchone() is not None


def stopped(data_dir: Path) -> bool:
    return pgserver.postmaster(pgserver.Layout(data_dir)) is None


def test_run_enqueue_and_stop_on_the_embedded_server(data_dir: Path, tmp_path: Path) -> None:
    runner = RunnerProcess("", [*IMPORT, "--poll-interval", "0.2"], tmp_path / "runner.log",
                           embedded_env(data_dir))
    try:
        runner.wait_started(timeout=60)
        assert "embedded PostgreSQL server started" in runner.output
        dsn = pgserver.Layout(data_dir).dsn("backy")
        assert dsn in runner.output  # says how to reach it
        with contextlib.closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cursor:
            cursor.execute(workers.RUNS_TABLE)

        enqueued = cli(data_dir, "enqueue", *IMPORT, "record", '{"n": 1}')
        assert "embedded PostgreSQL server already running" in enqueued.stderr
        job_id = json.loads(enqueued.stdout)["id"]
        wait_until(lambda: finished(dsn, job_id), 20, what="the job to run")
        cli(data_dir, "enqueue", *IMPORT, "--delay", "3600", "record", '{"n": 2}')
        assert not stopped(data_dir)  # the runner still uses it

        runner.signal(signal.SIGTERM)
        assert runner.wait() == 0, runner.output
        wait_until(lambda: stopped(data_dir), 10, what="the server to stop")
    finally:
        runner.stop()

    # The next command starts it again, on the same data: the delayed job is still there.
    jobs = cli(data_dir, "jobs")
    assert "embedded PostgreSQL server started" in jobs.stderr
    assert "available" in jobs.stdout, jobs.stdout
    wait_until(lambda: stopped(data_dir), 10, what="the server to stop")
