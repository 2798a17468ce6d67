"""A stream of enqueues: runners follow it on their own and stop listening meanwhile.

Under a stream (jobs enqueued one per transaction faster than a runner's claims may
start), the notifications say nothing the next claim would not find, and listening to
them costs every enqueue (README, "A steady stream"). The runner then claims every gap
on its own, with its listener UNLISTENed (``backy_runner_listening`` 0), and listens again
once its claims find nothing. These tests check what that must not cost: every job runs
once; what the unheard notifications would have said still happens (a job not due yet
runs when due; a running job that is cancelled stops); and after the stream a job is
woken by its notification again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.worker import Registry
from tests import workers
from tests.acceptance.scraping import free_port, scrape, value
from tests.acceptance.test_runner import count_jobs, runs, seconds, state
from tests.conftest import RunnerProcess, wait_until

Runner = Callable[..., RunnerProcess]
#: The default poll interval: a listening runner's safety poll is 10 of them, so a job
#: found within a fraction of one was woken by a notification or by the runner's timer.
POLL = 1.0
#: Jobs a second the stream enqueues: several per claim gap (10 ms alone, 20 ms each for
#: two runners), few enough that the recording workers keep up.
RATE = 300.0


class Stream:
    """Enqueues Record jobs one per transaction at ``RATE`` in a thread, until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.client = Client(settings, registry=Registry.from_classes(*workers.ALL))
        self.ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._enqueue, daemon=True)

    def _enqueue(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            self.ids.append(self.client.enqueue(workers.Record, {"n": len(self.ids)}).id)
            time.sleep(max(0.0, started + len(self.ids) / RATE - time.monotonic()))

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        """Stop enqueueing; the ids of every job enqueued."""
        self._stop.set()
        self._thread.join(10)
        self.client.close()
        return self.ids


@pytest.fixture
def stream(settings: Settings) -> Iterator[Callable[[], Stream]]:
    started: list[Stream] = []

    def start() -> Stream:
        started.append(Stream(settings).start())
        return started[-1]

    yield start
    for each in started:
        each.stop()


def listening(port: int) -> float | None:
    return value(scrape(port), "backy_runner_listening")


def start_with_metrics(runner: Runner) -> tuple[RunnerProcess, int]:
    port = free_port()
    return runner("--metrics-port", str(port), "--poll-interval", str(POLL)), port


def test_runners_stop_listening_under_a_stream_and_every_job_runs_once(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any
) -> None:
    (first, first_port), (second, second_port) = (start_with_metrics(runner) for _ in "ab")
    assert listening(first_port) == 1.0 and listening(second_port) == 1.0
    flowing = stream()
    for port in (first_port, second_port):
        wait_until(lambda port=port: listening(port) == 0.0, timeout=10,
                   what="a runner to follow the stream without listening")
    time.sleep(1.0)
    ids = flowing.stop()
    for port in (first_port, second_port):
        wait_until(lambda port=port: listening(port) == 1.0, timeout=5,
                   what="the runners to listen again after the stream")
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="every job of the stream to run")
    done = runs(db)
    assert sorted(run["job_id"] for run in done) == sorted(ids), "a job ran twice or not at all"
    assert all(run["attempt"] == 1 and run["finished_at"] for run in done)
    assert {run["pid"] for run in done} == {first.process.pid, second.process.pid}
    # Listening again: a lone job is woken by its notification, not found by a poll (a
    # listening runner's safety poll is 10 s away; one that polls, up to 1 s).
    for _ in range(3):
        job = client.enqueue(workers.Record)
        wait_until(lambda job=job: runs(db, job.id), timeout=5, what="a lone job to run")
        [run] = runs(db, job.id)
        assert seconds(run["started_at"] - job.enqueued_at) < 0.3 * POLL
        time.sleep(0.1)
    for process in (first, second):
        assert "Traceback" not in process.output


def test_a_job_scheduled_during_a_stream_runs_when_due(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any
) -> None:
    _, port = start_with_metrics(runner)
    flowing = stream()
    wait_until(lambda: listening(port) == 0.0, timeout=10, what="the runner to follow the stream")
    # Its notification ("due in 3 s") is not heard: the runner catches up on it when it
    # listens again, and wakes when it falls due, not at its next safety poll (10 s).
    later = client.enqueue(workers.Record, {"later": True}, delay=3.0)
    time.sleep(0.5)
    flowing.stop()
    wait_until(lambda: listening(port) == 1.0, timeout=5, what="the runner to listen again")
    wait_until(lambda: runs(db, later.id), timeout=8, what="the scheduled job to run")
    [run] = runs(db, later.id)
    assert 0 <= seconds(run["started_at"] - later.run_at) < 0.5


def test_a_job_cancelled_while_it_runs_during_a_stream_is_stopped(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any
) -> None:
    process, port = start_with_metrics(runner)
    job = client.enqueue(workers.Limited, seconds=4)  # max_runtime 5
    wait_until(lambda: runs(db, job.id), timeout=10, what="the attempt to start")
    flowing = stream()
    wait_until(lambda: listening(port) == 0.0, timeout=10, what="the runner to follow the stream")
    cancelled_at = time.monotonic()
    assert client.cancel(job.id) is not None  # its notification is not heard
    wait_until(lambda: "stopped: no longer this runner's" in process.output, timeout=POLL + 1.0,
               what="the runner to stop the cancelled attempt")
    print(f"\ncancel to stop, during a stream: {time.monotonic() - cancelled_at:.3f}s")
    assert listening(port) == 0.0, "the stream ended: the test proves nothing"
    flowing.stop()
    assert state(db, job.id) == "cancelled"
    assert [run["finished_at"] for run in runs(db, job.id)] == [None]


def test_a_job_scheduled_before_the_runner_started_runs_when_due(
    runner: Runner, client: Client, db: Any
) -> None:
    """Its notification went to no one: the runner catches up when it starts listening,
    as after a stream, rather than finding it at a safety poll (10 s)."""
    later = client.enqueue(workers.Record, delay=4.0)
    start_with_metrics(runner)
    wait_until(lambda: runs(db, later.id), timeout=10, what="the scheduled job to run")
    [run] = runs(db, later.id)
    assert 0 <= seconds(run["started_at"] - later.run_at) < 0.5
