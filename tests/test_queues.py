"""Paused queues in the client: the table, the NOTIFY at commit, and deleting jobs."""

from __future__ import annotations

import select
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from backy_gevent.db.queries import channel_name
from backy_gevent.errors import BadOption
from tests.conftest import query, wait_until


@pytest.fixture
def listener(dsn: str, client: Client) -> Any:
    """A connection that LISTENs on the jobs table's channel."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    [(oid,)] = query(conn, "SELECT 'jobs'::regclass::oid")
    query(conn, f'LISTEN "{channel_name(oid)}"')
    yield conn
    conn.close()


def payloads(conn: Any, wait: float = 0.0) -> list[str]:
    select.select([conn], [], [], wait)
    conn.poll()
    found = [n.payload for n in conn.notifies]
    conn.notifies.clear()
    return found


def test_pause_and_resume_tell_the_runners(client: Client, db: Any, listener: Any) -> None:
    client.pause("mail")
    assert wait_until(lambda: payloads(listener, 0.2)) == ["pause:mail"]
    [first] = client.paused_queues()
    assert first["queue"] == "mail" and first["paused_seconds"] >= 0
    client.pause("mail")  # again: still paused since the first time
    assert [q["paused_at"] for q in client.paused_queues()] == [first["paused_at"]]
    assert wait_until(lambda: payloads(listener, 0.2)) == ["pause:mail"]
    assert client.resume("mail") is True
    assert wait_until(lambda: payloads(listener, 0.2)) == ["resume:mail"]
    assert client.resume("mail") is False
    assert payloads(listener, 0.3) == []
    assert client.paused_queues() == []
    assert query(db, "SELECT queue, paused, paused_at FROM jobs_queues") == [("mail", False, None)]


def test_the_notify_waits_for_the_commit(client: Client, dsn: str, listener: Any) -> None:
    # Client.pause commits at once; the statement itself notifies only at commit.
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(client.queries.composed("pause_queue"),
                    {"queue": "slow", "table": client.queries.quoted_table})
        assert payloads(listener, 0.3) == []
        conn.commit()
    conn.close()
    assert wait_until(lambda: payloads(listener, 0.2)) == ["pause:slow"]


@pytest.mark.parametrize("queue", ["", None, "x" * 501, "nul\x00"])
def test_a_queue_name_that_cannot_be_stored_is_refused(client: Client, queue: Any) -> None:
    with pytest.raises(BadOption):
        client.pause(queue)
    assert client.paused_queues() == []


def test_delete_leaves_running_jobs(client: Client, db: Any) -> None:
    waiting, running, failed = (job.id for job in client.enqueue_many("record", [{}] * 3))
    query(db, "UPDATE jobs SET state = 'running', attempt = 1, runner_id = 'r',"
              " expires_at = now() + interval '1 minute' WHERE id = %s", running)
    query(db, "UPDATE jobs SET state = 'failed', finished_at = now() WHERE id = %s", failed)
    assert client.delete([waiting, running, failed, 10**30]) == sorted([waiting, failed])
    assert query(db, "SELECT id FROM jobs") == [(running,)]
    assert client.delete([]) == []
