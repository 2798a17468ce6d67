"""A loop that fails with anything but a lost database is never quiet about it.

The runner connects as a role of its own that may not UPDATE the jobs table, so every
claim fails with a ProgrammingError (permission denied), as after a careless REVOKE.
The runner must log it with its traceback, retry with backoff, say so on /healthz and
in its metrics, and, when it can't recover, exit with status 1; when the permission
comes back in time it recovers by itself.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from tests import workers
from tests.acceptance.scraping import free_port, get, scrape, value
from tests.acceptance.test_runner import POLL, job_row, runs
from tests.conftest import RunnerProcess, cli_env, query, wait_until

Runner = Callable[..., RunnerProcess]


@pytest.fixture
def limited_dsn(dsn: str, db: Any, server_dsn: str) -> Iterator[tuple[str, str]]:
    """A DSN for a role that may do everything in the test's schema but UPDATE jobs;
    and the role's name, to grant it back."""
    role = "backy_t_" + uuid.uuid4().hex[:10]
    schema = query(db, "SELECT current_schema()")[0][0]
    query(db, f"CREATE ROLE {role} LOGIN")
    query(db, f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
    query(db, f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}"'
              f" TO {role}")
    query(db, f"REVOKE UPDATE ON jobs FROM {role}")
    try:
        yield dsn.replace("root@", f"{role}@", 1), role
    finally:
        admin = psycopg2.connect(server_dsn)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE usename = %s", (role,))
            cur.execute(f'DROP OWNED BY {role}; DROP ROLE {role}')
        admin.close()


def test_a_failing_claim_is_logged_counted_reported_and_ends_the_runner(
    runner: Runner, client: Client, db: Any, dsn: str, limited_dsn: tuple[str, str]
) -> None:
    port = free_port()
    job = client.enqueue(workers.Record)
    proc = runner("--poll-interval", str(POLL), "--give-up-after", "4",
                  "--metrics-port", str(port), env=cli_env(limited_dsn[0]))
    started = time.monotonic()
    healthz = f"http://127.0.0.1:{port}/healthz"
    wait_until(lambda: get(healthz)[0] == 503, 5, what="/healthz to turn 503")
    _status, body = get(healthz)
    # The claim and the rescue both UPDATE the table: either may be the one reported.
    assert re.match(r"(claiming jobs|maintenance) failing for \d+s: permission denied", body)
    assert value(scrape(port), "backy_runner_loop_failures_total", loop="claiming jobs") >= 1
    assert value(scrape(port), "backy_runner_healthy") == 0
    assert proc.wait(20) == 1, proc.output
    took = time.monotonic() - started
    print(f"\nrunner gave up {took:.1f}s after start (give_up_after 4 s)")
    assert 4.0 <= took < 12.0
    output = proc.output
    assert "Traceback" in output and "InsufficientPrivilege" in output
    assert re.search(r"(claiming jobs|maintenance) has failed for \d+s; giving up", output)
    assert job_row(db, job.id)["state"] == "available"  # type: ignore[index]
    assert query(db, "SELECT count(*) FROM jobs_runners") == [(0,)]  # it left cleanly


def test_a_failing_loop_recovers_when_the_cause_goes_away(
    runner: Runner, client: Client, db: Any, limited_dsn: tuple[str, str]
) -> None:
    port = free_port()
    job = client.enqueue(workers.Record)
    proc = runner("--poll-interval", str(POLL), "--metrics-port", str(port),
                  env=cli_env(limited_dsn[0]))
    healthz = f"http://127.0.0.1:{port}/healthz"
    wait_until(lambda: get(healthz)[0] == 503, 5, what="/healthz to turn 503")
    query(db, f"GRANT UPDATE ON jobs TO {limited_dsn[1]}")
    wait_until(lambda: job_row(db, job.id) is None, 15, what="the job to run after the grant")
    assert len(runs(db, job.id)) == 1
    wait_until(lambda: get(healthz)[0] == 200, 5, what="/healthz to turn 200 again")
    assert proc.process.poll() is None
