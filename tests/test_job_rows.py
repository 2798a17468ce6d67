"""How rows become Jobs: the runner's fast paths give what the plain ones give.

A claimed job is built by ``Job.from_tuples`` (by position: the claims return their
columns in the order of Job's fields) and its ``jsonb`` columns are read by
``read_json`` (json's scanner alone): both exist for speed (README, Speed), so both are
held here against ``Job.from_row`` and ``json.loads``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import pytest

from backy_gevent.client import Client
from backy_gevent.db.connections import ConnectionPool, connect, read_json
from backy_gevent.db.queries import Statement
from backy_gevent.job import ROW_ORDER, Job
from backy_gevent.runner.fetcher import claim_jobs
from tests import workers
from tests.conftest import query


@pytest.mark.parametrize("text", [
    "{}", "[]", '{"n": 1}', '[{"a": [1, 2.5, null, true, false]}, "x"]', '"text"', "1",
    "-2.5e3", "null", "true", ' {"padded": 1} ', '{"a": "\\u00e9\\ud83d\\ude00"}',
])
def test_read_json_reads_what_json_loads_reads(text: str) -> None:
    assert read_json(text) == json.loads(text)
    assert type(read_json(text)) is type(json.loads(text))


def test_connections_read_jsonb_values_and_arrays_with_read_json(dsn: str) -> None:
    with contextlib.closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("""SELECT NULL::jsonb AS null_, '{"b": [1, 2.5], "a": "x"}'::jsonb AS obj,"""
                    """ ARRAY['{}'::jsonb, '[1]'::jsonb, NULL] AS arr""")
        assert cur.fetchone() == {"null_": None, "obj": {"a": "x", "b": [1, 2.5]},
                                  "arr": [{}, [1], None]}


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "[1,]"])
def test_read_json_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        read_json(text)


def test_a_claimed_job_is_the_job_its_row_reads_as(client: Client, db: Any, dsn: str) -> None:
    enqueued = client.enqueue_many(workers.Record, [
        {"n": n, "nested": {"list": [1, 2.5, None, True]}, "text": "ünï ✓"} for n in range(3)
    ], priority=3, queue="mail")
    query(db, "UPDATE jobs SET errors = '[{\"attempt\": 1, \"error\": \"boom\"}]'"
              " WHERE id = %s", enqueued[0].id)
    pool = ConnectionPool(dsn, size=1, application_name="test", prepare=True)
    try:
        claimed = claim_jobs(pool, client.queries, "runner-1",
                             {client.registry.get("record"): 10}, queues=["mail"])
    finally:
        pool.close()
    assert [job.id for job in claimed] == [job.id for job in enqueued]
    with contextlib.closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM jobs ORDER BY id")
        rows = [Job.from_row(row) for row in cur.fetchall()]
    for job, row in zip(claimed, rows, strict=True):
        # The lease by this process's clock is set on the claimed job only.
        assert dataclasses.replace(job, _lease_ends=None) == row
        assert job._lease_ends is not None and row._lease_ends is None
        assert (job.inserted, job._toucher) == (True, None)
        assert repr(dataclasses.replace(job, _lease_ends=None)) == repr(row)
    assert claimed[0].errors == [{"attempt": 1, "error": "boom"}]
    assert claimed[1].errors == [] and claimed[1].errors is not claimed[2].errors


@pytest.mark.parametrize("statement", ["claim", "claim_one"])
def test_the_claims_return_the_columns_in_the_order_of_the_job_fields(
    client: Client, dsn: str, statement: Statement
) -> None:
    """Else every claimed job would be built by name, the slow way."""
    with contextlib.closing(connect(dsn)) as conn, conn.cursor() as cur:
        client.queries.execute(cur, statement, {
            "workers": ["record"], "limits": [1], "leases": [30.0], "queues": [],
            "runner_id": "runner-1"})
        assert [column.name for column in cur.description] == ROW_ORDER
    # And every column of the table that is a Job field is among them.
    with contextlib.closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM jobs LIMIT 0")
        table = {column.name for column in cur.description}
    assert table & {field.name for field in dataclasses.fields(Job)} == set(ROW_ORDER)


def test_from_tuples_leaves_out_unknown_columns_and_defaults_missing_ones() -> None:
    row = {field.name: index for index, field in enumerate(dataclasses.fields(Job))
           if not field.name.startswith("_") and field.name not in ("result", "inserted")}
    [job] = Job.from_tuples([*row, "added_by_a_newer_migration"], [(*row.values(), "x")])
    assert not hasattr(job, "added_by_a_newer_migration")
    assert job == Job.from_row(row)
    assert (job.result, job.inserted) == (None, True)
