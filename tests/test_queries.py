"""Queries: every named statement composes for a table, and runs prepared or plain."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db.connections import connect
from backy_gevent.db.queries import STATEMENTS, Queries, Statement, _read_blocks
from backy_gevent.worker import Registry
from tests import workers
from tests.conftest import query, wait_until


def prepared_statements(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        return [row["statement"] for row in cur.fetchall()]


def test_every_block_quotes_the_table_name() -> None:
    queries = Queries("my_jobs")
    for name in ("insert_jobs", "claim", "complete_delete", "fail", "lead", "cancel"):
        text = repr(queries.composed(name))  # type: ignore[arg-type]
        assert "Identifier('my_jobs')" in text, name
    with pytest.raises(KeyError, match="nope"):
        queries.composed("nope")  # type: ignore[arg-type]


def test_the_statement_names_mypy_checks_are_the_blocks_of_queries_sql() -> None:
    assert sorted(STATEMENTS) == sorted(_read_blocks())


def test_a_preparing_connection_prepares_once_and_gets_the_same_rows(
    client: Client, dsn: str
) -> None:
    job = client.enqueue("record", n=1)
    queries = Queries("jobs")
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        for _ in range(3):
            queries.execute(cur, "get_job", {"id": job.id})
            assert cur.fetchone()["args"] == {"n": 1}
        [statement] = prepared_statements(conn)
        assert statement.startswith("PREPARE backy_") and "$1" in statement
        # A pooler's DISCARD ALL drops it; the next call prepares it again.
        cur.execute("DISCARD ALL")
        queries.execute(cur, "get_job", {"id": job.id})
        assert cur.fetchone()["id"] == job.id
        assert len(prepared_statements(conn)) == 1


def test_arrays_and_casts_survive_preparation(client: Client, dsn: str) -> None:
    # insert_unique_jobs casts its parameters (jsonb, text[], timestamptz); EXECUTE must
    # cast the same.
    queries = Queries("jobs")
    params = {
        "worker": "record", "args": '[{"a": 1}, {"b": [2]}]', "queue": "q2",
        "priority": 5, "max_attempts": 4, "run_at": None, "delay": 30.0,
        "unique_keys": [None, "k"], "unique_for": 0.0,
    }
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        queries.execute(cur, "insert_unique_jobs", params)
        rows = cur.fetchall()
        cur.execute("SELECT args, queue, priority, unique_key FROM jobs ORDER BY id")
        stored = [tuple(row.values()) for row in cur.fetchall()]
    assert [row["unique_key"] for row in rows] == [None, "k"]
    assert stored == [({"a": 1}, "q2", 5, None), ({"b": [2]}, "q2", 5, "k")]


def test_prepare_statements_false_runs_plain_sql(settings: Settings) -> None:
    plain = Client(settings.replace(prepare_statements=False),
                   registry=Registry.from_classes(*workers.ALL))
    plain.setup()
    plain.enqueue("record", n=2)
    with plain.pool.borrow() as conn:
        assert prepared_statements(conn) == []
    plain.close()


# -- the lease token: (id, attempt, runner, running), checked for each id of a batch ----

BATCH_WRITES = ("complete_delete", "complete_keep", "hand_back")
#: What each batch write leaves of a row whose token matched (None: deleted).
WRITTEN_STATE = {"complete_delete": None, "complete_keep": "completed", "hand_back": "available"}


def claim_all(cur: Any, queries: Queries, runner_id: str, limit: int) -> dict[int, int]:
    """Claim up to ``limit`` record jobs for ``runner_id``: their attempts by id."""
    queries.execute(cur, "claim", {"workers": ["record"], "limits": [limit],
                                   "leases": [300.0], "queues": [], "runner_id": runner_id})
    return {row["id"]: row["attempt"] for row in cur.fetchall()}


@pytest.mark.parametrize("statement", BATCH_WRITES)
def test_a_batch_writes_only_the_rows_whose_lease_token_matches(
    client: Client, db: Any, dsn: str, statement: Statement
) -> None:
    client.enqueue_many("record", [{"n": n} for n in range(5)])
    queries = Queries("jobs")
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        claimed = claim_all(cur, queries, "a", 5)
        mine, wrong_attempt, cancelled, other_runner, also_mine = sorted(claimed)
        client.cancel(cancelled)
        query(db, "UPDATE jobs SET runner_id = 'b' WHERE id = %s", other_runner)
        attempts = {**claimed, wrong_attempt: claimed[wrong_attempt] + 1}
        queries.execute(cur, statement, {"ids": list(attempts), "runner_id": "a",
                                         "attempts": list(attempts.values()),
                                         "result_ids": [], "results": []})
        written = sorted(row["id"] for row in cur.fetchall())
    assert written == [mine, also_mine]
    states = dict(query(db, "SELECT id, state FROM jobs"))
    assert [states.get(mine), states.get(also_mine)] == [WRITTEN_STATE[statement]] * 2
    assert [states[wrong_attempt], states[cancelled], states[other_runner]] == [
        "running", "cancelled", "running"]


@pytest.mark.parametrize("statement", BATCH_WRITES)
def test_a_batch_write_waits_for_a_concurrent_write_then_checks_the_token_again(
    client: Client, db: Any, dsn: str, statement: Statement
) -> None:
    # One job is being rescued and the other's lease extended by transactions that have
    # not committed yet: the batch waits for them, then writes only the job still its.
    client.enqueue_many("record", [{"n": n} for n in range(2)])
    queries = Queries("jobs")
    other = psycopg2.connect(dsn)
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        claimed = claim_all(cur, queries, "a", 2)
        rescued, extended = sorted(claimed)
        query(other, "UPDATE jobs SET state = 'available', expires_at = NULL, runner_id = NULL"
                     " WHERE id = %s", rescued)
        query(other, "UPDATE jobs SET expires_at = now() + interval '1 hour' WHERE id = %s",
              extended)
        written: list[int] = []

        def write() -> None:
            queries.execute(cur, statement, {"ids": list(claimed), "runner_id": "a",
                                             "attempts": list(claimed.values()),
                                             "result_ids": [], "results": []})
            written.extend(row["id"] for row in cur.fetchall())

        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: query(
            db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            conn.get_backend_pid()), what="the batch to wait for the row lock")
        other.commit()
        writer.join(10)
    other.close()
    assert written == [extended]
    states = dict(query(db, "SELECT id, state FROM jobs"))
    assert (states[rescued], states.get(extended)) == ("available", WRITTEN_STATE[statement])


def test_a_prepared_statement_survives_a_column_added_by_a_migration(
    client: Client, db: Any, dsn: str
) -> None:
    # "SELECT *" prepared before the column came: PostgreSQL refuses the cached plan
    # ("cached plan must not change result type"); it is prepared again, once.
    job = client.enqueue("record", n=1)
    queries = Queries("jobs")
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        queries.execute(cur, "get_job", {"id": job.id})
        assert "note" not in cur.fetchone()
        query(db, "ALTER TABLE jobs ADD COLUMN note text")
        queries.execute(cur, "get_job", {"id": job.id})
        assert cur.fetchone()["note"] is None


@pytest.mark.parametrize("prepare", [True, False])
def test_relaxed_commits_relax_the_runners_statements_only_and_leave_nothing_set(
    client: Client, dsn: str, prepare: bool
) -> None:
    # The claim's transaction commits without waiting for the WAL flush; an enqueue's
    # still does; and SET LOCAL leaves no setting on the (perhaps pooled) session.
    job = client.enqueue("record", n=1)
    relaxed = Queries("jobs", relaxed_commits=True)
    with contextlib.closing(connect(dsn, prepare=prepare)) as conn, conn.cursor() as cur:
        relaxed.execute(cur, "claim", {"workers": ["record"], "limits": [5], "leases": [30.0],
                                        "queues": [], "runner_id": "r"})
        assert cur.query.startswith(b"SET LOCAL synchronous_commit TO off; ")
        assert [row["id"] for row in cur.fetchall()] == [job.id]
        relaxed.execute(cur, "get_job", {"id": job.id})
        assert b"synchronous_commit" not in cur.query
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone()["synchronous_commit"] == "on"
        Queries("jobs").execute(cur, "touch", {"id": job.id, "attempt": 1, "lease": 30.0,
                                               "runner_id": "r"})
        assert b"synchronous_commit" not in cur.query
