"""Migrations: the table and its objects, idempotence, concurrent setup, quoting."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db import schema
from backy_gevent.job import Job
from backy_gevent.worker import Registry
from tests import workers
from tests.conftest import query


def migrate(dsn: str, table_name: str = "jobs") -> list[schema.Migration]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn:
        return schema.migrate(conn, table_name)


def columns(db: Any, table: str) -> dict[str, str]:
    rows = query(
        db,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        table,
    )
    return dict(rows)


def test_setup_creates_the_table_and_records_migrations(dsn: str, db: Any) -> None:
    with contextlib.closing(psycopg2.connect(dsn)) as conn:
        assert [m.version for m in schema.pending(conn, "jobs")] == [
            m.version for m in schema.migrations()
        ]
    applied = migrate(dsn)
    assert [m.version for m in applied] == [m.version for m in schema.migrations()]
    assert applied[0].version == 1
    recorded = query(db, "SELECT version, name FROM jobs_migrations ORDER BY version")
    assert recorded == [(m.version, m.name) for m in applied]
    with contextlib.closing(psycopg2.connect(dsn)) as conn:
        assert schema.pending(conn, "jobs") == []


def test_columns_carry_the_job_field_names(dsn: str, db: Any) -> None:
    migrate(dsn)
    found = columns(db, "jobs")
    job_fields = {f.name for f in dataclasses.fields(Job) if not f.name.startswith("_")}
    # Job.inserted says what an enqueue call did; no row holds it.
    assert job_fields - {"inserted"} <= set(found), job_fields - set(found)
    assert "inserted" not in found
    assert found["id"] == "bigint"
    assert found["args"] == "jsonb"
    assert found["errors"] == "jsonb"
    assert found["run_at"] == "timestamp with time zone"


def test_setup_is_idempotent(dsn: str, db: Any) -> None:
    assert migrate(dsn)
    assert migrate(dsn) == []
    assert migrate(dsn) == []
    count = query(db, "SELECT count(*) FROM jobs_migrations")[0][0]
    assert count == len(schema.migrations())


def test_concurrent_setup_applies_each_migration_once(dsn: str, db: Any) -> None:
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def setup() -> None:
        try:
            with contextlib.closing(psycopg2.connect(dsn)) as conn:
                barrier.wait()
                results.append(schema.migrate(conn, "jobs"))
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=setup) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not [r for r in results if isinstance(r, Exception)], results
    applied = [m.version for r in results for m in r]
    assert sorted(applied) == [m.version for m in schema.migrations()]


def test_claim_index_is_partial_on_available(dsn: str, db: Any) -> None:
    migrate(dsn)
    indexes = dict(
        query(
            db,
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() AND tablename = 'jobs'",
        )
    )
    assert "jobs_fetch_idx" in indexes
    assert "WHERE (state = 'available'::text)" in indexes["jobs_fetch_idx"]


def test_lease_index_is_partial_on_a_lease(dsn: str, db: Any) -> None:
    # Not on state = 'running': a statement that checks a lease token by primary key
    # must not be able to read every running job through it (see tests/test_plans.py).
    migrate(dsn)
    [(definition,)] = query(
        db,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        " AND indexname = 'jobs_lease_idx'",
    )
    assert definition.endswith("(expires_at) WHERE (expires_at IS NOT NULL)"), definition


def test_constraints_hold_invariants(dsn: str, db: Any) -> None:
    migrate(dsn)
    bad_rows = [
        "INSERT INTO jobs (worker, state) VALUES ('record', 'exploded')",
        "INSERT INTO jobs (worker, args) VALUES ('record', '[1, 2]')",
        "INSERT INTO jobs (worker) VALUES ('')",
        # running needs a lease and a runner
        "INSERT INTO jobs (worker, state) VALUES ('record', 'running')",
    ]
    for statement in bad_rows:
        with pytest.raises(psycopg2.IntegrityError):
            query(db, statement)
    assert query(db, "SELECT count(*) FROM jobs")[0][0] == 0


@pytest.mark.parametrize("table_name", ["order", "select", "x" * 45])
def test_table_names_are_quoted_identifiers(dsn: str, db: Any, table_name: str) -> None:
    """A reserved word or the longest allowed name works end to end (setup, enqueue,
    claim), which pasting names into SQL strings would break."""
    settings = Settings(dsn=dsn, table_name=table_name)
    client = Client(settings, registry=Registry.from_classes(*workers.ALL))
    try:
        assert client.setup()
        assert client.setup() == []
        job = client.enqueue(workers.Record, n=1)
        from backy_gevent.db.queries import Queries

        queries = Queries(table_name)
        with client.pool.borrow() as conn, conn.cursor() as cur:
            cur.execute(
                queries.composed("claim"),
                {"workers": ["record"], "limits": [5], "leases": [10.0], "queues": [],
                 "runner_id": "test"},
            )
            claimed = cur.fetchall()
        assert [row["id"] for row in claimed] == [job.id]
    finally:
        client.close()
    tables = {
        row[0]
        for row in query(
            db, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    }
    assert {table_name, f"{table_name}_migrations", f"{table_name}_runners"} <= tables


def test_two_tables_in_one_schema_are_independent(dsn: str, db: Any) -> None:
    assert migrate(dsn, "jobs")
    assert migrate(dsn, "other_jobs")
    assert query(db, "SELECT count(*) FROM other_jobs_migrations")[0][0] == len(
        schema.migrations()
    )
