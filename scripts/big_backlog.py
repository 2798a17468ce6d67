"""Does the drain keep its rate with a huge backlog, or beside a million finished rows?

    .venv/bin/python scripts/big_backlog.py --dsn postgresql://root@127.0.0.1/test

Three drains by one real ``backy-gevent run`` of no-op jobs, each in a scratch schema of
its own (dropped afterwards), the table analyzed while idle before the runner starts (as
autovacuum would have left it):

1. a backlog of ``--small`` jobs (20,000);
2. a backlog of ``--big`` jobs (1,000,000), timed over all of them;
3. ``--small`` jobs with ``delete_finished_jobs = false`` beside an empty table;
4. the same beside ``--big`` completed rows.

The backlogs are written by one INSERT ... SELECT (the enqueue path is not what is
measured here). The runner starts with the queue paused; the clock starts when it is
resumed, once the runner listens, so the runner's start-up is not timed, and stops at
the first look (every 10 ms, one that stops at the first unfinished row) that finds the
table drained.
Prints each rate, the second's ratio to the first and the fourth's to the third.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn

import backy_gevent as backy
from backy_gevent.cli.bench.scratch import any_pending


class Noop(backy.Worker):
    """Does nothing: the drain measures the queue."""

    name = "big_noop"

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        return None


def listening(cur: Any, schema: str) -> bool:
    """Whether the runner's listener is up (so it hears the resume)."""
    cur.execute("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'"
                " AND query LIKE %s)", (f"%{backy_channel(cur, schema)}%",))
    return bool(cur.fetchone()[0])


def backy_channel(cur: Any, schema: str) -> str:
    cur.execute("SELECT %s::regclass::oid", (f"{schema}.jobs",))
    return f"backy_{cur.fetchone()[0]}"


def drain(admin_dsn: str, jobs: int, completed: int, keep: bool,
          vacuum_dead_rows: int | None) -> float:
    """Jobs per second of one runner emptying a backlog of ``jobs`` beside ``completed``
    finished rows."""
    schema = "backy_big_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    dsn = make_dsn(admin_dsn, options=f"-csearch_path={schema}")
    env = dict(os.environ, BACKY_DSN=dsn, PYTHONPATH=str(Path(__file__).resolve().parent),
               BACKY_DELETE_FINISHED_JOBS=str(keep is False).lower())
    if vacuum_dead_rows is not None:
        env["BACKY_VACUUM_DEAD_ROWS"] = str(vacuum_dead_rows)
    runner = None
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        subprocess.run([sys.executable, "-m", "backy_gevent", "setup"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
            if completed:
                cur.execute(
                    "INSERT INTO jobs (worker, state, attempt, finished_at)"
                    " SELECT 'big_noop', 'completed', 1, now() FROM generate_series(1, %s)",
                    (completed,))
            cur.execute("INSERT INTO jobs (worker) SELECT 'big_noop'"
                        " FROM generate_series(1, %s)", (jobs,))
            conn.commit()
            conn.autocommit = True
            # Statistics taken while idle: what a runner meets after a quiet spell.
            cur.execute("VACUUM ANALYZE jobs")
        subprocess.run([sys.executable, "-m", "backy_gevent", "pause", "default"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        runner = subprocess.Popen(
            [sys.executable, "-m", "backy_gevent", "run", "--import", "big_backlog:Noop",
             "--metrics-port", "0", "--log-level", "warning"], env=env)
        with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
            conn.autocommit = True
            while not listening(cur, schema):
                time.sleep(0.05)
            cur.execute("UPDATE jobs_queues SET paused = false, paused_at = NULL;"
                        " SELECT pg_notify(%s, 'resume:default')", (backy_channel(cur, schema),))
            started = time.monotonic()
            # An EXISTS that stops at the first unfinished row: a count of them (which
            # read the table beside a million completed rows, 10 ms apart near the end)
            # cost the server more than the drain it timed.
            while any_pending(conn, "jobs"):
                time.sleep(0.01)
            return jobs / (time.monotonic() - started)
    finally:
        if runner is not None:
            runner.send_signal(signal.SIGTERM)
            runner.wait(60)
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--big", type=int, default=1000000)
    parser.add_argument("--vacuum-dead-rows", type=int, default=None,
                        help="the runner's vacuum_dead_rows (default: its default; 0: never)")
    args = parser.parse_args()
    vacuum = args.vacuum_dead_rows
    base = drain(args.dsn, args.small, 0, keep=False, vacuum_dead_rows=vacuum)
    print(f"{args.small:,} backlog: {base:,.0f} jobs/s", flush=True)
    big = drain(args.dsn, args.big, 0, keep=False, vacuum_dead_rows=vacuum)
    print(f"{args.big:,} backlog: {big:,.0f} jobs/s ({big / base:.2f} of the first)", flush=True)
    alone = drain(args.dsn, args.small, 0, keep=True, vacuum_dead_rows=vacuum)
    print(f"{args.small:,} backlog kept (delete_finished_jobs = false): {alone:,.0f} jobs/s",
          flush=True)
    kept = drain(args.dsn, args.small, args.big, keep=True, vacuum_dead_rows=vacuum)
    print(f"{args.small:,} backlog kept beside {args.big:,} completed rows: {kept:,.0f}"
          f" jobs/s ({kept / alone:.2f} of the one beside an empty table)")


if __name__ == "__main__":
    main()
