"""The raw floors: the least each path's work costs, as tight psycopg2 loops on the
bench's table, run on the same server in the same run as backy-gevent's own figures.

They write rows a runner could run (same table, same columns) and claim them with the
shape of the runner's claim statement (``claim`` in ``backy_gevent/sql/queries.sql``:
the ids picked in priority, run_at, id order ``FOR UPDATE SKIP LOCKED``, then updated by
primary key), but without anything backy-gevent adds: no RETURNING of whole rows into
objects, no hooks, no pool. Like backy-gevent's, the statements are prepared on the
server once per connection (planning costs as much as running them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
from psycopg2 import sql

from backy_gevent.cli.bench import scratch
from backy_gevent.cli.bench.loops import Tick, paced, wait_until
from backy_gevent.cli.bench.workers import Noop

_TABLE = sql.Identifier(scratch.TABLE)
#: The columns an enqueue sets; the others keep their defaults.
BULK_INSERT = sql.SQL("""
    INSERT INTO {table} (worker, args, queue, priority, max_attempts)
    SELECT w, a, q, p, m
    FROM unnest(%(workers)s::text[], %(args)s::jsonb[], %(queues)s::text[],
                %(priorities)s::int[], %(max_attempts)s::int[]) AS t(w, a, q, p, m)
""").format(table=_TABLE)
#: One job and its notification in one transaction (one statement in autocommit).
INSERT_NOTIFY = sql.SQL("""
    WITH job AS (
        INSERT INTO {table} (worker, args, queue, priority, max_attempts)
        VALUES (%(worker)s, %(args)s, 'default', 0, 4)
        RETURNING id
    )
    SELECT id, pg_notify(%(channel)s, %(payload)s) FROM job
""").format(table=_TABLE)
#: The runner's claim, for one worker and every queue.
CLAIM = sql.SQL("""
    UPDATE {table} t
    SET state = 'running', attempt = t.attempt + 1, runner_id = 'bench-floor',
        attempted_at = now(), expires_at = now() + interval '60 seconds'
    WHERE t.id = ANY(ARRAY(
        SELECT id FROM {table}
        WHERE state = 'available' AND worker = %(worker)s AND run_at <= now()
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING t.*
""").format(table=_TABLE)
COMPLETE_DELETE = sql.SQL("DELETE FROM {table} WHERE id = ANY(%(ids)s)").format(table=_TABLE)
COMPLETE_KEEP = sql.SQL("""
    UPDATE {table}
    SET state = 'completed', finished_at = now(), expires_at = NULL, runner_id = NULL
    WHERE id = ANY(%(ids)s)
""").format(table=_TABLE)
#: Jobs claimed at once by the drain floor.
CLAIM_BATCH = 100
#: The worker of the latency's and the drain's floors, which no runner of the bench
#: serves: those floors take turns with the runners' figures while the runners are up,
#: and the runners must not claim their jobs.
FLOOR_WORKER = "bench_floor"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A statement prepared on the server under ``name``; ``params`` are its
    ``%(param)s`` names and their types, in order."""

    name: str
    statement: sql.Composed
    params: tuple[tuple[str, str], ...]

    def texts(self, context: Any) -> tuple[str, str]:
        """The PREPARE statement, and the EXECUTE that runs it with ``%(param)s``
        values (``context``: a connection or cursor to quote identifiers with)."""
        text = self.statement.as_string(context)
        for number, (param, _) in enumerate(self.params, 1):
            text = text.replace(f"%({param})s", f"${number}")
        types = ", ".join(kind for _, kind in self.params)
        return f"PREPARE {self.name} ({types}) AS {text}", self._execute_text()

    def _execute_text(self) -> str:
        given = ", ".join(f"%({param})s::{kind}" for param, kind in self.params)
        return f"EXECUTE {self.name} ({given})"

    def prepare(self, cur: Any) -> None:
        cur.execute(self.texts(cur)[0])

    def execute(self, cur: Any, values: dict[str, Any]) -> None:
        cur.execute(self._execute_text(), values)


def _prepared(cur: Any, *statements: Prepared) -> None:
    for statement in statements:
        statement.prepare(cur)


_BULK = Prepared("bench_bulk", BULK_INSERT, (
    ("workers", "text[]"), ("args", "jsonb[]"), ("queues", "text[]"),
    ("priorities", "int[]"), ("max_attempts", "int[]")))
_INSERT_NOTIFY = Prepared("bench_insert_notify", INSERT_NOTIFY, (
    ("worker", "text"), ("args", "jsonb"), ("channel", "text"), ("payload", "text")))
_CLAIM = Prepared("bench_claim", CLAIM, (("worker", "text"), ("limit", "int")))
_DELETE = Prepared("bench_delete", COMPLETE_DELETE, (("ids", "bigint[]"),))
_KEEP = Prepared("bench_keep", COMPLETE_KEEP, (("ids", "bigint[]"),))


def _bulk_params(first: int, count: int, worker: str = Noop.name) -> dict[str, Any]:
    return {
        "workers": [worker] * count,
        "args": [json.dumps({"n": n}) for n in range(first, first + count)],
        "queues": ["default"] * count,
        "priorities": [0] * count,
        "max_attempts": [4] * count,
    }


def insert_rows(conn: Any, jobs: int, batch: int = 1000, worker: str = Noop.name) -> None:
    """Insert ``jobs`` jobs of ``worker`` (by default the bench's no-op), ``batch`` rows
    a statement, on ``conn`` (the caller decides the transactions)."""
    with conn.cursor() as cur:
        for first in range(0, jobs, batch):
            cur.execute(BULK_INSERT, _bulk_params(first, min(batch, jobs - first), worker))


def bulk_insert(dsn: str, jobs: int, tick: Tick) -> float:
    """Rows a second of 1,000-row ``unnest`` INSERTs, one transaction each."""
    with contextlib.closing(scratch.connect(dsn)) as conn, conn.cursor() as cur:
        _prepared(cur, _BULK)
        started = time.monotonic()
        for first in range(0, jobs, 1000):
            _BULK.execute(cur, _bulk_params(first, min(1000, jobs - first)))
            tick(f"{first:,}/{jobs:,} rows")
        return jobs / (time.monotonic() - started)


def _notify_params(channel: str, worker: str = Noop.name) -> dict[str, Any]:
    payload = json.dumps({"worker": worker, "queue": "default", "in": 0.0})
    return {"worker": worker, "args": "{}", "channel": channel, "payload": payload}


@contextlib.contextmanager
def insert_notify(dsn: str, channel: str) -> Iterator[Callable[[], None]]:
    """The single enqueue floor's step: one INSERT and its NOTIFY in one transaction (one
    statement, one round trip), on a connection of its own."""
    params = _notify_params(channel)
    with contextlib.closing(scratch.connect(dsn)) as conn, conn.cursor() as cur:
        _prepared(cur, _INSERT_NOTIFY)
        yield lambda: _INSERT_NOTIFY.execute(cur, params)


def claim_and_complete(dsn: str, jobs: int, keep: bool, tick: Tick) -> float:
    """Jobs a second emptied from a committed backlog of ``jobs`` by one connection that
    claims 100 at a time (the runner's claim) and deletes them (or, with ``keep``, marks
    them completed as ``delete_finished_jobs = false`` does), each its own transaction.
    The jobs are ``FLOOR_WORKER``'s: runners may be up meanwhile, idle."""
    complete = _KEEP if keep else _DELETE
    with contextlib.closing(scratch.connect(dsn, autocommit=False)) as conn:
        insert_rows(conn, jobs, worker=FLOOR_WORKER)
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            _prepared(cur, _CLAIM, complete)
            started = time.monotonic()
            done = 0
            while True:
                _CLAIM.execute(cur, {"worker": FLOOR_WORKER, "limit": CLAIM_BATCH})
                ids = [row[0] for row in cur.fetchall()]
                if not ids:
                    break
                complete.execute(cur, {"ids": ids})
                done += len(ids)
                tick(f"{done:,}/{jobs:,} jobs")
            return done / (time.monotonic() - started)


@contextlib.contextmanager
def wake_and_claim(dsn: str, channel: str,
                   rate: float) -> Iterator[Callable[[int, Tick], list[float]]]:
    """The latency floor's loop, set up once: one connection inserts and notifies, one
    LISTENs on ``channel``, and a third claims when woken (then deletes). It yields
    ``measure(samples, tick)``: the seconds from each of ``samples`` INSERT + NOTIFY
    calls, ``rate`` a second, to its claim. The connections and their prepared
    statements last across calls, as a runner's do (PostgreSQL plans each of a prepared
    statement's first five runs afresh).

    The jobs are ``FLOOR_WORKER``'s, and ``channel`` should be one no runner listens on:
    a runner may be up meanwhile, idle.
    """
    claimed: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        inserter, listener, claimer = (
            stack.enter_context(contextlib.closing(scratch.connect(dsn))) for _ in range(3))
        listener.cursor().execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        params = _notify_params(channel, FLOOR_WORKER)
        cur = stack.enter_context(inserter.cursor())
        _prepared(cur, _INSERT_NOTIFY)
        with claimer.cursor() as claim_cur:
            _prepared(claim_cur, _CLAIM, _DELETE)

        def claim_when_woken() -> None:
            with claimer.cursor() as claim_cur:
                while True:
                    gevent.socket.wait_read(listener.fileno())
                    listener.poll()
                    listener.notifies.clear()
                    _CLAIM.execute(claim_cur, {"worker": FLOOR_WORKER, "limit": CLAIM_BATCH})
                    ids = [row[0] for row in claim_cur.fetchall()]
                    now = time.time()
                    claimed.update((job_id, now) for job_id in ids)
                    _DELETE.execute(claim_cur, {"ids": ids})

        def measure(samples: int, tick: Tick) -> list[float]:
            sent: dict[int, float] = {}

            def insert() -> None:
                started = time.time()
                _INSERT_NOTIFY.execute(cur, params)
                sent[cur.fetchone()[0]] = started

            paced(rate, samples, insert, tick)
            wait_until(lambda: claimed.keys() >= sent.keys(), 30, "the last claims", tick,
                       check=lambda: _raise_if_failed(claiming))
            return [claimed[job_id] - started for job_id, started in sent.items()]

        claiming = gevent.spawn(claim_when_woken)
        try:
            yield measure
        finally:
            claiming.kill()


#: A raw claimer, a process with no backy-gevent code: with "listen" it LISTENs and
#: waits to be woken, with "poll" nothing wakes it; then, at most once per ``gap``
#: seconds, it claims up to ``limit`` of ``worker``'s jobs (the floor's claim, prepared
#: as the floors' statements are), prints each claimed id and the time when ``stamp`` is
#: "stamp", and deletes them.
_RAW_CLAIMER = r"""
import select, sys, time
import psycopg2
dsn, channel, prepare_claim, claim, prepare_delete, delete = sys.argv[1:7]
worker, mode, stamp = sys.argv[7], sys.argv[8], sys.argv[11]
gap, limit = float(sys.argv[9]), int(sys.argv[10])
listener = psycopg2.connect(dsn)
listener.autocommit = True
if mode == "listen":
    listener.cursor().execute(f'LISTEN "{channel}"')
conn = psycopg2.connect(dsn)
conn.autocommit = True
cur = conn.cursor()
cur.execute(prepare_claim)
cur.execute(prepare_delete)
print("ready", flush=True)
last = 0.0
while True:
    if mode == "listen":
        select.select([listener], [], [], 1.0)
    if gap > 0:
        time.sleep(max(0.0, last + gap - time.monotonic()))
        last = time.monotonic()
    listener.poll()
    listener.notifies.clear()
    cur.execute(claim, {"worker": worker, "limit": limit})
    ids = [row[0] for row in cur.fetchall()]
    now = time.time()
    if stamp == "stamp":
        for job_id in ids:
            print(job_id, f"{now:.6f}", flush=True)
    if ids:
        cur.execute(delete, {"ids": ids})
"""


def raw_claimer(dsn: str, channel: str, *, mode: str, gap: float, limit: int,
                stamp: bool = False, worker: str = Noop.name) -> subprocess.Popen[str]:
    """Start a raw claimer (``_RAW_CLAIMER``) of ``worker``'s jobs and wait until it is
    ready (listening, with "listen"); the caller kills it. Its stdout holds what it
    stamped."""
    with contextlib.closing(scratch.connect(dsn)) as conn:
        statements = [*_CLAIM.texts(conn), *_DELETE.texts(conn)]
    process = subprocess.Popen(
        [sys.executable, "-c", _RAW_CLAIMER, dsn, channel, *statements, worker, mode,
         str(gap), str(limit), "stamp" if stamp else "-"],
        stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()  # "ready"
    return process


def wake_and_claim_apart(dsn: str, channel: str, rate: float, samples: int,
                         tick: Tick) -> list[float]:
    """``wake_and_claim`` with the LISTEN and the claim in a process of their own, as a
    runner's are: asleep until the notification comes, where the bench's floor process
    has just inserted (``scripts/latency_floor_split.py`` compares the two). Its jobs
    are ``FLOOR_WORKER``'s, as ``wake_and_claim``'s are."""
    claimer = raw_claimer(dsn, channel, mode="listen", gap=0.0, limit=CLAIM_BATCH,
                          stamp=True, worker=FLOOR_WORKER)
    sent: dict[int, float] = {}
    params = _notify_params(channel, FLOOR_WORKER)
    try:
        with contextlib.closing(scratch.connect(dsn)) as inserter, inserter.cursor() as cur:
            _prepared(cur, _INSERT_NOTIFY)

            def insert() -> None:
                started = time.time()
                _INSERT_NOTIFY.execute(cur, params)
                sent[cur.fetchone()[0]] = started

            paced(rate, samples, insert, tick)
        time.sleep(0.5)  # the last claims
    finally:
        claimer.kill()
        output, _ = claimer.communicate()
    claimed = {int(job): float(at) for job, at in (line.split() for line in output.splitlines())}
    return [claimed[job] - started for job, started in sent.items() if job in claimed]


def _raise_if_failed(greenlet: Any) -> None:
    if greenlet.exception is not None:
        raise greenlet.exception
