"""What a runner holding many running jobs at once costs in memory (issue 12's target:
10,000 sleeping jobs under 150 MB RSS).

    .venv/bin/python scripts/running_rss.py --dsn postgresql://root@127.0.0.1/test --jobs 10000

Creates a scratch schema, enqueues N jobs of a worker that sleeps, starts one real
``backy-gevent run`` on it, waits until all N are ``running`` at once, then reads the
runner's resident set (its quarantine child, which runs no job here, counted apart),
and its RSS with nothing running for comparison. Drops the schema at the end.
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


class Nap(backy.Worker):
    """Sleeps ``seconds`` on gevent's hub: a job that waits on I/O, holding its greenlet."""

    name = "rss_nap"
    max_runtime = 600.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        import gevent

        gevent.sleep(float(args["seconds"]))


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def running(dsn: str) -> int:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE state = 'running'")
        return int(cur.fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=120.0, help="each job's sleep")
    args = parser.parse_args()
    schema = "backy_rss_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    dsn = make_dsn(args.dsn, options=f"-csearch_path={schema}")
    env = dict(os.environ, BACKY_DSN=dsn, PYTHONPATH=str(Path(__file__).resolve().parent))
    runner = None
    try:
        subprocess.run([sys.executable, "-m", "backy_gevent", "setup"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        runner = subprocess.Popen(
            [sys.executable, "-m", "backy_gevent", "run", "--import", "running_rss:Nap",
             "--metrics-port", "0", "--log-level", "warning"], env=env)
        time.sleep(3)
        idle = rss_mb(runner.pid)
        with backy.Client(dsn=dsn) as client:
            client.enqueue_many(Nap, [{"seconds": args.seconds}] * args.jobs)
        started = time.monotonic()
        while (now_running := running(dsn)) < args.jobs:
            if time.monotonic() - started > args.seconds / 2:
                sys.exit(f"only {now_running} of {args.jobs} running after"
                         f" {time.monotonic() - started:.0f}s")
            time.sleep(0.5)
        reached = time.monotonic() - started
        time.sleep(2)
        busy = rss_mb(runner.pid)
        print(f"{args.jobs} jobs running at once after {reached:.1f}s: runner RSS"
              f" {busy:.0f} MB (idle {idle:.0f} MB, {(busy - idle) * 1024 / args.jobs:.1f} KB"
              f" a running job)")
    finally:
        if runner is not None:
            runner.send_signal(signal.SIGTERM)
            runner.send_signal(signal.SIGTERM)
            runner.wait(60)
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


if __name__ == "__main__":
    main()
