"""Queries: every named statement composes for a table, and runs prepared or plain."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db.connections import connect
from backy_gevent.db.queries import STATEMENTS, Queries, _read_blocks
from backy_gevent.worker import Registry
from tests import workers


def prepared_statements(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        return [row["statement"] for row in cur.fetchall()]


def test_every_block_quotes_the_table_name() -> None:
    queries = Queries("my_jobs")
    for name in ("insert_jobs", "claim", "complete_delete", "fail", "rescue", "cancel"):
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
    # insert_jobs casts its arrays (jsonb[], timestamptz[]); EXECUTE must cast the same.
    queries = Queries("jobs")
    params = {
        "workers": ["record", "record"], "args": ['{"a": 1}', '{"b": [2]}'],
        "queues": ["default", "q2"], "priorities": [0, 5], "max_attempts": [4, 4],
        "run_ats": [None, None], "delays": [0.0, 30.0], "unique_keys": [None, "k"],
    }
    with contextlib.closing(connect(dsn, prepare=True)) as conn, conn.cursor() as cur:
        queries.execute(cur, "insert_jobs", params)
        rows = cur.fetchall()
    assert [(r["args"], r["queue"], r["priority"], r["unique_key"]) for r in rows] == [
        ({"a": 1}, "default", 0, None), ({"b": [2]}, "q2", 5, "k"),
    ]


def test_prepare_statements_false_runs_plain_sql(settings: Settings) -> None:
    plain = Client(settings.replace(prepare_statements=False),
                   registry=Registry.from_classes(*workers.ALL))
    plain.setup()
    plain.enqueue("record", n=2)
    with plain.pool.borrow() as conn:
        assert prepared_statements(conn) == []
    plain.close()
