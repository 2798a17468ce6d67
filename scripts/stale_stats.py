"""Time the hot statements right after the jobs table was analyzed while idle.

That is what autovacuum leaves behind: it analyzes the table when it is quiet, so the
statistics say that almost nothing is running; then a burst of work arrives. This script
builds that situation in a scratch schema (dropped afterwards) and runs each hot
statement the way a runner does, prepared, several times: the first five executions get
custom plans, the later ones the generic plan PostgreSQL switches to.

    .venv/bin/python scripts/stale_stats.py --running 15000
    .venv/bin/python scripts/stale_stats.py --running 15000 --completed 1000000

For each statement it prints the time of each execution (in ms, as the runner sees it,
round trip included) and how the generic plan reaches the jobs table; ``--plans`` prints
the plans in full.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions

from backy_gevent.db import schema
from backy_gevent.db.connections import connect
from backy_gevent.db.queries import Queries, Statement

TABLE = "jobs"
WORKER = "w"
RUNNER = "runner-1"
STATEMENTS: tuple[Statement, ...] = (
    "claim", "complete_delete", "complete_keep", "hand_back", "fail", "touch", "lead",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--running", type=int, default=15000,
                        help="jobs running while the statements are timed")
    parser.add_argument("--completed", type=int, default=0,
                        help="completed rows in the table when it is analyzed")
    parser.add_argument("--batch", type=int, default=1000, help="ids per completion")
    parser.add_argument("--runs", type=int, default=8, help="executions of each statement")
    parser.add_argument("--plans", action="store_true", help="print the generic plans")
    parser.add_argument("--fresh", action="store_true",
                        help="ANALYZE again after the burst: the statistics are then right")
    args = parser.parse_args()
    with scratch_schema(args.dsn) as dsn:
        run(dsn, args)


@contextlib.contextmanager
def scratch_schema(dsn: str) -> Iterator[str]:
    name = "backy_stale_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{name}"')
    parameters = psycopg2.extensions.parse_dsn(dsn)
    parameters["options"] = f"{parameters.get('options', '')} -csearch_path={name}".strip()
    try:
        yield psycopg2.extensions.make_dsn(**parameters)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{name}" CASCADE')
        admin.close()


def run(dsn: str, args: argparse.Namespace) -> None:
    conn = connect(dsn, prepare=True)
    schema.migrate(conn, TABLE)
    queries = Queries(TABLE)
    cur = conn.cursor()
    # The statistics must stay what this script makes them.
    cur.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
    cur.execute("INSERT INTO jobs (worker, state, attempt, finished_at)"
                " SELECT %s, 'completed', 1, now() FROM generate_series(1, %s)",
                (WORKER, args.completed))
    # Idle: a few jobs scheduled for tomorrow, nothing due, nothing running.
    cur.execute("INSERT INTO jobs (worker, run_at) SELECT %s, now() + interval '1 day'"
                " FROM generate_series(1, 10)", (WORKER,))
    cur.execute("VACUUM ANALYZE jobs")  # what autovacuum does once a busy spell is over

    # The burst: --running jobs claimed by the runner. They stay running; the statements
    # below work on jobs it claims just before each execution.
    cur.execute("INSERT INTO jobs (worker) SELECT %s FROM generate_series(1, %s)",
                (WORKER, args.running + (4 * args.runs + 1) * args.batch + args.runs))
    claims = []
    claimed = 0
    while claimed < args.running:
        started = time.perf_counter()
        limit = min(args.batch, args.running - claimed)
        claimed += len(execute(cur, queries, "claim", claim_params(limit, RUNNER)))
        claims.append(time.perf_counter() - started)
    if args.fresh:
        cur.execute("ANALYZE jobs")
    cur.execute("SELECT version()")
    version = cur.fetchone()["version"].split(" on ")[0]
    print(f"{version}. The jobs table was analyzed idle beside {args.completed:,} completed"
          f" rows; then {claimed:,} jobs were claimed in {len(claims)} claims of up to"
          f" {args.batch} (the first took {claims[0] * 1000:.0f} ms, the slowest"
          f" {max(claims) * 1000:.0f}) and stay running"
          f"{' (then the table was analyzed again)' if args.fresh else ''}."
          f" Each statement below runs beside them,"
          f" on {args.batch} jobs (fail and touch: one) claimed for it just before.")
    print()

    def claim_for_runner(count: int) -> list[tuple[int, int]]:
        rows = execute(cur, queries, "claim", claim_params(count, RUNNER))
        return [(row["id"], row["attempt"]) for row in rows]

    def batch() -> dict[str, Any]:
        taken = claim_for_runner(args.batch)
        return {"ids": [i for i, _ in taken], "attempts": [a for _, a in taken],
                "runner_id": RUNNER, "result_ids": [], "results": []}

    def one_failure() -> dict[str, Any]:
        [(job_id, attempt)] = claim_for_runner(1)
        return {"id": job_id, "attempt": attempt, "delay": 60.0, "error": "{}",
                "runner_id": RUNNER}

    touched = claim_for_runner(1)[0]

    def one_touch() -> dict[str, Any]:
        job_id, attempt = touched
        return {"id": job_id, "attempt": attempt, "lease": 300.0, "runner_id": RUNNER}

    params: dict[Statement, Callable[[], dict[str, Any]]] = {
        "claim": lambda: claim_params(args.batch, RUNNER),
        "complete_delete": batch, "complete_keep": batch, "hand_back": batch,
        "fail": one_failure, "touch": one_touch,
        "lead": lambda: {"id": RUNNER, "lease": 300.0, "table": '"jobs"'},
    }
    print(f"{'statement':<16} {'runs 1-5 (custom plans), ms':<34} "
          f"{'runs 6+ (generic plan), ms':<28} the generic plan reaches jobs by")
    for name in STATEMENTS:
        times = []
        for _ in range(args.runs):
            values = params[name]()
            started = time.perf_counter()
            execute(cur, queries, name, values)
            times.append((time.perf_counter() - started) * 1000)
        plan = explain(conn, cur, queries, name, params[name]())
        custom = " ".join(f"{t:.1f}" for t in times[:5])
        generic = " ".join(f"{t:.1f}" for t in times[5:])
        print(f"{name:<16} {custom:<34} {generic:<28} {'; '.join(access_paths(plan))}")
        if args.plans:
            print(json.dumps(plan, indent=1))
    conn.close()


def claim_params(limit: int, runner_id: str) -> dict[str, Any]:
    return {"workers": [WORKER], "limits": [limit], "leases": [300.0], "queues": [],
            "runner_id": runner_id}


def execute(cur: Any, queries: Queries, name: Statement, params: dict[str, Any]) -> list[Any]:
    queries.execute(cur, name, params)
    return cur.fetchall()


def explain(conn: Any, cur: Any, queries: Queries, name: Statement,
            params: dict[str, Any]) -> dict[str, Any]:
    """The plan the next execution of ``name`` gets (not executed)."""
    statement, names, arguments = conn.prepared[f"{TABLE}.{name}"]
    cur.execute(f"EXPLAIN (FORMAT JSON) EXECUTE {statement}{arguments}",
                [params[n] for n in names])
    return cur.fetchone()["QUERY PLAN"][0]["Plan"]


def access_paths(plan: dict[str, Any]) -> list[str]:
    """How each scan of the jobs table finds its rows, e.g. "jobs_pkey (id = done.id)"."""
    found = []
    for node in nodes(plan):
        index = node.get("Index Name")
        if node["Node Type"] in ("ModifyTable", "Bitmap Heap Scan"):
            continue  # the table written; a bitmap scan's Bitmap Index Scan says the index
        if node.get("Relation Name") == TABLE or (index or "").startswith(f"{TABLE}_"):
            if node.get("Index Cond"):
                found.append(f"{index} {node['Index Cond']}")
            elif index:
                found.append(f"all of {index}, filtered")
            else:
                found.append(f"{node['Node Type']} of every row")
    return found


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


if __name__ == "__main__":
    main()
