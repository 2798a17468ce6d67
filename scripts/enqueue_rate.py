#!/usr/bin/env python3
"""How fast the client enqueues, each path held against its raw floor in the same run.

    .venv/bin/python scripts/enqueue_rate.py [--dsn DSN] [--rounds 31] [--profile bulk|single]

In a scratch schema (set up with the package's migrations, dropped at the end) it times:

- bulk: ``Client.enqueue_many`` of 1,000 jobs a call, against floors, raw 1,000-row
  INSERTs of the same columns into the same table (psycopg2, autocommit, no RETURNING;
  the floor's loop turns the same dicts into JSON): ``INSERT ... SELECT FROM unnest(...)``
  of a jsonb[] of the args, the other columns constants, and the same from
  ``jsonb_array_elements`` of one JSON array text (what the client sends now). Neither
  sends the NOTIFY that enqueue_many must (at commit it takes a lock that every
  notifying transaction on the server queues for): a third floor is the unnest INSERT
  with one NOTIFY in its transaction;
- single: ``Client.enqueue``, one job per transaction, against the floor of one raw
  transaction holding an INSERT and a NOTIFY, sent as one message (one round trip).

Each path runs a short round in turn with the others (the order reversed every other
round), so that other load on the machine falls on all alike; the figure and floor
printed are the medians over the rounds, in jobs per second. ``--profile bulk`` (or
``single``) instead runs the client's path (20,000 jobs, or 2,000) under cProfile and
prints where its time goes. The server is ``--dsn``, else BACKY_TEST_DSN, else the local
one at postgresql://root@127.0.0.1:5432/test. The script stands alone: ``backy-gevent
bench`` measures every path; this one only the enqueues, in detail.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.worker import Registry, Worker

BATCH = 1_000


class SendEmail(Worker):
    """The worker enqueued (never run here)."""

    name = "send_email"

    def perform(self, job: Any, args: dict[str, Any]) -> None:
        pass


def job_args(i: int) -> dict[str, Any]:
    """A small, typical payload."""
    return {"user_id": i, "email": f"user{i}@example.com", "template": "welcome"}


RAW_BULK = """
INSERT INTO jobs (worker, args, queue, priority, max_attempts, run_at)
SELECT %s, a, %s, %s, %s, clock_timestamp() FROM unnest(%s::jsonb[]) AS t(a)
"""

RAW_BULK_JSON = """
INSERT INTO jobs (worker, args, queue, priority, max_attempts, run_at)
SELECT %s, a, %s, %s, %s, clock_timestamp() FROM jsonb_array_elements(%s::jsonb) AS t(a)
"""

RAW_SINGLE = """
BEGIN;
INSERT INTO jobs (worker, args, queue, priority, max_attempts, run_at)
VALUES (%s, %s::jsonb, %s, %s, %s, clock_timestamp());
SELECT pg_notify(%s, %s);
COMMIT
"""


def raw_bulk(conn: Any, calls: int, channel: str | None = None) -> float:
    """Jobs per second of raw 1,000-row unnest INSERTs; with ``channel``, each with one
    NOTIFY on it in its transaction."""
    statement = RAW_BULK
    extra: tuple[str, ...] = ()
    if channel is not None:
        payload = json.dumps({"worker": "send_email", "queue": "default", "in": 0.0})
        statement = "BEGIN;" + RAW_BULK + "; SELECT pg_notify(%s, %s); COMMIT"
        extra = (channel, payload)
    started = time.perf_counter()
    with conn.cursor() as cur:
        for call in range(calls):
            encoded = [json.dumps(job_args(call * BATCH + i)) for i in range(BATCH)]
            cur.execute(statement, ("send_email", "default", 0, 4, encoded, *extra))
    return calls * BATCH / (time.perf_counter() - started)


def raw_bulk_json(conn: Any, calls: int) -> float:
    """Jobs per second of raw 1,000-row INSERTs from one JSON array."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        for call in range(calls):
            encoded = json.dumps([job_args(call * BATCH + i) for i in range(BATCH)])
            cur.execute(RAW_BULK_JSON, ("send_email", "default", 0, 4, encoded))
    return calls * BATCH / (time.perf_counter() - started)


def raw_single(conn: Any, jobs: int, channel: str) -> float:
    """Jobs per second of raw INSERT + NOTIFY transactions, one job each."""
    payload = json.dumps({"worker": "send_email", "queue": "default", "in": 0.0})
    started = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(jobs):
            cur.execute(RAW_SINGLE, ("send_email", json.dumps(job_args(i)), "default", 0, 4,
                                     channel, payload))
    return jobs / (time.perf_counter() - started)


def client_bulk(client: Client, calls: int) -> float:
    """Jobs per second of ``Client.enqueue_many``, 1,000 jobs a call."""
    started = time.perf_counter()
    for call in range(calls):
        client.enqueue_many(SendEmail, [job_args(call * BATCH + i) for i in range(BATCH)])
    return calls * BATCH / (time.perf_counter() - started)


def client_single(client: Client, jobs: int) -> float:
    """Jobs per second of ``Client.enqueue``, one job per transaction."""
    started = time.perf_counter()
    for i in range(jobs):
        client.enqueue(SendEmail, job_args(i))
    return jobs / (time.perf_counter() - started)


def empty(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE jobs")
        cur.execute("VACUUM ANALYZE jobs")


def measure(conn: Any, rounds: int, *paths: Callable[[], float]) -> list[float]:
    """The median rate of each path over ``rounds`` short rounds.

    The paths take turns, in the opposite order every other round, so that load from
    elsewhere on the machine (which comes in bursts) falls on all of them alike, and the
    median leaves out the rounds a burst hit.
    """
    empty(conn)
    rates: list[list[float]] = [[] for _ in paths]
    for turn in range(rounds):
        order = list(range(len(paths)))
        for i in reversed(order) if turn % 2 else order:
            rates[i].append(paths[i]())
    return [statistics.median(measured) for measured in rates]


def profile(what: Callable[[], float]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    what()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)


def with_search_path(dsn: str, schema: str) -> str:
    if "://" not in dsn:
        return f"{dsn} options='-csearch_path={schema}'"
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get(
        "BACKY_TEST_DSN", "postgresql://root@127.0.0.1:5432/test"))
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--bulk-calls", type=int, default=2,
                        help="enqueue_many calls (of 1,000 jobs) a round")
    parser.add_argument("--single-jobs", type=int, default=100,
                        help="single enqueues a round")
    parser.add_argument("--profile", choices=["bulk", "single"])
    arguments = parser.parse_args()
    schema = f"backy_enqueue_rate_{os.getpid()}"
    admin = psycopg2.connect(arguments.dsn)
    admin.autocommit = True
    scoped = with_search_path(arguments.dsn, schema)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        client = Client(Settings(dsn=scoped), registry=Registry.from_classes(SendEmail))
        client.setup()
        raw = psycopg2.connect(scoped)
        raw.autocommit = True
        with raw.cursor() as cur:
            cur.execute("SELECT 'jobs'::regclass::oid")
            channel = f"backy_{cur.fetchone()[0]}"
        # Warm both: connections made, statements prepared, caches filled.
        raw_bulk(raw, 2)
        raw_bulk_json(raw, 2)
        raw_bulk(raw, 2, channel)
        raw_single(raw, 200, channel)
        client_bulk(client, 2)
        client_single(client, 200)
        bulk_calls, single_jobs = arguments.bulk_calls, arguments.single_jobs
        if arguments.profile == "bulk":
            profile(lambda: client_bulk(client, 20))
            return
        if arguments.profile == "single":
            profile(lambda: client_single(client, 2_000))
            return
        bulk, unnest_floor, json_floor, notify_floor = measure(
            raw, arguments.rounds, lambda: client_bulk(client, bulk_calls),
            lambda: raw_bulk(raw, bulk_calls), lambda: raw_bulk_json(raw, bulk_calls),
            lambda: raw_bulk(raw, bulk_calls, channel))
        single, single_floor = measure(
            raw, arguments.rounds, lambda: client_single(client, single_jobs),
            lambda: raw_single(raw, single_jobs, channel))
        print(f"{'path':<32} {'figure':>8} {'floor':>8} {'ratio':>6}  floor")
        for path, figure, floor, floor_name in (
            ("enqueue_many, 1,000 jobs a call", bulk, unnest_floor,
             "raw 1,000-row unnest INSERT"),
            ("", bulk, json_floor, "raw 1,000-row INSERT from one JSON array"),
            ("", bulk, notify_floor, "raw 1,000-row unnest INSERT + one NOTIFY"),
            ("enqueue, one job a transaction", single, single_floor,
             "raw INSERT + NOTIFY transaction"),
        ):
            print(f"{path:<32} {figure:>8,.0f} {floor:>8,.0f} {figure / floor:>6.2f}"
                  f"  {floor_name}")
        print(f"(jobs per second; medians of {arguments.rounds} rounds)")
        raw.close()
        client.close()
    finally:
        with contextlib.suppress(psycopg2.Error), admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


if __name__ == "__main__":
    main()
