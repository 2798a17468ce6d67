"""The hot statements keep a good plan whatever the table's statistics say.

Autovacuum analyzes the jobs table while it is idle, so its statistics usually say that
almost nothing is running just when a burst arrives. A planner that believed them once
joined each 1,000-id completion against every running job: seconds instead of
milliseconds, longer than a lease. Here the statistics are made that way on purpose, and
each hot statement runs prepared as a runner runs it, past the fifth execution, where
PostgreSQL switches to a generic plan.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backy_gevent.client import Client
from backy_gevent.db.connections import connect
from backy_gevent.db.queries import Queries, Statement
from tests.conftest import query

RUNNER = "runner-1"
BATCH = 1000  # the completer writes up to about this many outcomes per statement
RUNNING = 5000  # jobs running beside each statement
COMPLETED = 100_000  # rows of history when the table is analyzed
RUNS = 7  # executions of each: 1-5 get custom plans, then PostgreSQL may go generic
#: An execution of a good plan takes 5-50 ms here; the plans this test rules out took
#: 1-10 s with these numbers (every running job read for each id of the batch).
SECONDS = 1.0

#: The indexes each statement may reach the jobs table through (always with an index
#: condition: reading a whole index is reading every running or waiting job).
PRIMARY_KEY = {"jobs_pkey"}
ALLOWED_INDEXES: dict[Statement, set[str]] = {
    # The queues table's key: is the job's queue paused?
    "claim": PRIMARY_KEY | {"jobs_fetch_idx", "jobs_queues_pkey"},
    "claim_one": PRIMARY_KEY | {"jobs_fetch_idx", "jobs_queues_pkey"},
    # Also counts the worker's running jobs whose lease is current, for its cap.
    "claim_limited": PRIMARY_KEY | {"jobs_fetch_idx", "jobs_queues_pkey", "jobs_lease_idx",
                                    "jobs_starts_idx"},
    "complete_delete": PRIMARY_KEY,
    "complete_keep": PRIMARY_KEY,
    "hand_back": PRIMARY_KEY,
    "fail": PRIMARY_KEY,
    "touch": PRIMARY_KEY,
    "lead": PRIMARY_KEY | {"jobs_lease_idx", "jobs_leader_pkey", "jobs_runners_pkey"},
    # Not hot, but run after every stream: the next job not due yet, per worker.
    "catch_up": PRIMARY_KEY | {"jobs_fetch_idx"},
}


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def check_plan(name: Statement, plan: dict[str, Any]) -> None:
    """The plan reaches the jobs table only through an allowed index, with a condition."""
    reached = []
    for node in nodes(plan):
        if node["Node Type"] in ("ModifyTable", "Bitmap Heap Scan"):
            continue  # the table written; a bitmap scan's Bitmap Index Scan is checked
        index = node.get("Index Name")
        if node.get("Relation Name") != "jobs" and not (index or "").startswith("jobs_"):
            continue
        where = f"{name}: {node['Node Type']} {index or ''} {node.get('Index Cond', '')}"
        assert index in ALLOWED_INDEXES[name], where
        assert node.get("Index Cond"), where  # a lookup, not a read of the whole index
        if index == "jobs_pkey":
            assert node["Index Cond"].startswith("(id = "), where
        reached.append(index)
    assert reached, f"{name}: the plan never reads the jobs table"


def modified_rows(plan: dict[str, Any]) -> int:
    """Rows the statement wrote into the jobs table (not its leader or runners rows)."""
    return sum(int(node["Actual Rows"]) for node in nodes(plan)
               if node["Node Type"] == "ModifyTable" and node.get("Relation Name") == "jobs")


def make_statistics_stale(db: Any) -> None:
    """The table as autovacuum leaves it: analyzed while idle, beside its history."""
    # The statistics must stay what this test makes them.
    query(db, "ALTER TABLE jobs SET (autovacuum_enabled = false)")
    query(db, "INSERT INTO jobs (worker, state, attempt, finished_at)"
              " SELECT 'record', 'completed', 1, now() FROM generate_series(1, %s)", COMPLETED)
    query(db, "INSERT INTO jobs (worker, run_at) SELECT 'record', now() + interval '1 day'"
              " FROM generate_series(1, 10)")  # idle: nothing due, nothing running
    query(db, "VACUUM ANALYZE jobs")


def test_hot_statements_keep_their_plans_when_the_statistics_are_stale(
    client: Client, db: Any, dsn: str
) -> None:
    make_statistics_stale(db)
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        queries = Queries("jobs")
        batches = 5 * (RUNS + 1)  # claim_one, claim_limited, complete_delete, complete_keep,
        # hand_back
        query(db, "INSERT INTO jobs (worker) SELECT 'record' FROM generate_series(1, %s)",
              RUNNING + (batches + RUNS + 1) * BATCH + RUNS + 2)

        def claim_params(limit: int) -> dict[str, Any]:
            return {"workers": ["record"], "limits": [limit], "leases": [300.0],
                    "queues": [], "runner_id": RUNNER}

        def claim(limit: int) -> list[tuple[int, int]]:
            queries.execute(cur, "claim", claim_params(limit))
            return [(row["id"], row["attempt"]) for row in cur.fetchall()]

        # The burst: thousands of jobs running, claimed by the runner that will complete
        # the batches below (the worst case: its running jobs all match its runner_id).
        running = []
        while len(running) < RUNNING:
            running += claim(BATCH)
        touched = claim(1)[0]

        def batch() -> dict[str, Any]:
            taken = claim(BATCH)
            return {"ids": [i for i, _ in taken], "attempts": [a for _, a in taken],
                    "runner_id": RUNNER, "result_ids": [], "results": []}

        def failure() -> dict[str, Any]:
            [(job_id, attempt)] = claim(1)
            return {"id": job_id, "attempt": attempt, "delay": 60.0, "error": "{}",
                    "runner_id": RUNNER}

        params: dict[Statement, Callable[[], dict[str, Any]]] = {
            "claim": lambda: claim_params(BATCH),
            "claim_one": lambda: claim_params(BATCH),
            "claim_limited": lambda: claim_params(BATCH) | {
                "caps": [10**6], "rate_counts": [10**6], "rate_seconds": [3600.0]},
            "complete_delete": batch,
            "complete_keep": batch,
            "hand_back": batch,
            "fail": failure,
            "touch": lambda: {"id": touched[0], "attempt": touched[1], "lease": 300.0,
                              "runner_id": RUNNER},
            "lead": lambda: {"id": RUNNER, "lease": 300.0, "table": '"jobs"',
                             "workers": ["record"], "queues": [], "alive": 15.0},
            "catch_up": lambda: {"ids": [i for i, _ in running[:BATCH]],
                                 "attempts": [a for _, a in running[:BATCH]],
                                 "runner_id": RUNNER, "workers": ["record"], "queues": []},
        }
        rows = {"claim": BATCH, "claim_one": BATCH, "claim_limited": BATCH,
                "complete_delete": BATCH, "complete_keep": BATCH, "hand_back": BATCH, "fail": 1,
                "touch": 1, "lead": 0, "catch_up": 0}
        # The runner leads: its round rescues (nothing has expired).
        query(db, "INSERT INTO jobs_leader (name, runner_id, expires_at)"
                  " VALUES ('maintenance', %s, now() + interval '1 hour')", RUNNER)

        def explain_execute(name: Statement, run: object) -> None:
            statement, names, arguments = conn.prepared[f"jobs.{name}"]
            values = params[name]()
            started = time.monotonic()
            cur.execute(
                f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) EXECUTE {statement}{arguments}",
                [values[n] for n in names],
            )
            elapsed = time.monotonic() - started
            plan = cur.fetchone()["QUERY PLAN"][0]["Plan"]
            check_plan(name, plan)
            assert modified_rows(plan) == rows[name], (name, run)
            assert elapsed < SECONDS, (name, run, elapsed)

        for name in ALLOWED_INDEXES:
            # The first execution prepares the statement, as a runner's does.
            started = time.monotonic()
            queries.execute(cur, name, params[name]())
            returned = cur.fetchall()
            assert len(returned) == (1 if name in ("lead", "catch_up") else rows[name]), name
            assert time.monotonic() - started < SECONDS, name
            for run in range(2, RUNS + 1):
                explain_execute(name, run)

        # PostgreSQL switched most of them to their generic plan; some kept custom plans,
        # which other statistics may not. Each statement's generic plan, then:
        cur.execute("SET plan_cache_mode = force_generic_plan")
        for name in ALLOWED_INDEXES:
            explain_execute(name, "generic")
        cur.execute("RESET plan_cache_mode")
        cur.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        counts = {row["statement"].split()[1]: row for row in cur.fetchall()}
        for name in ALLOWED_INDEXES:
            assert counts[conn.prepared[f"jobs.{name}"][0]]["generic_plans"] >= 1, name

    # Nothing else was touched: the jobs that stayed running are still the runner's.
    [(still_running,)] = query(
        db, "SELECT count(*) FROM jobs WHERE state = 'running' AND runner_id = %s", RUNNER)
    assert still_running >= RUNNING


#: Jobs waiting, all of one worker and queue, when the table is analyzed while idle.
BACKLOG = 20_000


@pytest.mark.parametrize("statement", ["claim", "claim_one"])
@pytest.mark.parametrize("queues_row", ["none", "resumed since", "paused"])
def test_the_claim_walks_the_fetch_index_when_the_statistics_saw_a_backlog(
    client: Client, db: Any, dsn: str, queues_row: str, statement: Statement
) -> None:
    """Statistics taken while a backlog of one worker and one queue waited: the claim
    reads the first rows of the fetch index, not the whole table and a sort (which made
    every claim of a million-job backlog read a million rows)."""
    query(db, "ALTER TABLE jobs SET (autovacuum_enabled = false)")
    query(db, "INSERT INTO jobs (worker) SELECT 'record' FROM generate_series(1, %s)",
          BACKLOG)
    if queues_row != "none":  # the queues table as a pause leaves it, analyzed too
        query(db, "INSERT INTO jobs_queues (queue, paused, paused_at)"
                  " VALUES ('default', true, now()), ('other', false, NULL)")
    query(db, "VACUUM ANALYZE jobs")
    query(db, "ANALYZE jobs_queues")
    if queues_row == "resumed since":
        query(db, "UPDATE jobs_queues SET paused = false, paused_at = NULL")
    params = {"workers": ["record"], "limits": [100], "leases": [300.0], "queues": [],
              "runner_id": RUNNER}
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        queries = Queries("jobs")
        queries.execute(cur, statement, params)
        claimed = len(cur.fetchall())
        prepared, names, arguments = conn.prepared[f"jobs.{statement}"]
        for mode in ["auto"] * RUNS + ["force_generic_plan"]:
            cur.execute(f"SET plan_cache_mode = {mode}")
            cur.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) EXECUTE {prepared}"
                        f"{arguments}", [params[n] for n in names])
            plan = cur.fetchone()["QUERY PLAN"][0]["Plan"]
            check_plan(statement, plan)
            claimed += modified_rows(plan)
    assert claimed == (0 if queues_row == "paused" else 100 * (RUNS + 2))
