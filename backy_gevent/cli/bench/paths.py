"""backy-gevent's own figures: the public enqueue API and real runners, on the bench's
table, each the counterpart of one floor in ``floors``."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from backy_gevent.cli.bench import scratch
from backy_gevent.cli.bench.loops import TICK_EVERY, Tick, paced, repeat_for, wait_until
from backy_gevent.cli.bench.runners import check_alive
from backy_gevent.cli.bench.workers import Noop, Stamp
from backy_gevent.client import Client

#: Longest wait for runners to finish what a measurement gave them, in seconds.
DRAIN_TIMEOUT = 600.0


def bulk_enqueue(client: Client, jobs: int, tick: Tick) -> float:
    """Jobs a second through ``Client.enqueue_many``, 1,000 jobs a call (each call its
    own transaction)."""
    started = time.monotonic()
    for first in range(0, jobs, 1000):
        client.enqueue_many(Noop, [{"n": n} for n in range(first, min(jobs, first + 1000))])
        tick(f"{first:,}/{jobs:,} jobs")
    return jobs / (time.monotonic() - started)


def enqueue_step(client: Client) -> Callable[[], object]:
    """One ``Client.enqueue`` of a no-op job: the single enqueue's step."""
    return lambda: client.enqueue(Noop, {})


def single_enqueue(client: Client, seconds: float, tick: Tick, clients: int = 1) -> float:
    """Jobs a second through ``Client.enqueue``, one job per transaction, from
    ``clients`` greenlets (with no runner, this is also the steady stream's floor)."""
    count, elapsed = repeat_for(seconds, enqueue_step(client), tick, clients)
    return count / elapsed


def stream(client: Client, conn: Any, processes: list[Any], clients: int, seconds: float,
           tick: Tick) -> float:
    """Jobs a second enqueued one per transaction by ``clients`` greenlets while the
    runners work, counted until the runners have run the last of them."""
    started = time.monotonic()
    count, _ = repeat_for(seconds, lambda: client.enqueue(Noop, {}), tick, clients)
    finished(conn, processes, tick)
    return count / (time.monotonic() - started)


def finished(conn: Any, processes: list[Any], tick: Tick) -> None:
    """Wait until the runners have finished every job (and recorded it)."""
    wait_until(lambda: not scratch.any_pending(conn), DRAIN_TIMEOUT, "the runners to finish",
               tick, check=lambda: check_alive(processes))


def drain(client: Client, conn: Any, processes: list[Any], jobs: int, tick: Tick) -> float:
    """Jobs a second that idle runners take to empty a backlog of ``jobs`` no-op jobs,
    committed at once (in one transaction, with ``enqueue_many``)."""
    with contextlib.closing(scratch.connect(client.pool.dsn, autocommit=False)) as backlog:
        for first in range(0, jobs, 1000):
            client.enqueue_many(Noop, [{"n": n} for n in range(first, min(jobs, first + 1000))],
                                connection=backlog)
        backlog.commit()
    started = time.monotonic()
    told = [started]

    def drained() -> bool:
        if time.monotonic() - told[0] >= TICK_EVERY:  # a count only now and then
            told[0] = time.monotonic()
            tick(f"{jobs - scratch.pending(conn):,}/{jobs:,} jobs run")
        return not scratch.any_pending(conn)

    wait_until(drained, DRAIN_TIMEOUT, "the backlog to drain", lambda _: None,
               check=lambda: check_alive(processes))
    return jobs / (time.monotonic() - started)


def latency(client: Client, processes: list[Any], stamps: str, rate: float, samples: int,
            tick: Tick) -> list[float]:
    """Seconds from each of ``samples`` ``Client.enqueue`` calls to its ``perform``
    starting in an idle runner, at ``rate`` jobs a second; ``stamps`` is the file the
    runner writes starts to."""
    sent: dict[int, float] = {}

    def enqueue() -> None:
        called = time.time()
        sent[client.enqueue(Stamp, {"to": stamps}).id] = called

    paced(rate, samples, enqueue, tick)
    started: dict[int, float] = {}

    def all_started() -> bool:
        if os.path.exists(stamps):
            with open(stamps) as lines:
                started.update((int(job), float(at))
                               for job, at in (line.split() for line in lines if line[-1:] == "\n"))
        return started.keys() >= sent.keys()

    wait_until(all_started, 60, "the last jobs to start", tick,
               check=lambda: check_alive(processes))
    return [started[job_id] - called for job_id, called in sent.items()]
