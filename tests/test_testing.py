"""backy_gevent.testing: ``perform`` one job in-process, ``drain`` a table in-process.

These run the way a user's own test suite does: not monkey-patched.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from backy_example_workers.workers import Greet

import backy_gevent as backy
from backy_gevent import testing
from backy_gevent.backoff import exponential
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.errors import BadJobArgs, WorkerError
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import Job
from backy_gevent.worker import Registry
from tests.conftest import query

#: What the workers below saw, in order: (worker name, job id, attempt, args).
RUNS: list[tuple[str, int, int, dict[str, Any]]] = []
#: How many worker instances were made.
INSTANCES: list[backy.Worker] = []


@pytest.fixture(autouse=True)
def forget_runs() -> Iterator[None]:
    RUNS.clear()
    INSTANCES.clear()
    yield
    RUNS.clear()
    INSTANCES.clear()


class Recorded(backy.Worker):
    """Records each run in RUNS."""

    def __init__(self) -> None:
        INSTANCES.append(self)

    def perform(self, job: Job, args: dict[str, Any]) -> Any:
        RUNS.append((job.worker, job.id, job.attempt, args))
        return self.work(job, args)

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        return None


class Echo(Recorded):
    name = "echo"

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        return args


class Fails(Recorded):
    """Fails every attempt; retries twice, a minute apart."""

    name = "fails"
    retry_count = 2
    retry_delay = exponential(base=60.0, jitter=0)

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        raise ValueError(f"boom on attempt {job.attempt}")


class FailsForGood(Fails):
    name = "fails_for_good"
    retry_count = 0


class FailsOnce(Recorded):
    """Fails its first attempt; its retry is due at once."""

    name = "fails_once"

    def retry_delay(self, retry: int) -> float:
        return 0.0

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        if job.attempt == 1:
            raise ConnectionError("first attempt fails")
        return "second time lucky"


class FailsSoon(Fails):
    """Fails; its retry falls due in 50 ms."""

    name = "fails_soon"

    def retry_delay(self, retry: int) -> float:
        return 0.05


class Snoozes(Recorded):
    """Snoozes ``seconds`` (default 30) on its first run, completes on the next."""

    name = "snoozes"

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        if sum(1 for run in RUNS if run[1] == job.id) == 1:
            raise backy.Snooze(args.get("seconds", 30))
        return "woke up"


class SnoozesForEver(Recorded):
    name = "snoozes_for_ever"

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        raise backy.Snooze(0)


class Quits(Recorded):
    name = "quits"

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        raise backy.Cancel("the customer closed their account")


class Slow(Recorded):
    """Sleeps ``seconds`` the gevent way (it yields), by default past its 0.2 s
    max_runtime; then enqueues a job of its own kind that sleeps ``then`` seconds, if
    given, through the default client."""

    name = "slow"
    max_runtime = 0.2
    retry_count = 0

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        gevent.sleep(float(args.get("seconds", 5)))
        if "then" in args:
            backy.enqueue(Slow, seconds=args["then"])
        return "slept"


class Blocks(Recorded):
    """Sleeps ``seconds`` with the unpatched time.sleep: it never yields."""

    name = "blocks"
    max_runtime = 0.2

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        time.sleep(float(args.get("seconds", 0.4)))
        return "slept"


class Swallows(Recorded):
    """Tries to swallow its timeout with ``except Exception``."""

    name = "swallows"
    max_runtime = 0.2

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        try:
            gevent.sleep(5)
        except Exception:
            return "swallowed"
        return "slept"


class Touches(Recorded):
    """Works for 0.8 s in steps of 0.1 s, touching after each, so never 0.3 s untouched
    (the touch's round trip to the database included). ``yields``: gevent.sleep (true)
    or time.sleep (false)."""

    name = "touches"
    max_runtime = 0.3

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        pause = gevent.sleep if args.get("yields", True) else time.sleep
        expiries = []
        for _ in range(8):
            pause(0.1)
            job.touch()
            expiries.append(job.expires_at)
        return [str(expiry) for expiry in expiries]


class CantBeBuilt(backy.Worker):
    name = "cant_be_built"

    def __init__(self) -> None:
        raise RuntimeError("can't build")

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        pass


class BadSettings(backy.Worker):
    name = "bad_settings"
    max_runtime = -1.0

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        pass


class Spawns(Recorded):
    """Enqueues ``children`` jobs of its own kind with ``depth - 1`` (none at depth 0)
    through the default client, as application code does, and one more due in an hour."""

    name = "spawns"

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        depth, children = int(args["depth"]), int(args.get("children", 1))
        if depth > 0:
            backy.enqueue_many(Spawns, [{"depth": depth - 1, "children": children}] * children)
            backy.enqueue(Spawns, depth=0, delay=3600)
        return depth


WORKERS = (Echo, Fails, FailsForGood, FailsOnce, FailsSoon, Snoozes, SnoozesForEver, Quits,
           Slow, Blocks, Touches, Spawns)


class Spy:
    """A hook plugin that records which hooks were called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @backy.hookimpl
    def backy_before_job(self, job: Job) -> None:
        self.calls.append(("before", job.attempt))

    @backy.hookimpl
    def backy_after_job(self, result: Any) -> None:
        self.calls.append(("after", result))

    @backy.hookimpl
    def backy_on_failure(self, error: BaseException, will_retry: bool) -> None:
        self.calls.append(("failure", (type(error).__name__, will_retry)))


def spy_hooks() -> tuple[Hooks, Spy]:
    spy = Spy()
    return Hooks(build_plugin_manager([("spy", spy)], load_entry_points=False)), spy


# -- perform ----------------------------------------------------------------------------


def test_perform_returns_what_perform_returned_with_a_first_attempt() -> None:
    assert testing.perform(Echo, {"to": "a@example.com"}) == {"to": "a@example.com"}
    assert RUNS == [("echo", 1, 1, {"to": "a@example.com"})]


def test_perform_makes_the_job_a_runner_would_with_the_fields_asked_for() -> None:
    seen: list[Job] = []

    class Inspect(backy.Worker):
        name = "inspect"
        queue = "mail"
        priority = 3
        retry_count = 5

        def perform(self, job: Job, args: dict[str, Any]) -> None:
            seen.append(job)

    testing.perform(Inspect)
    testing.perform(Inspect, job_id=42, attempt=3, max_attempts=4, queue="q", priority=-1)
    first, second = seen
    assert (first.id, first.worker, first.attempt, first.max_attempts, first.state) == (
        1, "inspect", 1, 6, "running")
    assert (first.queue, first.priority, first.args, first.errors) == ("mail", 3, {}, [])
    assert first.run_at.tzinfo is not None and first.runner_id is not None
    assert (second.id, second.attempt, second.max_attempts, second.retries_left) == (42, 3, 4, 1)
    assert (second.queue, second.priority) == ("q", -1)
    with pytest.raises(ValueError, match="attempt"):
        testing.perform(Inspect, attempt=0)


def test_perform_merges_args_and_keywords_as_enqueue_does() -> None:
    testing.perform(Echo, {"a": 1, "b": 1}, b=2, c=3)
    # A job arg named like an option of perform goes in args.
    testing.perform(Echo, {"attempt": "mine", "hooks": None})
    assert [run[3] for run in RUNS] == [{"a": 1, "b": 2, "c": 3},
                                        {"hooks": None, "attempt": "mine"}]
    assert RUNS[1][2] == 1


def test_perform_a_worker_by_its_entry_point_name_or_class() -> None:
    assert testing.perform("greet", name="foo bar") == "hello foo bar"
    seen: list[str] = []

    class Named(Greet):
        def perform(self, job: Job, args: dict[str, Any]) -> str:
            seen.append(job.worker)
            return ""

    testing.perform(Greet, name="x")
    assert testing.perform(Greet) == "hello world"
    testing.perform(Named)
    assert seen[0].endswith(".Named")  # a class no entry point names: its own name


def test_perform_gives_the_entry_point_name_to_a_class_without_one(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    original = Greet.perform

    def recording(self: Greet, job: Job, args: dict[str, Any]) -> str:
        seen.append(job.worker)
        return original(self, job, args)

    monkeypatch.setattr(Greet, "perform", recording)
    testing.perform(Greet)
    assert seen == ["greet"]


def test_perform_passes_args_through_json_as_the_table_would() -> None:
    received = testing.perform(
        Echo,
        point=(1, 2),
        nested={"pair": (3, (4, 5))},
        ratio=1.5,
        big=1e16,
        tiny=1.5e-7,
        zero=-0.0,
        unicode="café ☕",
    )
    assert received == {"point": [1, 2], "nested": {"pair": [3, [4, 5]]}, "ratio": 1.5,
                        "big": 10**16, "tiny": 1.5e-7, "zero": 0.0, "unicode": "café ☕"}
    assert isinstance(received["big"], int)
    # jsonb's order: shortest keys first, then byte order.
    assert list(received) == ["big", "tiny", "zero", "point", "ratio", "nested", "unicode"]
    assert testing.perform(Echo, point=(1, 2)) != {"point": (1, 2)}  # as a test would see


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"when": datetime.datetime(2024, 1, 1)}, "'when'"),
        ({"tags": {"a", "b"}}, "'tags'"),
        ({"ratio": float("nan")}, "'ratio'"),
        ({"huge": 1e999}, "'huge'"),
        ({"text": "nul\x00"}, "'text'"),
        ({1: "one"}, "1"),
    ],
)
def test_perform_refuses_args_json_cant_hold_as_enqueue_does(
    args: dict[Any, Any], named: str
) -> None:
    with pytest.raises(BadJobArgs, match=named) as raised:
        testing.perform(Echo, args)
    assert isinstance(raised.value, TypeError)
    assert INSTANCES == []  # refused before anything ran
    with pytest.raises(BadJobArgs, match="must be a dict"):
        testing.perform(Echo, [("a", 1)])  # type: ignore[arg-type]


def test_perform_raises_what_perform_raised() -> None:
    with pytest.raises(ValueError, match="boom on attempt 2") as raised:
        testing.perform(Fails, attempt=2)
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert any(frame.name == "work" for frame in frames)  # the worker's own traceback


def test_perform_lets_snooze_and_cancel_through_as_they_are() -> None:
    with pytest.raises(backy.Snooze) as snoozed:
        testing.perform(Snoozes, seconds=90)
    assert snoozed.value.seconds == 90.0
    with pytest.raises(backy.Cancel) as cancelled:
        testing.perform(Quits)
    assert cancelled.value.reason == "the customer closed their account"


def test_perform_builds_a_fresh_worker_for_every_job() -> None:
    testing.perform(Echo)
    testing.perform(Echo)
    assert len(INSTANCES) == 2 and INSTANCES[0] is not INSTANCES[1]
    with pytest.raises(RuntimeError, match="can't build"):
        testing.perform(CantBeBuilt)


def test_perform_refuses_a_worker_a_runner_would_refuse() -> None:
    with pytest.raises(WorkerError, match=r"max_runtime=-1\.0"):
        testing.perform(BadSettings)
    with pytest.raises(WorkerError, match=r"not a backy_gevent\.Worker subclass"):
        testing.perform(dict)  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match="unknown worker 'no_such_worker'"):
        testing.perform("no_such_worker")


def test_perform_stops_a_job_past_max_runtime_where_it_yields() -> None:
    started = time.monotonic()
    with pytest.raises(backy.JobTimeout, match="max_runtime"):
        testing.perform(Slow, seconds=5)
    assert 0.2 <= time.monotonic() - started < 1.0
    with pytest.raises(backy.JobTimeout):
        testing.perform(Swallows)  # a BaseException: except Exception doesn't catch it
    assert testing.perform(Slow, seconds=0.05) == "slept"


def test_perform_fails_a_job_that_returned_past_max_runtime_without_yielding() -> None:
    # Unpatched time.sleep can't be interrupted; a runner would have stopped it.
    started = time.monotonic()
    with pytest.raises(backy.JobTimeout, match="max_runtime"):
        testing.perform(Blocks, seconds=0.4)
    assert time.monotonic() - started >= 0.4  # it ran to its end
    assert testing.perform(Blocks, seconds=0.05) == "slept"


PATCHED_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import time
import backy_gevent as backy
from backy_gevent import testing

class Sleeps(backy.Worker):
    name = "sleeps"
    max_runtime = 0.2

    def perform(self, job, args):
        time.sleep(5)

started = time.monotonic()
try:
    testing.perform(Sleeps)
except backy.JobTimeout:
    print(f"JobTimeout after {time.monotonic() - started:.1f}s")
"""


def test_perform_in_a_monkey_patched_process_interrupts_a_blocking_call() -> None:
    done = subprocess.run([sys.executable, "-c", PATCHED_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "JobTimeout after 0.2s", done.stderr


@pytest.mark.parametrize("yields", [True, False])
def test_touch_restarts_the_clock_without_a_database(yields: bool) -> None:
    started = time.monotonic()
    expiries = testing.perform(Touches, yields=yields)
    assert time.monotonic() - started >= 0.8 > 2.5 * Touches.max_runtime
    assert expiries == ["None"] * 8  # no lease to extend


def test_perform_calls_hooks_only_when_given() -> None:
    spy = Spy()
    pm = build_plugin_manager([("spy", spy)], load_entry_points=False)
    testing.perform(Echo, n=1)
    assert spy.calls == []
    hooks = Hooks(pm)
    testing.perform(Echo, n=1, hooks=hooks)
    with pytest.raises(ValueError):
        testing.perform(Fails, hooks=hooks)
    with pytest.raises(ValueError):
        testing.perform(Fails, attempt=3, hooks=hooks)
    assert spy.calls == [
        ("before", 1), ("after", {"n": 1}),
        ("before", 1), ("failure", ("ValueError", True)),
        ("before", 3), ("failure", ("ValueError", False)),
    ]


# -- perform against the real table ----------------------------------------------------


@pytest.fixture
def tclient(settings: Settings) -> Iterator[Client]:
    """A client of the test schema that knows this module's workers."""
    c = Client(settings, registry=Registry.from_classes(*WORKERS))
    c.setup()
    yield c
    c.close()


@pytest.mark.parametrize(
    "args",
    [
        {"point": (1, 2), "nested": {"b": [1.0, {"zz": 1, "a": 2}], "a": None}},
        {"big": 1e16, "bigger": 2.5e300, "tiny": 5e-324, "neg": -1.5e-7, "zero": -0.0},
        {"whole": 3.0, "int": 10**30, "bool": True, "ratio": 0.1 + 0.2},
        {"é": 1, "e": 2, "ee": 3, "\u2603": 4, "Z": 5, "😀": 6, "": 7},
    ],
)
def test_perform_gives_a_job_the_args_the_table_gives_back(
    tclient: Client, args: dict[str, Any]
) -> None:
    from_the_table = tclient.enqueue(Echo, args).args  # RETURNING *: what a claim reads
    performed = testing.perform(Echo, args)
    assert performed == from_the_table
    assert repr(performed) == repr(from_the_table)  # key order and int/float alike


# -- drain ------------------------------------------------------------------------------


def states(db: Any) -> dict[int, tuple[str, int]]:
    return {row[0]: (row[1], row[2]) for row in query(db, "SELECT id, state, attempt FROM jobs")}


def test_drain_runs_every_due_job_and_counts_each_outcome(tclient: Client, db: Any) -> None:
    echo = tclient.enqueue(Echo, n=1)
    fails = tclient.enqueue(Fails)
    for_good = tclient.enqueue(FailsForGood)
    quits = tclient.enqueue(Quits)
    snoozes = tclient.enqueue(Snoozes, seconds=30)
    counts = testing.drain(tclient)
    assert counts == {"completed": 1, "retried": 1, "failed": 1, "cancelled": 1, "snoozed": 1}
    assert list(counts) == list(testing.OUTCOMES)
    assert states(db) == {
        fails.id: ("available", 1),
        for_good.id: ("failed", 1),
        quits.id: ("cancelled", 1),
        snoozes.id: ("available", 0),
    }  # echo's row was deleted (delete_finished_jobs)
    assert echo.id not in states(db)
    [(errors,)] = query(db, "SELECT errors FROM jobs WHERE id = %s", fails.id)
    assert errors[0]["message"] == "boom on attempt 1"
    assert query(db, "SELECT count(*) FROM jobs WHERE runner_id IS NOT NULL") == [(0,)]
    assert testing.drain(tclient) == dict.fromkeys(testing.OUTCOMES, 0)  # nothing is due


def test_drain_keeps_results_when_rows_are_kept(settings: Settings, db: Any) -> None:
    with Client(settings.replace(delete_finished_jobs=False),
                registry=Registry.from_classes(*WORKERS)) as keeping:
        keeping.setup()
        job = keeping.enqueue(Echo, n=7)
        assert testing.drain(keeping)["completed"] == 1
        done = keeping.get_job(job.id)
    assert done is not None
    assert (done.state, done.result, done.runner_id) == ("completed", {"n": 7}, None)
    assert done.runner_id is None and done.attempted_at is not None


def test_drain_leaves_jobs_due_later(tclient: Client, db: Any) -> None:
    later = tclient.enqueue(Echo, n=1, delay=60)
    at = tclient.enqueue(Echo, n=2, run_at=datetime.datetime.now(datetime.timezone.utc)
                         + datetime.timedelta(hours=1))
    now = tclient.enqueue(Echo, n=3)
    assert testing.drain(tclient)["completed"] == 1
    assert [run[1] for run in RUNS] == [now.id]
    assert states(db) == {later.id: ("available", 0), at.id: ("available", 0)}


def test_drain_runs_in_the_order_a_runner_starts_jobs(tclient: Client) -> None:
    low = tclient.enqueue(Echo, priority=5)
    first = tclient.enqueue(Echo)
    urgent = tclient.enqueue(Fails, priority=-1)
    old = tclient.enqueue(
        Echo, run_at=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    testing.drain(tclient)
    assert [run[1] for run in RUNS] == [urgent.id, old.id, first.id, low.id]


def test_a_retry_or_snooze_due_at_once_runs_again_in_the_same_drain(
    tclient: Client, db: Any
) -> None:
    flaky = tclient.enqueue(FailsOnce)
    snoozy = tclient.enqueue(Snoozes, seconds=0)
    counts = testing.drain(tclient)
    assert counts == {"completed": 2, "retried": 1, "failed": 0, "cancelled": 0, "snoozed": 1}
    assert sorted((run[1], run[2]) for run in RUNS) == sorted(
        [(flaky.id, 1), (flaky.id, 2), (snoozy.id, 1), (snoozy.id, 1)])
    assert states(db) == {}


def test_a_retry_or_snooze_for_later_is_not_run_again_by_the_same_drain(
    default_client: Client, db: Any
) -> None:
    """Their delays (50 ms) pass while the drain goes on: the job that ran beside them
    enqueued one that sleeps 0.15 s in a second round. They are not run again."""
    fails = backy.enqueue(FailsSoon)
    snoozes = backy.enqueue(Snoozes, seconds=0.05)
    backy.enqueue(Slow, seconds=0, then=0.15)
    counts = testing.drain(default_client)
    assert counts == {"completed": 2, "retried": 1, "failed": 0, "cancelled": 0, "snoozed": 1}
    assert [run[1] for run in RUNS if run[0] != "slow"] == [fails.id, snoozes.id]
    assert states(db) == {fails.id: ("available", 1), snoozes.id: ("available", 0)}
    # Their delays count from the end of the drain; once they pass, a drain runs them.
    time.sleep(0.1)
    assert testing.drain(default_client) == {
        "completed": 1, "retried": 1, "failed": 0, "cancelled": 0, "snoozed": 0}


def test_a_job_seen_through_all_its_attempts_in_one_drain(
    tclient: Client, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the README says: retries due at once run in the same drain.
    monkeypatch.setattr(Fails, "retry_delay", exponential(base=0))
    job = tclient.enqueue(Fails)
    assert testing.drain(tclient) == {
        "completed": 0, "retried": 2, "failed": 1, "cancelled": 0, "snoozed": 0}
    assert states(db) == {job.id: ("failed", 3)}
    [(errors,)] = query(db, "SELECT errors FROM jobs")
    assert [error["attempt"] for error in errors] == [1, 2, 3]


@pytest.fixture
def default_client(dsn: str) -> Iterator[Client]:
    """The default client (backy.enqueue's) on the test schema, knowing this module's
    workers besides the installed example workers."""
    backy.configure(dsn=dsn, imports=[f"{__name__}:{cls.__name__}" for cls in WORKERS])
    client = backy._default().get()
    client.setup()
    yield client
    backy.configure()


def test_drain_runs_the_jobs_that_jobs_enqueue(default_client: Client, db: Any) -> None:
    backy.enqueue(Spawns, depth=3, children=2)
    counts = testing.drain()  # the default client, every worker it registered
    # 1 + 2 + 4 + 8 jobs ran, each enqueuing its children during the drain; the seven
    # jobs of depth > 0 each left one due in an hour.
    assert counts["completed"] == 15
    assert sorted(run[3]["depth"] for run in RUNS) == [0] * 8 + [1] * 4 + [2] * 2 + [3]
    assert query(db, "SELECT state, count(*) FROM jobs GROUP BY state") == [("available", 7)]


def test_drain_ends_after_max_rounds_when_the_table_never_drains(
    tclient: Client, db: Any
) -> None:
    looping = tclient.enqueue(SnoozesForEver)
    echo = tclient.enqueue(Echo)
    with pytest.raises(testing.TooManyRounds, match="after 5 rounds") as raised:
        testing.drain(tclient, max_rounds=5)
    assert raised.value.counts == {
        "completed": 1, "retried": 0, "failed": 0, "cancelled": 0, "snoozed": 5}
    # Every outcome written; the job the last claim took handed back, unspent.
    assert states(db) == {looping.id: ("available", 0)}
    assert echo.id not in states(db)
    assert testing.MAX_ROUNDS == 100


def test_drain_runs_only_the_workers_named(tclient: Client, db: Any) -> None:
    echo = tclient.enqueue(Echo)
    fails = tclient.enqueue(Fails)
    quits = tclient.enqueue(Quits)
    assert testing.drain(tclient, workers=["echo", Quits])["completed"] == 1
    assert states(db) == {fails.id: ("available", 0), quits.id: ("cancelled", 1)}
    assert testing.drain(tclient, workers=Fails)["retried"] == 1
    assert echo.id not in states(db)
    with pytest.raises(WorkerError, match="unknown worker"):
        testing.drain(tclient, workers=["no_such_worker"])


def test_drain_applies_max_runtime(tclient: Client, db: Any) -> None:
    slow = tclient.enqueue(Slow, seconds=5)
    started = time.monotonic()
    assert testing.drain(tclient)["failed"] == 1  # Slow has no retries
    assert time.monotonic() - started < 2.0
    [(errors,)] = query(db, "SELECT errors FROM jobs WHERE id = %s", slow.id)
    assert errors[0]["error"] == "backy_gevent.job.JobTimeout"


class TouchesTheLease(Recorded):
    """Touches three times and returns the lease's end after each. (A generous
    max_runtime: a touch is a commit, and a busy server may take a while.)"""

    name = "touches_the_lease"
    max_runtime = 10.0

    def work(self, job: Job, args: dict[str, Any]) -> Any:
        expiries = []
        for _ in range(3):
            gevent.sleep(0.01)
            job.touch()
            expiries.append(job.expires_at)
        EXPIRIES.extend(expiries)


EXPIRIES: list[datetime.datetime] = []


def test_drain_touch_extends_the_lease_in_the_table(tclient: Client) -> None:
    with Client(tclient.settings, registry=Registry.from_classes(TouchesTheLease)) as client:
        job = client.enqueue(TouchesTheLease)
        EXPIRIES.clear()
        assert testing.drain(client)["completed"] == 1
    assert len(EXPIRIES) == 3 and None not in EXPIRIES
    assert sorted(set(EXPIRIES)) == EXPIRIES  # moved on at every touch
    assert EXPIRIES[0] - job.enqueued_at >= datetime.timedelta(seconds=10)


def test_drain_runs_a_quarantined_job_here(tclient: Client, db: Any) -> None:
    job = tclient.enqueue(Echo)
    query(db, "UPDATE jobs SET quarantined = true WHERE id = %s", job.id)
    assert testing.drain(tclient)["completed"] == 1
    assert [run[1] for run in RUNS] == [job.id]  # RUNS is this process's


def test_drain_calls_hooks_only_when_given(tclient: Client) -> None:
    hooks, spy = spy_hooks()
    tclient.enqueue(Echo, n=1)
    testing.drain(tclient)
    tclient.enqueue(Echo, n=2)
    tclient.enqueue(FailsForGood)
    testing.drain(tclient, hooks=hooks)
    assert spy.calls == [
        ("before", 1), ("after", {"n": 2}), ("before", 1), ("failure", ("ValueError", False))]
