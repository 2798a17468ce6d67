"""One job's life without a runner loop: the executor runs one attempt and reports to a
sink (a recording object, or the real Completer writing to the database)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import psycopg2
import psycopg2.extensions
import pytest

import backy_gevent as backy
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db.queries import Queries
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import Job, JobTimeout
from backy_gevent.runner.completer import Completer
from backy_gevent.runner.executor import Executor, HandBack
from backy_gevent.worker import Registration, Registry
from tests.conftest import query, wait_until

# -- workers run by these tests ---------------------------------------------------------


class Ok(backy.Worker):
    name = "ok"

    def perform(self, job: Job, args: dict[str, Any]) -> Any:
        return args.get("value")


class Boom(backy.Worker):
    name = "boom"

    def retry_delay(self, retry: int) -> float:
        return retry * 1.5

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        raise ValueError(f"boom {job.attempt}")


class BoomDefaultDelay(backy.Worker):
    name = "boom_default"

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        raise KeyError("missing")


class Slow(backy.Worker):
    name = "slow"
    max_runtime = 0.2

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        gevent.sleep(float(args.get("seconds", 5)))


class Swallower(backy.Worker):
    """Tries to swallow its timeout with ``except Exception``."""

    name = "swallower"
    max_runtime = 0.2

    def perform(self, job: Job, args: dict[str, Any]) -> str:
        try:
            gevent.sleep(5)
        except Exception:
            return "swallowed"
        return "slept"


class Toucher(backy.Worker):
    name = "toucher"
    max_runtime = 0.2
    requeue_delay = 3.0

    def perform(self, job: Job, args: dict[str, Any]) -> str:
        end = time.monotonic() + 0.7
        while time.monotonic() < end:
            gevent.sleep(0.1)
            backy.touch(job)
        return "done"


class BadInit(backy.Worker):
    name = "bad_init"

    def __init__(self) -> None:
        raise RuntimeError("can't build")

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        pass


class FlakyOnce(backy.Worker):
    """Fails its first attempt, succeeds after."""

    name = "flaky_once"
    retry_count = 2

    def retry_delay(self, retry: int) -> float:
        return 0.0

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        if job.attempt == 1:
            raise ConnectionError("first try fails")


#: The connection a SlowQuery job uses, set by its test (args must be JSON).
QUERY_CONNECTIONS: dict[int, Any] = {}


class SlowQuery(backy.Worker):
    name = "slow_query"
    max_runtime = 0.3

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        with QUERY_CONNECTIONS[job.id].cursor() as cur:
            cur.execute("SELECT pg_sleep(30)")


# -- the sink and the hooks -------------------------------------------------------------


class RecordingSink:
    """An OutcomeSink that remembers what it was told."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, Any]] = []
        self.touches: list[tuple[int, float]] = []
        self.still_ours = True  # what touch answers: is the row still this attempt's?
        self.results: list[Any] = []

    def completed(self, job: Job, result: Any = None) -> None:
        self.outcomes.append(("completed", job))
        self.results.append(result)

    def snoozed(self, job: Job, seconds: float) -> None:
        self.outcomes.append(("snoozed", seconds))

    def cancelled(self, job: Job, error: dict[str, Any]) -> None:
        self.outcomes.append(("cancelled", error))

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None:
        self.outcomes.append(("failed", (error, retry_in)))

    def handed_back(self, job: Job) -> None:
        self.outcomes.append(("handed_back", job))

    def touch(self, job: Job, lease: float) -> bool | None:
        self.touches.append((job.id, lease))
        return self.still_ours


class Spy:
    """A hook plugin that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @backy.hookimpl
    def backy_before_job(self, job: Job, worker: backy.Worker) -> None:
        self.calls.append(("before", {"job": job, "worker": worker}))

    @backy.hookimpl
    def backy_after_job(self, job: Job, result: Any, duration: float) -> None:
        self.calls.append(("after", {"job": job, "result": result, "duration": duration}))

    @backy.hookimpl
    def backy_on_failure(
        self, job: Job, worker: Any, error: BaseException, will_retry: bool, timed_out: bool
    ) -> None:
        self.calls.append(
            ("failure", {"worker": worker, "error": error, "will_retry": will_retry,
                         "timed_out": timed_out})
        )

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Raiser:
    """A hook plugin that raises everywhere."""

    @backy.hookimpl
    def backy_before_job(self) -> None:
        raise RuntimeError("plugin broke before")

    @backy.hookimpl
    def backy_after_job(self) -> None:
        raise RuntimeError("plugin broke after")


class DelayChooser:
    @backy.hookimpl
    def backy_retry_delay(self, job: Job) -> float:
        return 42.0


def make_job(worker: str, *, attempt: int = 1, max_attempts: int = 4, **args: Any) -> Job:
    now = datetime.datetime.now(datetime.timezone.utc)
    return Job(
        id=7, worker=worker, args=args, queue="default", priority=0, state="running",
        attempt=attempt, max_attempts=max_attempts, run_at=now, enqueued_at=now,
    )


def make_executor(
    *plugins: object, settings: Settings | None = None
) -> tuple[Executor, RecordingSink, Spy]:
    spy = Spy()
    named = [("spy", spy), *((f"plugin{n}", p) for n, p in enumerate(plugins))]
    hooks = Hooks(build_plugin_manager(named, load_entry_points=False))
    sink = RecordingSink()
    return Executor(settings or Settings(), hooks, sink), sink, spy


def run(executor: Executor, job: Job, worker: type[backy.Worker]) -> float:
    """Run one attempt in a greenlet; return how long it took."""
    started = time.monotonic()
    greenlet = gevent.spawn(executor.run, job, Registration(worker.name or "", worker, "test"))
    greenlet.join(timeout=10)
    assert greenlet.dead, "the attempt did not finish"
    greenlet.get()  # re-raise anything the executor let escape
    return time.monotonic() - started


# -- outcomes ---------------------------------------------------------------------------


def test_success_is_completed_with_hooks_around_it() -> None:
    executor, sink, spy = make_executor()
    job = make_job("ok", value=5)
    run(executor, job, Ok)
    assert sink.outcomes == [("completed", job)]
    assert spy.names() == ["before", "after"]
    assert isinstance(spy.calls[0][1]["worker"], Ok)
    assert spy.calls[1][1]["result"] == 5
    assert spy.calls[1][1]["duration"] >= 0
    assert executor.running == {}
    with pytest.raises(RuntimeError):
        job.touch()  # only while it runs


def test_failure_records_the_error_and_the_workers_retry_delay() -> None:
    executor, sink, spy = make_executor()
    run(executor, make_job("boom", attempt=2, max_attempts=4), Boom)
    [(kind, (error, retry_in))] = sink.outcomes
    assert kind == "failed"
    assert retry_in == 3.0  # Boom.retry_delay(2)
    assert error["attempt"] == 2
    assert error["error"] == "builtins.ValueError"
    assert error["message"] == "boom 2"
    assert "Traceback" in error["traceback"]
    assert "in perform" in error["traceback"]
    assert datetime.datetime.fromisoformat(error["at"]).tzinfo is not None
    assert spy.names() == ["before", "failure"]
    failure = spy.calls[1][1]
    assert failure["will_retry"] is True
    assert failure["timed_out"] is False
    assert isinstance(failure["error"], ValueError)


def test_last_attempt_fails_without_retry() -> None:
    executor, sink, spy = make_executor()
    run(executor, make_job("boom", attempt=4, max_attempts=4), Boom)
    [(kind, (_, retry_in))] = sink.outcomes
    assert (kind, retry_in) == ("failed", None)
    assert spy.calls[-1][1]["will_retry"] is False


def test_configured_retry_delay_applies_without_the_workers_own() -> None:
    settings = Settings(retry_delay=lambda retry: 10.0 * retry)
    executor, sink, _ = make_executor(settings=settings)
    run(executor, make_job("boom_default", attempt=3), BoomDefaultDelay)
    [(_, (error, retry_in))] = sink.outcomes
    assert retry_in == 30.0
    assert error["error"] == "builtins.KeyError"


@pytest.mark.parametrize("delay", [1e300, float("inf"), float("nan"), -1.0])
def test_a_retry_delay_the_table_cant_hold_means_at_once(delay: float) -> None:
    # now() + 1e300 s would overflow the timestamp: the failure could not be written.
    settings = Settings(retry_delay=lambda retry: delay)
    executor, sink, _ = make_executor(settings=settings)
    run(executor, make_job("boom_default", attempt=1), BoomDefaultDelay)
    [(_, (_, retry_in))] = sink.outcomes
    assert retry_in == 0.0


def test_default_retry_delay_is_backys() -> None:
    executor, sink, _ = make_executor()
    run(executor, make_job("boom_default", attempt=2), BoomDefaultDelay)
    [(_, (_, retry_in))] = sink.outcomes
    assert retry_in == pytest.approx((2**3 + 100) / 1000)


def test_a_plugin_may_choose_the_retry_delay() -> None:
    executor, sink, _ = make_executor(DelayChooser())
    run(executor, make_job("boom"), Boom)
    assert sink.outcomes[0][1][1] == 42.0


def test_max_runtime_stops_the_attempt() -> None:
    executor, sink, spy = make_executor()
    elapsed = run(executor, make_job("slow", seconds=5), Slow)
    assert 0.2 <= elapsed < 1.0
    [(kind, (error, retry_in))] = sink.outcomes
    assert kind == "failed"
    assert error["error"] == "backy_gevent.job.JobTimeout"
    assert "max_runtime" in error["message"]
    assert retry_in is not None
    failure = spy.calls[-1][1]
    assert failure["timed_out"] is True
    assert isinstance(failure["error"], JobTimeout)


def test_max_runtime_counts_from_the_start_even_after_the_hub_was_blocked() -> None:
    # The loop's idea of now stays where it was while the hub does not run; a clock
    # started then, in a greenlet that is not the hub's callback (the main greenlet, as
    # in backy_gevent.testing), must still count from the real now.
    executor, sink, _ = make_executor()
    gevent.sleep(0.01)  # the loop notes the time...
    time.sleep(0.5)  # ...and does not run for a while
    executor.run(make_job("slow", seconds=0.1), Registration("slow", Slow, "test"))
    assert [kind for kind, _ in sink.outcomes] == ["completed"]


class BlocksThenTouches(backy.Worker):
    """Blocks the hub for 0.5 s (as pure CPU work would), touches, then yields 0.3 s."""

    name = "blocks_then_touches"
    max_runtime = 0.6

    def perform(self, job: Job, args: dict[str, Any]) -> str:
        gevent.sleep(0.01)  # resumed by a timer: no longer inside a hub callback
        time.sleep(0.5)
        job.touch()
        gevent.sleep(0.3)
        return "done"


def test_touch_after_code_that_blocked_the_hub_restarts_the_clock_from_the_touch() -> None:
    executor, sink, _ = make_executor()
    run(executor, make_job("blocks_then_touches"), BlocksThenTouches)
    assert [kind for kind, _ in sink.outcomes] == ["completed"]  # not stopped at 0.6 s


class Blocker(backy.Worker):
    """Sleeps with the unpatched time.sleep: it never yields, so no timer can stop it."""

    name = "blocker"
    max_runtime = 0.2

    def perform(self, job: Job, args: dict[str, Any]) -> str:
        time.sleep(float(args["seconds"]))
        return "done"


def test_run_returns_the_outcome_it_reported() -> None:
    executor, sink, _ = make_executor()
    late = executor.run(make_job("blocker", seconds=0.3), Registration("blocker", Blocker, "t"))
    assert (late.kind, late.result, late.overran) == ("returned", "done", True)
    assert sink.outcomes[0][0] == "completed"  # a runner keeps the finished work
    on_time = executor.run(make_job("blocker", seconds=0), Registration("blocker", Blocker, "t"))
    assert (on_time.kind, on_time.overran) == ("returned", False)
    failed = executor.run(make_job("boom"), Registration("boom", Boom, "t"))
    assert failed.kind == "raised" and isinstance(failed.error, ValueError)
    unbuilt = executor.run(make_job("bad_init"), Registration("bad_init", BadInit, "t"))
    assert unbuilt.kind == "raised" and str(unbuilt.error) == "can't build"


def test_a_timeout_is_not_swallowed_by_except_exception() -> None:
    executor, sink, spy = make_executor()
    elapsed = run(executor, make_job("swallower"), Swallower)
    assert elapsed < 1.0
    assert sink.outcomes[0][0] == "failed"
    assert "after" not in spy.names()


def test_touch_restarts_the_clock_and_extends_the_lease() -> None:
    executor, sink, _ = make_executor()
    job = make_job("toucher")
    elapsed = run(executor, job, Toucher)
    assert elapsed >= 0.7 > Toucher.max_runtime * 3
    assert sink.outcomes == [("completed", job)]
    assert len(sink.touches) >= 5
    assert {lease for _, lease in sink.touches} == {Toucher.max_runtime + Toucher.requeue_delay}


def test_touch_stops_an_attempt_whose_job_is_no_longer_its_own() -> None:
    executor, sink, spy = make_executor()
    sink.still_ours = False  # cancelled or rescued meanwhile
    elapsed = run(executor, make_job("toucher"), Toucher)
    assert elapsed < 0.3  # stopped at the first touch, not after 0.7 s
    assert len(sink.touches) == 1
    assert sink.outcomes == []  # nothing to record: the row has moved on
    assert "after" not in spy.names() and "failure" not in spy.names()


def test_a_short_job_is_not_stopped() -> None:
    executor, sink, _ = make_executor()
    run(executor, make_job("slow", seconds=0.05), Slow)
    assert sink.outcomes[0][0] == "completed"


def test_a_worker_that_cannot_be_built_fails_the_attempt() -> None:
    executor, sink, spy = make_executor()
    run(executor, make_job("bad_init"), BadInit)
    [(kind, (error, _))] = sink.outcomes
    assert kind == "failed"
    assert error["message"] == "can't build"
    assert spy.names() == ["failure"]
    assert spy.calls[0][1]["worker"] is None


def test_plugins_that_raise_do_not_lose_the_job() -> None:
    executor, sink, spy = make_executor(Raiser())
    job = make_job("ok", value=1)
    run(executor, job, Ok)
    assert sink.outcomes == [("completed", job)]
    assert spy.names() == ["before", "after"]


@pytest.mark.parametrize("exception", [HandBack, gevent.GreenletExit])
def test_interrupted_attempt_is_handed_back(exception: type[BaseException]) -> None:
    executor, sink, spy = make_executor()
    job = make_job("slow", seconds=5)
    greenlet = gevent.spawn(executor.run, job, Registration("slow", Slow, "test"))
    while not executor.running:
        gevent.sleep(0.01)  # let it enter perform
    greenlet.kill(exception, block=True, timeout=5)
    assert greenlet.dead
    assert sink.outcomes == [("handed_back", job)]
    assert "failure" not in spy.names()
    assert executor.running == {}


class BlockingAfter:
    """A hook plugin whose backy_after_job waits until released, and notes what the sink
    had been told by then."""

    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink
        self.entered = gevent.event.Event()
        self.release = gevent.event.Event()
        self.seen: list[str] = []

    @backy.hookimpl
    def backy_after_job(self, job: Job) -> None:
        self.seen = [kind for kind, _ in self.sink.outcomes]
        self.entered.set()
        self.release.wait()


def test_finished_work_is_recorded_before_anything_can_interrupt_it() -> None:
    executor, sink, _ = make_executor()
    blocking = BlockingAfter(sink)
    executor.hooks = Hooks(build_plugin_manager([("blocking", blocking)], load_entry_points=False))
    job = make_job("ok", value=1)
    greenlet = gevent.spawn(executor.run, job, Registration("ok", Ok, "test"))
    assert blocking.entered.wait(5)
    # The completion is handed over before the hook runs; and a shutdown now (the hook
    # is past perform) has nothing to interrupt.
    assert blocking.seen == ["completed"]
    assert executor.interrupt(HandBack()) == 0
    blocking.release.set()
    greenlet.join(5)
    assert sink.outcomes == [("completed", job)]


def test_an_interrupt_meant_for_one_attempt_never_hits_the_next_one() -> None:
    executor, _sink, _ = make_executor()
    first, second = make_job("slow", seconds=5), make_job("slow", seconds=5)
    second.id = 8
    greenlet = gevent.spawn(executor.run, first, Registration("slow", Slow, "test"))
    while not executor.running:
        gevent.sleep(0.01)
    meant_for_first = executor.running[greenlet]
    executor.running[greenlet] = executor.running[greenlet].__class__(
        second, meant_for_first.deadline, False
    )  # the greenlet has moved on to the next job before the interrupt is delivered
    executor._deliver(greenlet, meant_for_first, HandBack())
    gevent.sleep(0.05)
    assert not greenlet.dead  # nothing was thrown
    greenlet.kill(block=True, timeout=5)


def test_an_attempt_whose_lease_may_have_run_out_is_handed_back_not_started() -> None:
    executor, sink, spy = make_executor()
    job = make_job("ok", value=1)
    job._lease_ends = time.monotonic() - 0.001  # by this runner's own clock
    run(executor, job, Ok)
    assert sink.outcomes == [("handed_back", job)]
    assert spy.names() == []  # not even backy_before_job


def test_a_lease_that_runs_out_during_before_job_stops_the_start() -> None:
    executor, sink, _spy = make_executor()
    job = make_job("ok", value=1)
    job._lease_ends = time.monotonic() + 0.1

    class SlowBefore:
        @backy.hookimpl
        def backy_before_job(self) -> None:
            gevent.sleep(0.2)

    executor.hooks = Hooks(build_plugin_manager([("slow", SlowBefore())],
                                                load_entry_points=False))
    run(executor, job, Ok)
    assert sink.outcomes == [("handed_back", job)]


class Snoozer(backy.Worker):
    name = "snoozer"

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        raise backy.Snooze(args.get("seconds", 5))


class Quitter(backy.Worker):
    name = "quitter"

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        raise backy.Cancel("the customer closed their account")


def test_snooze_and_cancel_are_outcomes_of_their_own_with_no_failure_hook() -> None:
    executor, sink, spy = make_executor()
    run(executor, make_job("snoozer", seconds=5), Snoozer)
    run(executor, make_job("quitter"), Quitter)
    [(snoozed, seconds), (cancelled, error)] = sink.outcomes
    assert (snoozed, seconds, cancelled) == ("snoozed", 5.0, "cancelled")
    assert error["error"] == "backy_gevent.job.Cancel"
    assert error["message"] == "the customer closed their account"
    assert "failure" not in spy.names() and "after" not in spy.names()


def test_a_bad_snooze_is_a_failure_naming_it() -> None:
    executor, sink, _ = make_executor()
    run(executor, make_job("snoozer", seconds=-1), Snoozer)
    [(kind, (error, _))] = sink.outcomes
    assert kind == "failed" and "Snooze takes seconds" in error["message"]


def test_the_return_value_goes_to_the_sink() -> None:
    executor, sink, _ = make_executor()
    run(executor, make_job("ok", value={"sent": 3}), Ok)
    assert sink.results == [{"sent": 3}]


# -- with the database: the real Completer as the sink ----------------------------------


RUNNER_ID = "executor-test"


def claim(client: Client, worker: str) -> list[Job]:
    with client.pool.borrow() as conn, conn.cursor() as cur:
        cur.execute(
            client.queries.composed("claim"),
            {"workers": [worker], "limits": [10], "leases": [60.0], "queues": [],
             "runner_id": RUNNER_ID},
        )
        return [Job.from_row(row) for row in cur.fetchall()]


def db_executor(client: Client, *, delete: bool) -> tuple[Executor, Completer]:
    completer = Completer(
        client.pool, Queries(client.settings.table_name), RUNNER_ID, delete_finished_jobs=delete
    )
    hooks = Hooks(build_plugin_manager(load_entry_points=False))
    return Executor(client.settings, hooks, completer), completer


@pytest.fixture
def db_client(settings: Settings) -> Iterator[Client]:
    c = Client(settings, registry=Registry.from_classes(Ok, FlakyOnce, Boom, Snoozer, Quitter))
    c.setup()
    yield c
    c.close()


def test_a_jobs_life_through_the_completer(db_client: Client, db: Any) -> None:
    job = db_client.enqueue(FlakyOnce, n=1)
    executor, completer = db_executor(db_client, delete=False)
    registration = db_client.registry.get("flaky_once")

    [first] = claim(db_client, "flaky_once")
    assert (first.state, first.attempt) == ("running", 1)
    gevent.spawn(executor.run, first, registration).join()
    completer.flush()
    row = db_client.get_job(job.id)
    assert row is not None
    assert (row.state, row.attempt, row.runner_id) == ("available", 1, None)
    assert [(e["attempt"], e["error"]) for e in row.errors] == [(1, "builtins.ConnectionError")]

    [second] = claim(db_client, "flaky_once")
    assert second.attempt == 2
    gevent.spawn(executor.run, second, registration).join()
    completer.flush()
    row = db_client.get_job(job.id)
    assert row is not None
    assert (row.state, row.attempt) == ("completed", 2)
    assert row.finished_at is not None
    assert len(row.errors) == 1  # the history stays
    assert completer.pending == 0


def test_completion_deletes_the_row_when_asked(db_client: Client, db: Any) -> None:
    db_client.enqueue_many(Ok, [{"value": n} for n in range(5)])
    executor, completer = db_executor(db_client, delete=True)
    registration = db_client.registry.get("ok")
    jobs = claim(db_client, "ok")
    assert len(jobs) == 5
    gevent.joinall([gevent.spawn(executor.run, job, registration) for job in jobs])
    completer.flush()
    assert query(db, "SELECT count(*) FROM jobs") == [(0,)]


def test_failure_schedules_the_retry_in_the_database(db_client: Client, db: Any) -> None:
    job = db_client.enqueue(Boom)
    executor, completer = db_executor(db_client, delete=True)
    [claimed] = claim(db_client, "boom")
    gevent.spawn(executor.run, claimed, db_client.registry.get("boom")).join()
    completer.flush()
    state, delay, errors = query(
        db,
        "SELECT state, extract(epoch FROM run_at - now()), errors FROM jobs WHERE id = %s",
        job.id,
    )[0]
    assert state == "available"
    assert 1.0 < delay <= 1.5  # Boom.retry_delay(1)
    assert errors[0]["message"] == "boom 1"
    assert claim(db_client, "boom") == []  # not due yet


def test_an_outcome_for_a_job_no_longer_ours_is_not_written(
    db_client: Client, db: Any
) -> None:
    job = db_client.enqueue(Ok)
    executor, completer = db_executor(db_client, delete=True)
    [claimed] = claim(db_client, "ok")
    db_client.cancel(job.id)
    gevent.spawn(executor.run, claimed, db_client.registry.get("ok")).join()
    completer.flush()
    assert completer.lost == 1
    assert query(db, "SELECT state FROM jobs WHERE id = %s", job.id) == [("cancelled",)]


@pytest.fixture
def green_psycopg2() -> Iterator[None]:
    """psycopg2 on gevent, as the console script sets it up, for this test only."""
    from backy_gevent.db import green

    previous = psycopg2.extensions.get_wait_callback()
    green.install()
    yield
    psycopg2.extensions.set_wait_callback(previous)


def test_a_query_interrupted_by_the_timeout_is_cancelled_on_the_server(
    green_psycopg2: None, dsn: str, db: Any
) -> None:
    """psycopg2 closes a connection whose wait was interrupted, but closing alone would
    leave the query running on the server (PostgreSQL notices a gone client only when
    it next talks to it): the wait callback must cancel it first."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    pid = conn.get_backend_pid()
    try:
        QUERY_CONNECTIONS[7] = conn
        executor, sink, _ = make_executor()
        elapsed = run(executor, make_job("slow_query"), SlowQuery)
        assert elapsed < 2.0
        [(kind, (error, _))] = sink.outcomes
        assert (kind, error["error"]) == ("failed", "backy_gevent.job.JobTimeout")

        def still_running() -> list[Any]:
            return query(
                db,
                "SELECT query FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                pid,
            )

        wait_until(lambda: not still_running(), timeout=3, what="the query to stop")
    finally:
        QUERY_CONNECTIONS.pop(7, None)
        conn.close()


def test_a_snooze_runs_the_job_again_later_with_the_same_attempt(
    db_client: Client, db: Any
) -> None:
    job = db_client.enqueue(Snoozer, seconds=30)
    executor, completer = db_executor(db_client, delete=True)
    [claimed] = claim(db_client, "snoozer")
    gevent.spawn(executor.run, claimed, db_client.registry.get("snoozer")).join()
    completer.flush()
    row = db_client.get_job(job.id)
    assert row is not None
    assert (row.state, row.attempt, row.errors, row.runner_id) == ("available", 0, [], None)
    [(delay,)] = query(db, "SELECT extract(epoch FROM run_at - now()) FROM jobs")
    assert 28 < delay <= 30
    assert claim(db_client, "snoozer") == []  # not due yet
    query(db, "UPDATE jobs SET run_at = now()")
    [again] = claim(db_client, "snoozer")
    assert again.attempt == 1  # the same attempt as before the snooze


def test_a_cancel_from_inside_ends_the_job_cancelled_with_its_reason(
    db_client: Client, db: Any
) -> None:
    job = db_client.enqueue(Quitter)
    executor, completer = db_executor(db_client, delete=True)
    [claimed] = claim(db_client, "quitter")
    gevent.spawn(executor.run, claimed, db_client.registry.get("quitter")).join()
    completer.flush()
    row = db_client.get_job(job.id)
    assert row is not None and row.state == "cancelled" and row.finished_at is not None
    assert [(e["error"], e["message"]) for e in row.errors] == [
        ("backy_gevent.job.Cancel", "the customer closed their account")]


@pytest.mark.parametrize(
    ("returned", "kept"),
    [({"sent": 3, "to": ["a"]}, {"sent": 3, "to": ["a"]}), (None, None), ("ok", "ok"),
     (float("nan"), "nan"), ({1, 2}, "{1, 2}")],
)
def test_the_return_value_is_kept_as_json_when_rows_are_kept(
    db_client: Client, returned: Any, kept: Any
) -> None:
    job = db_client.enqueue(Ok, value=None)
    executor, completer = db_executor(db_client, delete=False)

    class Returns(Ok):
        def perform(self, job: Job, args: dict[str, Any]) -> Any:
            return returned

    [claimed] = claim(db_client, "ok")
    gevent.spawn(executor.run, claimed, Registration("ok", Returns, "test")).join()
    completer.flush()
    row = db_client.get_job(job.id)
    assert row is not None and row.state == "completed"
    assert row.result == kept

