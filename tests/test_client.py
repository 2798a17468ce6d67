"""The Python API: enqueue in both forms, enqueue_many, unique_key, transactions,
cancel, retry, prune, and every bad input (which must write nothing)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

import backy_gevent as backy
import backy_gevent.client as client_module
from backy_gevent.client import QUIET_CHECK_EVERY, Client, encode_args
from backy_gevent.db.queries import channel_name
from backy_gevent.errors import BadJobArgs, BadOption
from backy_gevent.worker import Registry, WorkerError
from tests import workers
from tests.conftest import ROOT, notified_since, query


def count_jobs(db: Any) -> int:
    return int(query(db, "SELECT count(*) FROM jobs")[0][0])


def nested(depth: int) -> dict[str, Any]:
    """A dict ``depth`` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


class CountingConnection(psycopg2.extensions.connection):
    """A real connection that records every statement its cursors execute."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements: list[Any] = []

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        base = kwargs.pop("cursor_factory", None) or self.cursor_factory
        base = base or psycopg2.extensions.cursor
        statements = self.statements

        class Counting(base):  # type: ignore[misc, valid-type]
            def execute(self, query: Any, vars: Any = None) -> Any:
                statements.append(query)
                return super().execute(query, vars)

            def executemany(self, query: Any, vars_list: Any) -> Any:
                statements.append(query)
                return super().executemany(query, vars_list)

        return super().cursor(*args, cursor_factory=Counting, **kwargs)


@pytest.fixture
def caller_conn(dsn: str) -> Iterator[Any]:
    """The application's own connection, in a transaction (not autocommit)."""
    conn = psycopg2.connect(dsn, connection_factory=CountingConnection)
    yield conn
    conn.close()


# -- enqueue --------------------------------------------------------------------------


def test_enqueue_seed_form_returns_the_job(client: Client, db: Any) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    job = client.enqueue(workers.Record, name="foo bar")
    assert isinstance(job.id, int)
    assert job.worker == "record"
    assert job.args == {"name": "foo bar"}
    assert job.queue == "default"
    assert job.priority == 0
    assert job.state == "available"
    assert job.attempt == 0
    assert job.errors == []
    assert job.max_attempts == client.settings.retry_count + 1
    assert job.run_at >= before - datetime.timedelta(seconds=1)
    row = query(db, "SELECT worker, args, state FROM jobs WHERE id = %s", job.id)
    assert row == [("record", {"name": "foo bar"}, "available")]


def test_enqueue_args_dict_kwargs_and_options(client: Client, db: Any) -> None:
    job = client.enqueue(
        "record", {"name": "x", "queue": "an arg, not the option"}, extra=1, priority=5,
        queue="mail",
    )
    assert job.args == {"name": "x", "queue": "an arg, not the option", "extra": 1}
    assert (job.queue, job.priority) == ("mail", 5)
    stored = query(db, "SELECT args, queue, priority FROM jobs WHERE id = %s", job.id)
    assert stored == [({"name": "x", "queue": "an arg, not the option", "extra": 1}, "mail", 5)]


def test_args_survive_the_round_trip(client: Client) -> None:
    args = {
        "text": "ünïcødé ✓ 'quotes' \"and\" \\ backslashes",
        "nested": {"list": [1, 2.5, None, True, False], "empty": {}},
        "big": 2**53,
        "negative": -1.25,
        "emoji": "\U0001f600",  # written as a surrogate pair, which jsonb takes
        "not a nul": "\\u0000",  # a backslash and five characters
        "deep": nested(500),
    }
    job = client.enqueue(workers.Record, args)
    assert client.get_job(job.id).args == args  # type: ignore[union-attr]


def test_worker_settings_become_job_fields(client: Client) -> None:
    job = client.enqueue(workers.Fail)
    assert job.max_attempts == workers.Fail.retry_count + 1  # the worker's own retry_count
    sleep = client.enqueue(workers.Sleep, seconds=0)
    assert sleep.max_attempts == 1


def test_delay_and_run_at(client: Client, db: Any) -> None:
    now = query(db, "SELECT clock_timestamp()")[0][0]
    delayed = client.enqueue(workers.Record, delay=30)
    assert now + datetime.timedelta(seconds=30) <= delayed.run_at
    assert delayed.run_at <= now + datetime.timedelta(seconds=32)
    at = datetime.datetime(2100, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert client.enqueue(workers.Record, run_at=at).run_at == at


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": 1, "run_at": datetime.datetime.now(datetime.timezone.utc)}, "not both"),
        ({"run_at": datetime.datetime(2030, 1, 1)}, "timezone"),
        ({"delay": "soon"}, "delay"),
        ({"delay": float("nan")}, "delay"),
        ({"delay": float("inf")}, "delay must be a number of seconds from 0 to 10000000000"),
        ({"delay": -5}, "delay must be a number of seconds from 0 to 10000000000, not -5"),
        ({"delay": 10**12}, "delay"),  # past the year 9999: Python could not read it back
        ({"delay": 10**400}, "delay"),  # too big for a float
        ({"queue": ""}, "queue"),
        ({"queue": "mail\x00"}, r"queue 'mail\\x00' can't be stored: it holds a NUL"),
        ({"queue": "mail\udcff"}, "queue .* lone surrogate"),
        ({"unique_key": "k\x00"}, r"unique_key 'k\\x00' can't be stored: it holds a NUL"),
        # Indexed: a longer one could be written, then never cancelled nor failed.
        ({"queue": "q" * 501}, "queue must be at most 500 characters, not 501"),
        ({"unique_key": "k" * 501}, "unique_key must be at most 500 characters, not 501"),
        ({"priority": "high"}, "priority"),
        ({"priority": 2**40}, "priority must be an integer from -2147483648 to 2147483647"),
        ({"priority": -(2**31) - 1}, "priority"),
    ],
)
def test_bad_options_raise_and_write_nothing(
    client: Client, db: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadOption, match=message):
        client.enqueue(workers.Record, **options)
    assert count_jobs(db) == 0
    assert issubclass(BadOption, ValueError)  # what the API documents


def test_options_at_their_limits_are_kept(client: Client) -> None:
    assert client.enqueue(workers.Record, priority=2**31 - 1).priority == 2**31 - 1
    assert client.enqueue(workers.Record, priority=-(2**31)).priority == -(2**31)
    assert client.enqueue(workers.Record, delay=0).state == "available"
    random = "".join(chr(0x10000 + n * 7919 % 0xFFFF) for n in range(500))  # 2,000 bytes
    longest = client.enqueue(workers.Record, queue=random, unique_key=random)
    assert client.cancel(longest.id) is not None  # its index entries fit in every state
    far = client.enqueue(workers.Record, delay=10**10)
    assert far.run_at.year > datetime.datetime.now().year + 300


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"ok": 1, "when": datetime.datetime(2020, 1, 1)}, "when"),
        ({"amount": decimal.Decimal("1.5")}, "amount"),
        ({"tags": {"a", "b"}}, "tags"),
        ({"ratio": float("nan")}, "ratio"),
        ({"blob": b"bytes"}, "blob"),
        ({"deep": {"inner": [object()]}}, "deep"),
        # What Python reads from JSON, or holds, but jsonb can't:
        ({"ok": 1, "huge": json.loads("1e999")}, "huge"),  # inf
        ({"n": [1, {"m": float("-inf")}]}, "n"),
        ({"text": "a\x00b"}, "text"),
        ({"nested": {"k\x00": 1}}, "nested"),
        ({"key\x00": 1}, "key\x00"),
        ({"lone": "\ud800"}, "lone"),
        ({"bytes": b"\xff".decode("utf-8", "surrogateescape")}, "bytes"),
        ({"digits": 10**5000}, "digits"),
        ({"deep": nested(5000)}, "deep"),
    ],
)
def test_non_json_args_raise_type_error_naming_the_key(
    client: Client, db: Any, args: dict[str, Any], key: str
) -> None:
    with pytest.raises(BadJobArgs, match=re.escape(f"job arg {key!r} can't be stored as JSON")):
        client.enqueue(workers.Record, args)
    with pytest.raises(BadJobArgs, match=re.escape(repr(key))):
        encode_args(args)
    assert count_jobs(db) == 0
    assert issubclass(BadJobArgs, TypeError)  # what the API documents


def test_non_json_arg_in_a_batch_writes_none_of_it(client: Client, db: Any) -> None:
    batch = [{"n": 1}, {"n": 2}, {"n": 3, "when": datetime.date(2020, 1, 1)}]
    with pytest.raises(TypeError, match="'when'"):
        client.enqueue_many(workers.Record, batch)
    assert count_jobs(db) == 0


def test_args_must_be_a_dict(client: Client, db: Any) -> None:
    with pytest.raises(TypeError, match="dict"):
        client.enqueue(workers.Record, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.enqueue(workers.Record, {1: "int key"})  # type: ignore[dict-item]
    assert count_jobs(db) == 0


def test_unknown_worker_raises_clearly_and_writes_nothing(client: Client, db: Any) -> None:
    with pytest.raises(WorkerError, match="unknown worker 'no_such_worker'") as caught:
        client.enqueue("no_such_worker", n=1)
    assert "record" in str(caught.value)  # lists what is registered

    class Unnamed(backy.Worker):
        def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
            pass

    with pytest.raises(WorkerError, match="Unnamed"):
        client.enqueue(Unnamed)
    with pytest.raises(WorkerError):
        client.enqueue_many("no_such_worker", [{"n": 1}])
    assert count_jobs(db) == 0


# -- transactions ---------------------------------------------------------------------


def test_enqueue_in_the_callers_transaction(client: Client, db: Any, caller_conn: Any) -> None:
    job = client.enqueue(workers.Record, n=1, connection=caller_conn)
    # Not visible to others before the caller commits...
    assert count_jobs(db) == 0
    caller_conn.rollback()
    # ...and gone with the rollback.
    assert count_jobs(db) == 0
    assert client.get_job(job.id) is None

    kept = client.enqueue(workers.Record, n=2, connection=caller_conn)
    assert count_jobs(db) == 0
    caller_conn.commit()
    assert query(db, "SELECT id, args FROM jobs") == [(kept.id, {"n": 2})]


def test_enqueue_many_in_the_callers_transaction(
    client: Client, db: Any, caller_conn: Any
) -> None:
    with caller_conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int)")
        cur.execute("INSERT INTO orders VALUES (1)")
    client.enqueue_many(workers.Record, [{"n": 1}, {"n": 2}], connection=caller_conn)
    caller_conn.rollback()
    assert count_jobs(db) == 0
    assert query(db, "SELECT to_regclass('orders')") == [(None,)]


def test_delay_counts_from_the_call_not_the_transaction_start(
    client: Client, caller_conn: Any
) -> None:
    with caller_conn.cursor() as cur:
        cur.execute("SELECT now()")
        transaction_start = cur.fetchone()[0]
    time.sleep(0.5)  # make the transaction old; this waits for no outcome
    with caller_conn.cursor() as cur:
        cur.execute("SELECT clock_timestamp()")
        called_at = cur.fetchone()[0]
    job = client.enqueue(workers.Record, delay=10, connection=caller_conn)
    caller_conn.commit()
    assert called_at - transaction_start >= datetime.timedelta(seconds=0.5)
    assert job.run_at - called_at >= datetime.timedelta(seconds=10)
    assert job.run_at - called_at < datetime.timedelta(seconds=10.5)


def test_a_job_due_now_is_due_from_its_enqueue_time(client: Client, db: Any) -> None:
    # Neither run_at nor a delay (or a delay of 0): run_at is the row's enqueued_at, the
    # transaction's start (insert_job_now), and the job is due at once.
    jobs = [client.enqueue(workers.Record, {"n": 1}),
            client.enqueue(workers.Record, {"n": 2}, delay=0)]
    rows = query(db, "SELECT id, run_at, enqueued_at, run_at <= now() FROM jobs ORDER BY id")
    assert rows == [(job.id, job.enqueued_at, job.enqueued_at, True) for job in jobs]
    assert all(job.run_at == job.enqueued_at for job in jobs)


def test_enqueue_many_is_one_statement(client: Client, db: Any, caller_conn: Any) -> None:
    batch = [{"n": n, "name": f"job {n}"} for n in range(50)]
    jobs = client.enqueue_many(workers.Record, batch, connection=caller_conn)
    assert len(caller_conn.statements) == 1
    caller_conn.commit()
    assert [job.args for job in jobs] == batch  # input order
    assert len({job.id for job in jobs}) == 50
    stored = dict(query(db, "SELECT id, args FROM jobs"))
    assert stored == {job.id: job.args for job in jobs}


def test_enqueue_many_with_fresh_unique_keys_is_one_statement(
    client: Client, caller_conn: Any
) -> None:
    keys = [f"k{n}" for n in range(10)]
    jobs = client.enqueue_many(
        workers.Record, [{"n": n} for n in range(10)], unique_keys=keys, connection=caller_conn
    )
    assert len(caller_conn.statements) == 1
    assert [job.unique_key for job in jobs] == keys
    caller_conn.rollback()


def test_enqueued_jobs_are_the_jobs_get_job_returns(client: Client) -> None:
    # enqueue builds each Job from what it sent and a few returned columns, not from the
    # row: it must hold what the row holds, jsonb's key order and number types included.
    args = {"zeta": 1, "a": 2.5, "big": 1e16, "neg": -0.0, "nested": {"yy": [1, (2, 3)]},
            "ключ": "значение", "emoji": "\U0001f600", "none": None}
    jobs = [
        client.enqueue(workers.Record, args),  # one job
        *client.enqueue_many(workers.Record, [args, {"n": 1}], delay=30, priority=-(2**31),
                             queue="q"),
        *client.enqueue_many(workers.Record, [args, {"n": 2}, {"n": 3}],
                             unique_keys=["u", None, "u"]),
        client.enqueue(workers.Record, {"n": 4}, unique_key="u"),
    ]
    assert [job.inserted for job in jobs] == [True] * 5 + [False] * 2
    assert jobs[5].id == jobs[6].id == jobs[3].id
    for job in jobs:
        stored = client.get_job(job.id)
        assert stored is not None
        assert job == dataclasses.replace(stored, inserted=job.inserted)
        assert list(job.args) == list(stored.args)
        assert [type(value) for value in job.args.values()] == [
            type(value) for value in stored.args.values()]


def test_an_enqueue_call_sends_one_notification_whatever_its_size(
    client: Client, db: Any, dsn: str
) -> None:
    # The listener's contract: {"worker", "queue", "in"} per worker and queue written.
    [(oid,)] = query(db, "SELECT 'jobs'::regclass::oid")
    channel = channel_name(oid)
    listener = psycopg2.connect(dsn)
    listener.autocommit = True
    query(listener, f'LISTEN "{channel}"')
    client.enqueue_many(workers.Record, [{"n": n} for n in range(200)], delay=60)
    client.enqueue(workers.Record, {"n": 1}, queue="q")
    client.enqueue(workers.Record, {"n": 2}, unique_key="k")
    client.enqueue(workers.Record, {"n": 3}, unique_key="k")  # a duplicate: nothing new
    payloads = notified_since(listener, db, channel)
    listener.close()
    news = [json.loads(payload) for payload in payloads]
    assert [(n["worker"], n["queue"]) for n in news] == [
        ("record", "default"), ("record", "q"), ("record", "default")]
    assert 50 < news[0]["in"] <= 60
    assert news[1]["in"] == news[2]["in"] == 0


def test_enqueues_are_quiet_while_a_runner_that_serves_them_follows_a_stream(
    client: Client, db: Any, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due-now enqueue sends no notification while a runner that serves its worker and
    queue marks itself as following a stream (quiet_until current); after one that found
    no such runner, the client notifies without asking for QUIET_CHECK_EVERY (made
    longer here, so that a busy machine's pause between two calls can't outlast it)."""
    check_every = 10 * QUIET_CHECK_EVERY
    monkeypatch.setattr(client_module, "QUIET_CHECK_EVERY", check_every)
    [(oid,)] = query(db, "SELECT 'jobs'::regclass::oid")
    listener = psycopg2.connect(dsn)
    listener.autocommit = True
    query(listener, f'LISTEN "{channel_name(oid)}"')

    def heard() -> list[tuple[str, str]]:
        """The (worker, queue) of each notification since the last call, in order."""
        payloads = notified_since(listener, db, channel_name(oid))
        return [(n["worker"], n["queue"]) for n in map(json.loads, payloads)]

    def runner_follows(queues: list[str], seconds: float = 5) -> None:
        query(db, "DELETE FROM jobs_runners")
        query(db, "INSERT INTO jobs_runners (id, hostname, pid, workers, queues, quiet_until,"
                  " quiet_workers) VALUES ('r', 'h', 1, %s, %s, clock_timestamp()"
                  " + make_interval(secs => %s), %s)",
              ["record"], queues, seconds, ["record"])

    client.enqueue(workers.Record)  # asks, finds no runner following: notifies
    runner_follows(["default"])
    client.enqueue(workers.Record)  # within QUIET_CHECK_EVERY: notifies without asking
    assert heard() == [("record", "default")] * 2
    time.sleep(check_every)
    client.enqueue(workers.Record)  # asks: quiet
    client.enqueue(workers.Record)  # asks again (a runner follows): quiet
    client.enqueue(workers.Record, queue="other")  # a queue it doesn't serve
    client.enqueue(workers.Sleep)  # a worker it doesn't follow
    client.enqueue(workers.Record, delay=5)  # not due now
    client.enqueue(workers.Record, connection=(conn := psycopg2.connect(dsn)))  # a caller's
    conn.commit()
    conn.close()
    assert heard() == [("record", "other"), ("sleep", "default"), ("record", "default"),
                       ("record", "default")]
    runner_follows([], seconds=-1)  # its mark lapsed (it died)
    client.enqueue(workers.Record)
    assert heard() == [("record", "default")]
    listener.close()
    assert count_jobs(db) == 9


def test_enqueue_is_one_statement(client: Client, caller_conn: Any) -> None:
    client.enqueue(workers.Record, {"n": 1}, connection=caller_conn)
    client.enqueue(workers.Record, {"n": 2}, unique_key="fresh", connection=caller_conn)
    assert len(caller_conn.statements) == 2
    caller_conn.rollback()


def test_a_workers_defaults_are_its_current_ones_and_options_do_not_stick(
    client: Client, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client keeps each worker's default options made (``_defaults_of``): what it
    writes must still be what the class says now, and an option given to one call must
    not leak into the next."""
    first = client.enqueue(workers.Record, n=1)
    delayed = client.enqueue("record", n=2, delay=60, priority=5, queue="mail")
    again = client.enqueue("record", n=3)
    monkeypatch.setattr(workers.Record, "queue", "reports")
    monkeypatch.setattr(workers.Record, "priority", 3)
    monkeypatch.setattr(workers.Record, "retry_count", 7)
    changed = client.enqueue(workers.Record, n=4)
    by_name = client.enqueue("record", n=5)
    rows = query(db, "SELECT args->>'n', queue, priority, max_attempts, run_at > enqueued_at"
                     " FROM jobs ORDER BY id")
    default_attempts = client.settings.retry_count + 1
    assert rows == [
        ("1", "default", 0, default_attempts, False),
        ("2", "mail", 5, default_attempts, True),
        ("3", "default", 0, default_attempts, False),
        ("4", "reports", 3, 8, False),
        ("5", "reports", 3, 8, False),
    ]
    assert [(job.queue, job.priority, job.max_attempts, job.run_at == job.enqueued_at)
            for job in (first, delayed, again, changed, by_name)] == [
        (queue, priority, attempts, not later) for _, queue, priority, attempts, later in rows]


def test_kept_defaults_past_their_bound_are_made_again(
    client: Client, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "KNOWN_WORKERS", 2)
    for worker in ["record", workers.Fail, workers.Record, "sleep", workers.Fail, "record"]:
        client.enqueue(worker, seconds=0)
        assert len(client._defaults) <= 2
    rows = query(db, "SELECT worker, max_attempts FROM jobs ORDER BY id")
    record_attempts = client.settings.retry_count + 1
    assert rows == [("record", record_attempts), ("fail", 3), ("record", record_attempts),
                    ("sleep", 1), ("fail", 3), ("record", record_attempts)]


def test_enqueue_many_empty(client: Client, db: Any) -> None:
    assert client.enqueue_many(workers.Record, []) == []
    assert count_jobs(db) == 0


def test_module_level_functions_use_the_default_client(client: Client, db: Any) -> None:
    backy.configure(dsn=client.settings.dsn, imports=["tests.workers:Record"])
    try:
        job = backy.enqueue(workers.Record, name="foo bar")
        more = backy.enqueue_many("record", [{"n": 1}, {"n": 2}])
        assert backy.cancel(more[0].id).state == "cancelled"  # type: ignore[union-attr]
        assert backy.retry(more[0].id).state == "available"  # type: ignore[union-attr]
    finally:
        backy.configure()
    assert query(db, "SELECT args FROM jobs WHERE id = %s", job.id) == [({"name": "foo bar"},)]
    assert count_jobs(db) == 3


def test_import_connects_to_nothing_and_imports_neither_gevent_nor_psycopg2() -> None:
    code = (
        "import sys, backy_gevent\n"
        "loaded = sorted(m for m in ('gevent', 'psycopg2', 'psycogreen') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert backy_gevent.Worker and backy_gevent.Job\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={"BACKY_DSN": "postgresql://nobody@127.0.0.1:1/none", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr


def test_client_without_a_database_fails_on_use_not_on_creation() -> None:
    client = Client(dsn=None)
    with pytest.raises(RuntimeError, match="no database configured"):
        client.enqueue(workers.Record)
    client.close()


# -- unique_key -----------------------------------------------------------------------


def test_unique_key_returns_the_existing_job_and_writes_nothing(
    client: Client, db: Any
) -> None:
    first = client.enqueue(workers.Record, {"n": 1}, unique_key="report-42")
    second = client.enqueue(workers.Record, {"n": 2}, unique_key="report-42")
    assert second.id == first.id
    assert second.args == {"n": 1}
    assert query(db, "SELECT count(*) FROM jobs WHERE unique_key = 'report-42'") == [(1,)]
    other = client.enqueue(workers.Record, {"n": 3}, unique_key="report-43")
    assert other.id != first.id
    # Once the holder is no longer waiting or running, the key is free again.
    client.cancel(first.id)
    third = client.enqueue(workers.Record, {"n": 4}, unique_key="report-42")
    assert third.id != first.id
    assert third.args == {"n": 4}


def test_unique_key_while_running(client: Client, db: Any) -> None:
    job = client.enqueue(workers.Record, unique_key="busy")
    query(
        db,
        "UPDATE jobs SET state = 'running', attempt = 1, runner_id = 'r',"
        " expires_at = now() + interval '1 minute' WHERE id = %s",
        job.id,
    )
    again = client.enqueue(workers.Record, unique_key="busy")
    assert again.id == job.id
    assert again.state == "running"
    assert count_jobs(db) == 1


def test_unique_keys_in_one_batch(client: Client, db: Any) -> None:
    existing = client.enqueue(workers.Record, {"n": 0}, unique_key="a")
    jobs = client.enqueue_many(
        workers.Record,
        [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}],
        unique_keys=["a", "b", None, "b"],
    )
    assert jobs[0].id == existing.id
    assert jobs[1].id == jobs[3].id
    assert jobs[2].unique_key is None
    assert len({job.id for job in jobs}) == 3
    assert count_jobs(db) == 3
    with pytest.raises(ValueError, match="unique_keys"):
        client.enqueue_many(workers.Record, [{"n": 1}], unique_keys=["x", "y"])


def test_inserted_says_what_the_call_did(client: Client) -> None:
    first = client.enqueue(workers.Record, unique_key="once")
    again = client.enqueue(workers.Record, unique_key="once")
    plain = client.enqueue(workers.Record)
    assert (first.inserted, again.inserted, plain.inserted) == (True, False, True)
    batch = client.enqueue_many(workers.Record, [{}, {}, {}], unique_keys=["once", "new", "new"])
    assert [job.inserted for job in batch] == [False, True, False]
    assert batch[1].id == batch[2].id


def test_unique_for_counts_finished_jobs_enqueued_within_the_window(
    client: Client, db: Any
) -> None:
    done = client.enqueue(workers.Record, {"n": 1}, unique_key="digest")
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = %s",
          done.id)
    # Without a window a finished holder frees the key; within one it still holds it.
    fresh = client.enqueue(workers.Record, {"n": 2}, unique_key="digest", unique_for=3600)
    assert (fresh.id, fresh.inserted, fresh.state) == (done.id, False, "completed")
    query(db, "UPDATE jobs SET enqueued_at = now() - interval '2 hours' WHERE id = %s",
          done.id)
    later = client.enqueue(workers.Record, {"n": 3}, unique_key="digest", unique_for=3600)
    assert later.inserted and later.id != done.id
    # A waiting holder wins over an older finished one of the same key.
    again = client.enqueue(workers.Record, {"n": 4}, unique_key="digest", unique_for=3 * 3600)
    assert (again.id, again.inserted) == (later.id, False)
    assert count_jobs(db) == 2


def test_unique_for_is_a_worker_default(client: Client, db: Any) -> None:
    class Daily(workers.Record):
        name = "record"
        unique_for = 86400

    first = client.enqueue(Daily, unique_key="day")
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = %s",
          first.id)
    assert client.enqueue(Daily, unique_key="day").id == first.id
    # The call's own value overrides the worker's; 0 means no window.
    assert client.enqueue(Daily, unique_key="day", unique_for=0).inserted


@pytest.mark.parametrize("bad", [-1, "soon", float("nan"), True])
def test_bad_unique_for_is_refused_and_nothing_is_written(
    client: Client, db: Any, bad: Any
) -> None:
    with pytest.raises(BadOption, match="unique_for must be a number of seconds"):
        client.enqueue(workers.Record, unique_key="k", unique_for=bad)
    assert count_jobs(db) == 0


def test_worker_with_a_bad_unique_for_is_refused() -> None:
    class Bad(workers.Record):
        name = "bad_unique"
        unique_for = -5

    with pytest.raises(WorkerError, match="unique_for=-5"):
        Registry.from_classes(Bad)


# -- cancel, retry, prune ---------------------------------------------------------------


def make_failed(db: Any, job_id: int, attempts: int) -> None:
    errors = [
        {"attempt": n, "error": "builtins.ValueError", "message": f"boom {n}", "traceback": ""}
        for n in range(1, attempts + 1)
    ]
    query(
        db,
        "UPDATE jobs SET state = 'failed', attempt = %s, max_attempts = %s,"
        " errors = %s::jsonb, finished_at = now() WHERE id = %s",
        attempts, attempts, json.dumps(errors), job_id,
    )


def test_cancel(client: Client, db: Any) -> None:
    job = client.enqueue(workers.Record, delay=60)
    cancelled = client.cancel(job.id)
    assert cancelled is not None
    assert cancelled.state == "cancelled"
    assert cancelled.finished_at is not None
    assert client.cancel(job.id) is None  # already cancelled
    assert client.cancel(10**12) is None  # no such job
    assert client.cancel(2**63) is None  # no bigint id: still no such job, not an error
    assert query(db, "SELECT state FROM jobs WHERE id = %s", job.id) == [("cancelled",)]


def test_retry_a_failed_job_keeps_history_and_gets_fresh_retries(
    client: Client, db: Any
) -> None:
    job = client.enqueue(workers.Fail)
    make_failed(db, job.id, 3)
    retried = client.retry(job.id)
    assert retried is not None
    assert retried.state == "available"
    assert retried.attempt == 3
    assert retried.max_attempts == 3 + workers.Fail.retry_count + 1
    assert [e["message"] for e in retried.errors] == ["boom 1", "boom 2", "boom 3"]
    assert retried.run_at <= datetime.datetime.now(datetime.timezone.utc)
    assert retried.finished_at is None


def test_retry_a_cancelled_job_and_not_a_waiting_one(client: Client) -> None:
    job = client.enqueue(workers.Record)
    assert client.retry(job.id) is None  # waiting: nothing to retry
    client.cancel(job.id)
    retried = client.retry(job.id)
    assert retried is not None and retried.state == "available"
    assert client.retry(10**12) is None
    assert client.retry(2**63) is None
    assert client.get_job(-(2**63) - 1) is None


def test_prune_deletes_old_finished_rows_only(client: Client, db: Any) -> None:
    old, recent, failed, waiting = (client.enqueue(workers.Record, n=n) for n in range(4))
    query(
        db,
        "UPDATE jobs SET state = 'completed', finished_at = now() - interval '2 hours'"
        " WHERE id = %s",
        old.id,
    )
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = %s", recent.id)
    make_failed(db, failed.id, 1)
    query(db, "UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE id = %s", failed.id)
    assert client.prune(older_than=3600) == 1
    assert client.get_job(old.id) is None
    assert client.prune() == 1  # the recent completed one
    assert client.prune(states=["completed", "failed"]) == 1
    assert sorted(row[0] for row in query(db, "SELECT id FROM jobs")) == [waiting.id]


@pytest.mark.parametrize("older_than", [-1, float("nan"), float("inf"), 1e300, "1 hour"])
def test_prune_refuses_a_bad_age(client: Client, db: Any, older_than: Any) -> None:
    job = client.enqueue(workers.Record)
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = %s", job.id)
    with pytest.raises(BadOption, match="older_than must be a number of seconds from 0 to"):
        client.prune(older_than=older_than)
    assert count_jobs(db) == 1


def test_stats_counts_by_worker_queue_and_state(client: Client, db: Any) -> None:
    client.enqueue_many(workers.Record, [{"n": 1}, {"n": 2}])
    client.enqueue(workers.Record, queue="mail", delay=60)
    cancelled = client.enqueue(workers.Fail)
    client.cancel(cancelled.id)
    stats = {(r["worker"], r["queue"], r["state"]): r for r in client.stats()}
    assert stats[("record", "default", "available")]["jobs"] == 2
    assert stats[("record", "default", "available")]["oldest_wait"] >= 0
    assert stats[("record", "mail", "available")]["jobs"] == 1
    assert stats[("record", "mail", "available")]["oldest_wait"] is None  # not due yet
    assert stats[("fail", "default", "cancelled")]["jobs"] == 1


def test_retry_while_another_job_holds_the_unique_key(client: Client, db: Any) -> None:
    first = client.enqueue(workers.Record, {"n": 1}, unique_key="nightly")
    client.cancel(first.id)
    second = client.enqueue(workers.Record, {"n": 2}, unique_key="nightly")
    with pytest.raises(ValueError, match="unique_key 'nightly'"):
        client.retry(first.id)
    assert query(db, "SELECT state FROM jobs WHERE id = %s", first.id) == [("cancelled",)]
    client.cancel(second.id)
    assert client.retry(first.id).state == "available"  # type: ignore[union-attr]


def test_libpq_environment_variables_stand_in_for_a_dsn(
    dsn: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters = psycopg2.extensions.parse_dsn(dsn)
    for name, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                           ("dbname", "PGDATABASE"), ("options", "PGOPTIONS")):
        if parameters.get(name):
            monkeypatch.setenv(variable, parameters[name])
    monkeypatch.delenv("BACKY_DSN", raising=False)
    client = Client(registry=Registry.from_classes(*workers.ALL))
    assert client.settings.dsn is None
    client.setup()
    job = client.enqueue("record", n=1)
    assert query(db, "SELECT args FROM jobs WHERE id = %s", job.id) == [({"n": 1},)]
    client.close()


def test_without_any_dsn_the_client_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("BACKY_DSN", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    client = Client(registry=Registry.from_classes(*workers.ALL))
    with pytest.raises(RuntimeError, match="BACKY_DSN"):
        client.enqueue("record")
