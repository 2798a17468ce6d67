"""Fixtures: a real PostgreSQL, one schema per test, and the real console script.

The server is ``BACKY_TEST_DSN`` if set, else the local one at
postgresql://root@127.0.0.1:5432/test if it answers, else the embedded server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.worker import Registry
from tests import workers

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DSN = "postgresql://root@127.0.0.1:5432/test"
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("backy-gevent"))
TEST_WORKER_IMPORTS = [f"tests.workers:{cls.__name__}" for cls in workers.ALL]


#: Fixtures that reach a PostgreSQL server: a test using any of them is marked ``db``.
DATABASE_FIXTURES = frozenset({"server_dsn", "private_server", "private_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a database ``db``, so that ``pytest -m "not db"`` is
    the fast tier: pure logic, checked in seconds."""
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def _answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of the PostgreSQL server the tests use."""
    configured = os.environ.get("BACKY_TEST_DSN")
    if configured:
        yield configured
    elif _answers(LOCAL_DSN):
        yield LOCAL_DSN
    else:
        from backy_gevent import embedded

        # Not under pytest's 0700 temporary root: as root, the server runs as an
        # unprivileged account that must reach its data directory.
        data_dir = Path(tempfile.mkdtemp(prefix="backy-test-embedded-"))
        data_dir.chmod(0o755)
        try:
            with embedded.embedded_server(data_dir, max_connections=200) as dsn:
                yield dsn
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with ``search_path`` set to ``schema`` for every connection."""
    separator = "&" if "?" in dsn else "?"
    if "://" not in dsn:
        return f"{dsn} options='-csearch_path={schema}'"
    return f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def dsn(server_dsn: str) -> Iterator[str]:
    """A DSN whose connections see only a fresh schema of this test's own."""
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(server_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    scoped = with_search_path(server_dsn, schema)
    with contextlib.closing(psycopg2.connect(scoped)) as conn, conn, conn.cursor() as cur:
        cur.execute(workers.RUNS_TABLE)
    yield scoped
    with admin.cursor() as cur:
        cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
    admin.close()


@pytest.fixture
def db(dsn: str) -> Iterator[Any]:
    """An autocommit connection to the test's schema."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    yield conn
    conn.close()


def query(conn: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def notified_since(listener: Any, db: Any, channel: str) -> list[str]:
    """The payloads ``listener`` (LISTENing on ``channel``) received since last asked:
    all of them, as an end marker notified now arrives after them (commit order). Those
    that arrive after the marker are kept for the next call."""
    query(db, "SELECT pg_notify(%s, 'end')", channel)

    def arrived() -> int | None:
        listener.poll()
        payloads = [notify.payload for notify in listener.notifies]
        return payloads.index("end") + 1 if "end" in payloads else None

    end: int = wait_until(arrived, what="the notifications")
    payloads = [notify.payload for notify in listener.notifies[:end - 1]]
    del listener.notifies[:end]
    return payloads


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(dsn=dsn, poll_interval=0.5)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    """A client of the test schema, with the schema set up and the test workers known."""
    c = Client(settings, registry=Registry.from_classes(*workers.ALL))
    c.setup()
    yield c
    c.close()


def cli_env(dsn: str, **extra: str) -> dict[str, str]:
    """Environment for the console script: the test DSN, workers importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKY_", "PG"))}
    env.update(
        BACKY_DSN=dsn,
        BACKY_TEST_RECORD_DSN=dsn,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, dsn: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``backy-gevent ARGS`` to completion and return what it printed."""
    return subprocess.run(
        [CONSOLE_SCRIPT, *args],
        env=env or cli_env(dsn),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class RunnerProcess:
    """A ``backy-gevent run`` subprocess, its output collected in a file."""

    def __init__(self, dsn: str, args: list[str], log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        imports = [arg for path in TEST_WORKER_IMPORTS for arg in ("--import", path)]
        self.process = subprocess.Popen(
            [CONSOLE_SCRIPT, "run", "--metrics-port", "0", *imports, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_started(self, timeout: float = 20) -> None:
        wait_until(lambda: " started: " in self.output or self.process.poll() is not None,
                   timeout, what="the runner to start")
        assert self.process.poll() is None, self.output

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def runner(dsn: str, tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """Start real runners: ``runner("--poll-interval", "0.5", env={...})``."""
    started: list[RunnerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> RunnerProcess:
        process = RunnerProcess(
            dsn, list(args), tmp_path / f"runner-{len(started)}.log", env or cli_env(dsn)
        )
        started.append(process)
        if wait:
            process.wait_started()
        return process

    yield start
    for process in started:
        process.stop()
