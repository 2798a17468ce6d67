"""A stream of enqueues: runners follow it on their own and stop listening meanwhile.

Under a stream (jobs enqueued one per transaction faster than a runner's claims may
start), the notifications say nothing the next claim would not find, and listening to
them costs every enqueue (README, "A steady stream"). The runner then claims every gap
on its own, with its listener UNLISTENed (``backy_runner_listening`` 0), and listens again
once its claims find nothing. These tests check what that must not cost: every job runs
once; what the unheard notifications would have said still happens (a job not due yet
runs when due; a running job that is cancelled stops); and after the stream a job is
woken by its notification again. While a runner follows a stream, enqueues of its
workers do not notify at all (quiet enqueues); they notify again the moment it stops
following, or stops, or within a second of its death.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import QUIET_CHECK_EVERY, Client
from backy_gevent.config import Settings
from backy_gevent.db.queries import channel_name
from backy_gevent.worker import Registry
from tests import workers
from tests.acceptance.scraping import free_port, scrape, value
from tests.acceptance.test_runner import count_jobs, rescue_bound, runs, seconds, state
from tests.conftest import RunnerProcess, notified_since, query, wait_until

Runner = Callable[..., RunnerProcess]
#: The default poll interval: a listening runner's safety poll is 10 of them, so a job
#: found within a fraction of one was woken by a notification or by the runner's timer.
POLL = 1.0
#: Jobs a second the stream enqueues: several per claim gap (10 ms alone, 20 ms each for
#: two runners), few enough that the recording workers keep up.
RATE = 300.0


class Stream:
    """Enqueues Record jobs one per transaction at ``rate`` (default ``RATE``) a second
    in a thread, until stopped."""

    def __init__(self, settings: Settings, rate: float = RATE) -> None:
        self.rate = rate
        self.client = Client(settings, registry=Registry.from_classes(*workers.ALL))
        self.ids: list[int] = []
        #: When each job was enqueued, by id (the server's clock, as the runs table's).
        self.enqueued_at: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._enqueue, daemon=True)

    def _enqueue(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            job = self.client.enqueue(workers.Record, {"n": len(self.ids)})
            self.enqueued_at[job.id] = job.enqueued_at
            self.ids.append(job.id)
            time.sleep(max(0.0, started + len(self.ids) / self.rate - time.monotonic()))

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
def stream(settings: Settings) -> Iterator[Callable[..., Stream]]:
    started: list[Stream] = []

    def start(rate: float = RATE) -> Stream:
        started.append(Stream(settings, rate).start())
        return started[-1]

    yield start
    for each in started:
        each.stop()


class Notifications:
    """A session of the test's own that LISTENs on the jobs table's channel."""

    def __init__(self, dsn: str, db: Any) -> None:
        [(oid,)] = query(db, "SELECT 'jobs'::regclass::oid")
        self.db, self.channel = db, channel_name(oid)
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(f'LISTEN "{self.channel}"')

    def heard(self) -> list[str]:
        """The payloads of the notifications committed since the last call."""
        return notified_since(self.conn, self.db, self.channel)


@pytest.fixture
def notifications(dsn: str, db: Any, client: Client) -> Iterator[Notifications]:
    heard = Notifications(dsn, db)
    yield heard
    heard.conn.close()


def quiet_row(db: Any) -> tuple[Any, ...]:
    """The runner's quiet_until is current, and its quiet_workers."""
    [row] = query(db, "SELECT quiet_until > clock_timestamp(), quiet_workers FROM jobs_runners")
    return row


def listening(port: int) -> float | None:
    return value(scrape(port), "backy_runner_listening")


def start_with_metrics(runner: Runner) -> tuple[RunnerProcess, int]:
    """A runner that listens, and its metrics port. Not listening yet reads 0 too: the
    listener connects after the runner has started, so a test that waits for 0 must
    first see 1."""
    port = free_port()
    process = runner("--metrics-port", str(port), "--poll-interval", str(POLL))
    wait_until(lambda: listening(port) == 1.0, timeout=10, what="the runner to listen")
    return process, port


def following(runner: Runner, stream: Callable[[], Stream]) -> tuple[RunnerProcess, int, Stream]:
    """A runner (and its metrics port) that follows a stream, and the stream."""
    process, port = start_with_metrics(runner)
    flowing = stream()
    wait_until(lambda: listening(port) == 0.0, timeout=10, what="the runner to follow the stream")
    return process, port, flowing


def test_runners_stop_listening_under_a_stream_and_every_job_runs_once(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any
) -> None:
    (first, first_port), (second, second_port) = (start_with_metrics(runner) for _ in "ab")
    assert listening(first_port) == 1.0 and listening(second_port) == 1.0
    flowing = stream()
    # One runner follows the stream (the runners decide one at a time), its enqueues
    # are quiet, and the other, woken by nothing while it keeps up, keeps listening.
    wait_until(lambda: 0.0 in (listening(first_port), listening(second_port)), timeout=10,
               what="a runner to follow the stream without listening")
    for _ in range(5):
        time.sleep(0.2)
        assert sorted([listening(first_port), listening(second_port)]) == [0.0, 1.0]
    ids = flowing.stop()
    for port in (first_port, second_port):
        wait_until(lambda port=port: listening(port) == 1.0, timeout=5,
                   what="the runners to listen again after the stream")
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="every job of the stream to run")
    done = runs(db)
    assert sorted(run["job_id"] for run in done) == sorted(ids), "a job ran twice or not at all"
    assert all(run["attempt"] == 1 and run["finished_at"] for run in done)
    assert {run["pid"] for run in done} <= {first.process.pid, second.process.pid}
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


def test_a_trickle_after_a_stream_is_not_followed(
    runner: Runner, stream: Callable[..., Stream], client: Client, db: Any,
    notifications: Notifications,
) -> None:
    """A stream that thins to a trickle (a job every 20 ms, one per stream claim) is
    served by notifications again, a job each, claimed at once: followed, each job would
    wait out the stream claim's gap (12 ms at the median instead of 2.5, measured)."""
    process, port, flowing = following(runner, stream)
    trickle = stream(50.0)
    flowing.stop()
    wait_until(lambda: listening(port) == 1.0, timeout=3,
               what="the runner to listen again while the trickle goes on")
    time.sleep(3 * QUIET_CHECK_EVERY)  # the trickle's client learns it is not quiet
    notifications.heard()
    time.sleep(1.0)
    assert len(notifications.heard()) >= 30, "the trickle's enqueues do not notify"
    for _ in range(5):  # and it stays served by them
        time.sleep(0.2)
        assert listening(port) == 1.0
    ids = [*flowing.ids, *trickle.stop()]
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="every job to run")
    done = runs(db)
    assert sorted(run["job_id"] for run in done) == sorted(ids), "a job ran twice or not at all"
    assert "Traceback" not in process.output


def test_a_trickle_faster_than_the_claim_gap_is_not_followed(
    runner: Runner, stream: Callable[..., Stream], client: Client, db: Any
) -> None:
    """80 jobs a second come faster than a runner's claims may start (10 ms apart, give
    or take a quarter), but each claim still brings one job: no stream to follow."""
    process, port = start_with_metrics(runner)
    trickle = stream(80.0)
    for _ in range(15):
        time.sleep(0.2)
        assert listening(port) == 1.0, "a trickle of 80 jobs a second was followed"
    ids = trickle.stop()
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="every job to run")
    assert sorted(run["job_id"] for run in runs(db)) == sorted(ids)
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


def test_enqueues_are_quiet_while_a_runner_follows_the_stream_and_notify_after(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any,
    notifications: Notifications,
) -> None:
    process, port, flowing = following(runner, stream)
    # Quiet for every worker it claims for every gap: all those with free slots.
    quiet, quiet_workers = quiet_row(db)
    assert quiet and workers.Record.name in quiet_workers
    # The stream's client learns it within QUIET_CHECK_EVERY of the mark: until then it
    # may still notify (it asked just before the mark was set, and was told to).
    time.sleep(3 * QUIET_CHECK_EVERY)
    notifications.heard()
    before = len(flowing.ids)
    time.sleep(1.0)
    enqueued = len(flowing.ids) - before
    # Every one of these enqueues would have notified, and none did.
    assert enqueued > 100 and notifications.heard() == []
    ids = flowing.stop()
    wait_until(lambda: listening(port) == 1.0, timeout=5, what="the runner to listen again")
    assert quiet_row(db)[0] is None
    # It stopped following: it told the runners of the table, and enqueues notify again.
    assert "" in notifications.heard()
    job = client.enqueue(workers.Record)
    assert len(notifications.heard()) == 1
    wait_until(lambda: runs(db, job.id), timeout=5, what="a lone job to run")
    assert seconds(runs(db, job.id)[0]["started_at"] - job.enqueued_at) < 0.3 * POLL
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="every job of the stream to run")
    assert sorted(run["job_id"] for run in runs(db)) == sorted([*ids, job.id])
    assert "Traceback" not in process.output


def test_enqueues_in_a_callers_transaction_notify_even_while_a_runner_follows(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any, dsn: str,
    notifications: Notifications,
) -> None:
    """Quiet is decided when the INSERT runs; a caller's transaction commits later, maybe
    after the runner has stopped following: such an enqueue always notifies."""
    _, _, flowing = following(runner, stream)
    notifications.heard()
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn:
        job = client.enqueue(workers.Record, {"mine": True}, connection=conn)
    heard = notifications.heard()
    assert any('"worker": "record"' in payload for payload in heard), heard
    flowing.stop()
    wait_until(lambda: runs(db, job.id), timeout=10, what="the caller's job to run")


def test_a_runner_that_stops_while_it_follows_hands_the_stream_to_the_others(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any,
    notifications: Notifications,
) -> None:
    first, _, flowing = following(runner, stream)
    # A second runner starts while the stream is quiet: no notification wakes it, and
    # it claims only at start and at its polls while the first follows.
    second, _ = start_with_metrics(runner)
    notifications.heard()
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert "" in notifications.heard(), "the stopping runner woke nobody"
    time.sleep(1.0)
    ids = flowing.stop()
    wait_until(lambda: count_jobs(db) == 0, timeout=10, what="every job of the stream to run")
    done = runs(db)
    assert sorted(run["job_id"] for run in done) == sorted(ids), "a job ran twice or not at all"
    late = [run for run in done if run["pid"] == second.process.pid]
    # The second runner took over at once, not at its polls: no job waited a poll.
    assert late and max(seconds(run["started_at"] - flowing.enqueued_at[run["job_id"]])
                        for run in late) < 0.5 * POLL


def test_jobs_enqueued_quietly_run_when_the_runner_that_follows_is_killed(
    runner: Runner, stream: Callable[[], Stream], client: Client, db: Any,
) -> None:
    """Its quiet lapses within a second: enqueues notify again, and the other runner
    runs every job; those the dead runner was running run again once its lease is over."""
    first, _, flowing = following(runner, stream)
    second, _ = start_with_metrics(runner)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    [(killed_at,)] = query(db, "SELECT clock_timestamp()")
    time.sleep(2.0)
    ids = flowing.stop()
    bound = rescue_bound(workers.Record, leader_died=True)
    wait_until(lambda: count_jobs(db) == 0, timeout=bound + 10,
               what="every job to run, the dead runner's again")
    done = runs(db)
    by_job: dict[int, list[dict[str, Any]]] = {}
    for run in done:
        by_job.setdefault(run["job_id"], []).append(run)
    assert sorted(by_job) == sorted(ids), "a job was lost"
    for job_id, attempts in by_job.items():
        # Twice only when the dead runner was running it: it started there, and its
        # outcome was not written (the perform may have returned just before the kill).
        if len(attempts) > 1:
            assert len(attempts) == 2, f"job {job_id} ran {len(attempts)} times"
            assert attempts[0]["pid"] == first.process.pid, f"job {job_id} ran twice"
            assert attempts[1]["pid"] == second.process.pid
    # Enqueued after the kill: run by the second runner without waiting for its safety
    # poll (10 polls while it listens): the quiet lapsed, and enqueues woke it again.
    after = [run for run in done if run["pid"] == second.process.pid
             and flowing.enqueued_at[run["job_id"]] > killed_at]
    assert after and max(seconds(run["started_at"] - flowing.enqueued_at[run["job_id"]])
                         for run in after) < 2.0

