"""What idle runners cost: transactions per second on the database, and CPU.

    .venv/bin/python scripts/idle_cost.py --dsn postgresql://root@127.0.0.1/postgres --runners 10

Creates a scratch database on the server (so that other users' transactions are not
counted), starts N real ``backy-gevent run`` processes on it with nothing to do, lets
them settle (a backend adds its counts to pg_stat_database up to ten seconds late), then
measures ``xact_commit`` of that database and the CPU time of the runners (their
quarantine children included) over a window. Drops the database at the end.
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
from proc_cpu import cpu_seconds
from psycopg2.extensions import make_dsn, parse_dsn

import backy_gevent as backy

SETTLE_SECONDS = 12.0


class Idle(backy.Worker):
    """A worker that is never given anything to do."""

    name = "idle"

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        return None


def commits(dsn: str) -> int:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cur.fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/postgres")
    parser.add_argument("--runners", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    name = "backy_idle_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    dsn = make_dsn(args.dsn, dbname=name)
    parse_dsn(dsn)
    env = dict(os.environ, BACKY_DSN=dsn, PYTHONPATH=str(Path(__file__).resolve().parent))
    runners: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "-m", "backy_gevent", "setup"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        command = [sys.executable, "-m", "backy_gevent", "run", "--import", "idle_cost:Idle",
                   "--metrics-port", "0", "--log-level", "warning"]
        runners = [subprocess.Popen(command, env=env) for _ in range(args.runners)]
        time.sleep(SETTLE_SECONDS)
        before, cpu_before = commits(dsn), cpu_seconds((r.pid for r in runners), children=True)
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        spent = commits(dsn) - before - 1
        cpu = cpu_seconds((r.pid for r in runners), children=True) - cpu_before
        print(f"{args.runners} idle runners over {elapsed:.0f}s: {spent / elapsed:.2f}"
              f" transactions/s in all; CPU {cpu / elapsed * 100:.2f}% of one core in all,"
              f" {cpu / elapsed * 100 / args.runners:.2f}% each")
    finally:
        for runner in runners:
            runner.send_signal(signal.SIGTERM)
        for runner in runners:
            runner.wait(30)
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    main()
