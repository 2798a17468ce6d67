#!/usr/bin/env python3
"""Time the web dashboard's pages on a jobs table of a million rows (README, "Web dashboard").

Fills a scratch schema with ROWS jobs, enqueued evenly over the last week, mostly
completed (as when rows are kept): 3% failed with a traceback, spread through the
table, and 10 cancelled (a rare state); 3,000 waiting (the newest 2,000 and one in a
thousand of the rest, as retries); the newest 200 running; one worker rare (one job in
10,000). Then it runs VACUUM ANALYZE as autovacuum would, and requests each page
through the WSGI app in-process (the statements and the HTML; no
network) RUNS times and prints the median and the slowest, in milliseconds. The
statements are prepared, as the dashboard runs them, so the runs past the fifth use
PostgreSQL's generic plans.

    .venv/bin/python scripts/web_timings.py [--rows 1000000] [--without-new-indexes]

--without-new-indexes drops the two indexes of migration 0005 first, to see what they
are for. --write-cost measures instead what the state index costs the runner's writes:
enqueueing (insert_jobs, 1,000 jobs a statement) and claiming and completing
(claim then complete_keep, 1,000 at a time), in two schemas, one without the index,
taking turns so that other load on the machine falls on both alike. The schema is
dropped at the end (--keep keeps it). BACKY_TEST_DSN or the local
server at postgresql://root@127.0.0.1:5432/test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.web import app
from backy_gevent.worker import Registry

SCHEMA = "backy_web_timings"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + '  File "/srv/app/jobs.py", line 42, in perform\n    response = client.post(url)\n' * 8
    + "TimeoutError: the mail server did not answer within 30 s"
)

FILL = """
INSERT INTO jobs (worker, args, queue, priority, state, attempt, max_attempts, run_at,
                  enqueued_at, attempted_at, finished_at, expires_at, runner_id, errors)
SELECT
    CASE WHEN i %% 10000 = 0 THEN 'rare_report'
         ELSE (ARRAY['send_email', 'resize_image', 'sync_account', 'bill_customer',
                     'index_document', 'notify_slack'])[1 + i %% 6] END,
    jsonb_build_object('user_id', i, 'email', 'user' || i || '@example.com',
                       'note', md5(i::text)),
    (ARRAY['default', 'mail', 'media', 'billing'])[1 + (i / 7) %% 4],
    0,
    s.state,
    CASE WHEN s.state = 'available' THEN 0 ELSE 1 END,
    4,
    t.at, t.at,
    CASE WHEN s.state = 'available' THEN NULL ELSE t.at END,
    CASE WHEN s.state IN ('completed', 'failed', 'cancelled') THEN t.at + interval '1 s' END,
    CASE WHEN s.state = 'running' THEN now() + interval '1 hour' END,
    CASE WHEN s.state = 'running' THEN 'timings-runner' END,
    CASE WHEN s.state = 'failed' THEN jsonb_build_array(jsonb_build_object(
        'attempt', 1, 'at', t.at, 'error', 'builtins.TimeoutError',
        'message', 'the mail server did not answer within 30 s',
        'traceback', %(traceback)s::text)) ELSE '[]'::jsonb END
FROM generate_series(1, %(rows)s) AS i
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (%(rows)s - i) * 604800.0 / %(rows)s)
                    AS at) t
CROSS JOIN LATERAL (SELECT CASE
    WHEN i > %(rows)s - 200 THEN 'running'
    WHEN i > %(rows)s - 2200 OR i %% 1000 = 1 THEN 'available'
    WHEN i %% 100 IN (2, 3, 4) THEN 'failed'
    WHEN i %% 100000 = 5 THEN 'cancelled'
    ELSE 'completed' END AS state) s
"""


def scoped(dsn: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={SCHEMA}')}"


def fill(dsn: str, rows: int, without_new_indexes: bool) -> None:
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        cur.execute(f"CREATE SCHEMA {SCHEMA}")
    Client(Settings(dsn=scoped(dsn)), registry=Registry()).setup()
    started = time.monotonic()
    with contextlib.closing(psycopg2.connect(scoped(dsn))) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(FILL, {"rows": rows, "traceback": TRACEBACK})
            if without_new_indexes:
                cur.execute("DROP INDEX jobs_state_idx, jobs_finished_idx")
            cur.execute("VACUUM ANALYZE jobs")
            cur.execute("SELECT pg_size_pretty(pg_total_relation_size('jobs'))")
            size = cur.fetchone()[0]
    print(f"filled {rows:,} rows ({size} with indexes) in {time.monotonic() - started:.0f}s",
          file=sys.stderr)
    admin.close()


def write_cost(dsn: str, rounds: int, batches: int = 10, batch: int = 1000) -> None:
    """Milliseconds per 1,000 jobs to enqueue, and to claim and complete, with and
    without the state index (schemas taking turns)."""
    from backy_gevent.db.connections import connect
    from backy_gevent.db.queries import Queries

    schemas = {"with": SCHEMA + "_with", "without": SCHEMA + "_without"}
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    for name, schema in schemas.items():
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        scoped_dsn = f"{dsn}?options={quote(f'-csearch_path={schema}')}"
        Client(Settings(dsn=scoped_dsn), registry=Registry()).setup()
        if name == "without":
            with admin.cursor() as cur:
                cur.execute(f"DROP INDEX {schema}.jobs_state_idx")
    queries = Queries("jobs")
    times: dict[str, dict[str, list[float]]] = {n: {"enqueue": [], "run": []} for n in schemas}
    insert = {"worker": "w", "args": "[" + ",".join(['{"n": 1}'] * batch) + "]",
              "queue": "default", "priority": 0, "max_attempts": 4, "run_at": None,
              "delay": 0.0}
    claim = {"workers": ["w"], "limits": [batch], "leases": [60.0], "queues": [],
             "runner_id": "timings"}
    try:
        conns = {n: connect(f"{dsn}?options={quote(f'-csearch_path={s}')}", prepare=True)
                 for n, s in schemas.items()}
        for turn in range(rounds):
            for name in sorted(schemas, reverse=turn % 2 == 1):
                with conns[name].cursor() as cur:
                    for _ in range(batches):
                        started = time.perf_counter()
                        queries.execute(cur, "insert_jobs", insert)
                        times[name]["enqueue"].append(time.perf_counter() - started)
                    for _ in range(batches):
                        started = time.perf_counter()
                        queries.execute(cur, "claim", claim)
                        rows = cur.fetchall()
                        queries.execute(cur, "complete_keep", {
                            "ids": [r["id"] for r in rows], "runner_id": "timings",
                            "attempts": [r["attempt"] for r in rows]})
                        times[name]["run"].append(time.perf_counter() - started)
        print("| per 1,000 jobs | with the state index | without | difference |")
        print("|---|---:|---:|---:|")
        for step, label in (("enqueue", "enqueue (insert_jobs)"),
                            ("run", "claim + complete_keep")):
            a, b = (statistics.median(times[n][step]) * 1000 for n in ("with", "without"))
            print(f"| {label} | {a:.1f} ms | {b:.1f} ms | {100 * (a - b) / b:+.0f}% |")
    finally:
        for conn in conns.values():
            conn.close()
        with admin.cursor() as cur:
            for schema in schemas.values():
                cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


def request(dashboard: Any, path: str) -> tuple[str, bytes]:
    """One GET through the WSGI app: its status and body."""
    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
               "SCRIPT_NAME": "", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http"}
    got: list[str] = []
    body = b"".join(dashboard(environ, lambda status, headers: got.append(status)))
    return got[0], body


def pages(conn: Any) -> list[tuple[str, str]]:
    with conn.cursor() as cur:
        cur.execute("SELECT min(id), max(id) FROM jobs")
        low, high = cur.fetchone()
        cur.execute("SELECT id FROM jobs WHERE state = 'failed' ORDER BY id DESC LIMIT 1")
        failed = cur.fetchone()[0]
    middle = (low + high) // 2
    return [
        ("overview (read afresh each time)", "/"),
        ("list, newest", "/jobs"),
        ("list, a page in the middle", f"/jobs?before={middle}"),
        ("list, the oldest page", f"/jobs?before={low + 40}"),
        ("state=failed (3%)", "/jobs?state=failed"),
        ("state=failed, a page in the middle", f"/jobs?state=failed&before={middle}"),
        ("state=available (0.3%)", "/jobs?state=available"),
        ("state=running (200 rows)", "/jobs?state=running"),
        ("state=cancelled (10 rows, the oldest first written)", "/jobs?state=cancelled"),
        ("state=completed, oldest page", f"/jobs?state=completed&before={low + 200}"),
        ("queue=mail (25%)", "/jobs?queue=mail"),
        ("worker=rare_report (0.01%)", "/jobs?worker=rare_report"),
        ("q=user4242@ (text, 1 row in 10,000)", "/jobs?q=user4242@"),
        ("q=no-such-text (reads its 20,000 rows)", "/jobs?q=no-such-text"),
        ("state=failed&q=timeout", "/jobs?state=failed&q=timeout"),
        ("one job (failed, with traceback)", f"/jobs/{failed}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--without-new-indexes", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch schema")
    parser.add_argument("--reuse", action="store_true", help="time the kept schema again")
    parser.add_argument("--write-cost", action="store_true",
                        help="what the state index costs enqueues, claims and completions")
    options = parser.parse_args()
    dsn = os.environ.get("BACKY_TEST_DSN", "postgresql://root@127.0.0.1:5432/test")
    if options.write_cost:
        write_cost(dsn, options.runs)
        return 0
    if not options.reuse:
        fill(dsn, options.rows, options.without_new_indexes)
    client = Client(Settings(dsn=scoped(dsn)), registry=Registry())
    dashboard = app(client)
    try:
        with contextlib.closing(psycopg2.connect(scoped(dsn))) as conn:
            targets = pages(conn)
        print("| page | median ms | slowest ms |")
        print("|---|---:|---:|")
        for label, path in targets:
            times = []
            for _ in range(options.runs):
                dashboard.forget()  # no cached overview: time the statements
                started = time.perf_counter()
                status, _ = request(dashboard, path)
                times.append((time.perf_counter() - started) * 1000)
                assert status.startswith("200"), (path, status)
            print(f"| {label} | {statistics.median(times):.1f} | {max(times):.1f} |")
    finally:
        client.close()
        if not options.keep:
            with contextlib.closing(psycopg2.connect(dsn)) as admin, admin.cursor() as cur:
                admin.autocommit = True
                cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
