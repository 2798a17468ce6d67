"""How fast the leader's retention deletes a backlog of finished rows.

    .venv/bin/python scripts/prune_rate.py --dsn postgresql://root@127.0.0.1/test --rows 200000

Creates a scratch schema, writes ROWS completed rows that finished an hour ago, starts
one ``backy-gevent run`` with ``--prune-completed-after 60`` and times until the table
is empty. Then the floor: the same rows written again and deleted by the same batched
statement back to back, with nothing else in between. Drops the schema at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent


def fill(conn: psycopg2.extensions.connection, rows: int) -> None:
    """``rows`` completed rows that finished an hour ago, analyzed."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO jobs (worker, state, attempt, finished_at)"
                    " SELECT 'record', 'completed', 1, now() - interval '1 hour'"
                    " FROM generate_series(1, %s)", (rows,))
        cur.execute("VACUUM ANALYZE jobs")


def delete_back_to_back(conn: psycopg2.extensions.connection) -> float:
    """Seconds to delete every row with the leader's batch statement, nothing between."""
    statement = (Path(ROOT, "backy_gevent/sql/queries.sql").read_text()
                 .split("-- name: prune_batch\n")[1].split("\n\n-- name:")[0]
                 .replace("{table}", "jobs"))
    params = {"states": ["completed"], "ages": [60.0], "lim": 1000}
    started = time.monotonic()
    with conn.cursor() as cur:
        while True:
            cur.execute(statement, params)
            if not cur.fetchall():
                return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--rows", type=int, default=200_000)
    arguments = parser.parse_args()
    schema = f"backy_prune_rate_{os.getpid()}"
    admin = psycopg2.connect(arguments.dsn)
    admin.autocommit = True
    separator = "&" if "?" in arguments.dsn else "?"
    scoped = f"{arguments.dsn}{separator}options=-csearch_path%3D{schema}"
    script = str(Path(sys.executable).parent / "backy-gevent")
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        subprocess.run([script, "setup", "--dsn", scoped], check=True, capture_output=True)
        with admin.cursor() as cur:
            cur.execute(f"SET search_path = {schema}")
        fill(admin, arguments.rows)
        runner = subprocess.Popen(
            [script, "run", "--dsn", scoped, "--import", "tests.workers:Record",
             "--metrics-port", "0", "--prune-completed-after", "60"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        try:
            with admin.cursor() as cur:
                while True:
                    cur.execute("SELECT count(*) FROM jobs")
                    if cur.fetchone()[0] == 0:
                        break
                    time.sleep(0.2)
            elapsed = time.monotonic() - started
        finally:
            runner.terminate()
            runner.wait(30)
        fill(admin, arguments.rows)
        floor = delete_back_to_back(admin)
        print(f"{arguments.rows} finished rows pruned in {elapsed:.1f} s:"
              f" {arguments.rows / elapsed:,.0f} rows/s (from the runner's start);"
              f" floor, batches of 1000 back to back: {floor:.1f} s,"
              f" {arguments.rows / floor:,.0f} rows/s")
    finally:
        with contextlib.suppress(psycopg2.Error), admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


if __name__ == "__main__":
    main()
