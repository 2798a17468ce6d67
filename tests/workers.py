"""Small workers for the tests. Each records its runs in the ``runs`` table of the
test's schema (``BACKY_TEST_RECORD_DSN``), so a test can assert on what really ran.

Runners load them with ``--import tests.workers:Name`` (see conftest's ``runner``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import gevent
import psycopg2

import backy_gevent as backy

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS runs (
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    worker text NOT NULL,
    pid integer NOT NULL,
    isolated boolean NOT NULL DEFAULT false,
    args jsonb,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""


def runner_pid() -> tuple[int, bool]:
    """The pid of the runner this attempt runs in, and whether it runs isolated: in a
    quarantine child of that runner (see backy_gevent.runner.isolation)."""
    main = sys.modules["__main__"]
    if getattr(getattr(main, "__spec__", None), "name", "") == "backy_gevent.runner.isolated":
        return os.getppid(), True
    return os.getpid(), False


class _RecordConnections:
    """Connections of one process for the workers' records, kept open for the next one
    (autocommit), at most ``size`` in use at once.

    Connecting costs the server a forked backend, about 5 ms of CPU: a test that ran a
    few hundred Record jobs spent more of the machine connecting than running the jobs
    and enqueuing them, and its timing bounds measured that. A connection that fails is
    dropped. One that sat idle here may have been ended meanwhile (a fault test
    terminates every backend): a statement that fails on it is sent again, on another
    one. With ``ride_out_faults`` a statement is retried through database faults until
    it succeeds (or the attempt is stopped at ``max_runtime``): it must be idempotent,
    since one whose connection broke at its commit may have been written already.
    Plain psycopg2, not backy_gevent's ``ConnectionPool``: what records the runs must
    not depend on the code under test.
    """

    def __init__(self, size: int, *, connect_timeout: int | None = None) -> None:
        self.size = size
        self.connect_timeout = connect_timeout
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._slots: threading.BoundedSemaphore | None = None

    def execute(self, sql: str, params: tuple[Any, ...], *, ride_out_faults: bool = False
                ) -> None:
        """Run one statement, committed."""
        if self._slots is None:  # made at first use: after gevent, if any, has patched
            self._slots = threading.BoundedSemaphore(self.size)
        if self._pid != os.getpid():  # a forked child must not use (or close) these
            self._idle, self._pid = [], os.getpid()
        pause = 0.05
        while True:
            with self._slots:
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else None
                try:
                    if conn is None:
                        conn = self._connect()
                    with conn.cursor() as cur:
                        cur.execute(sql, params)
                except BaseException as exc:
                    if conn is not None:
                        conn.close()
                    if not isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                        raise
                    if reused:
                        continue  # ended while idle: try the next one, or a new one
                    if not ride_out_faults:
                        raise
                else:
                    self._idle.append(conn)
                    return
            gevent.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _connect(self) -> Any:
        conn = psycopg2.connect(
            os.environ["BACKY_TEST_RECORD_DSN"], connect_timeout=self.connect_timeout
        )
        conn.autocommit = True
        return conn


#: How many ``record`` calls of one process may hold a connection at once: two runners
#: running a few hundred Record jobs at once went past the test server's 100
#: connections ("too many clients already"), failing attempts that then ran again.
RECORDS_AT_ONCE = 32
_records = _RecordConnections(RECORDS_AT_ONCE)


def record(job: backy.Job, *, finished: bool = False, at: float | None = None) -> None:
    """Write one row into ``runs`` for this attempt (or mark it finished); ``at`` (a
    ``time.time()``) is when it started, if not now: connecting may take a moment."""
    pid, isolated = runner_pid()
    if finished:
        _records.execute(
            "UPDATE runs SET finished_at = clock_timestamp()"
            " WHERE job_id = %s AND attempt = %s AND pid = %s",
            (job.id, job.attempt, pid),
        )
    else:
        _records.execute(
            "INSERT INTO runs (job_id, attempt, worker, pid, isolated, args, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb,"
            " coalesce(to_timestamp(%s), clock_timestamp()))",
            (job.id, job.attempt, job.worker, pid, isolated,
             psycopg2.extras.Json(job.args), at),
        )


import psycopg2.extras  # noqa: E402


class Record(backy.Worker):
    """Records the run and returns."""

    name = "record"
    max_runtime = 10.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        record(job, finished=True)


class Sleep(backy.Worker):
    """Records, sleeps ``seconds`` (touching every ``touch_every`` if set), records the end."""

    name = "sleep"
    max_runtime = 1.0
    requeue_delay = 1.0
    retry_count = 0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        seconds = float(args.get("seconds", 0.5))
        touch_every = args.get("touch_every")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            gevent.sleep(min(left, float(touch_every or left)))
            if touch_every:
                backy.touch(job)
        record(job, finished=True)


class Limited(backy.Worker):
    """Sleeps briefly with at most two running at once per runner."""

    name = "limited"
    max_concurrency = 2
    max_runtime = 5.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        gevent.sleep(float(args.get("seconds", 0.2)))
        record(job, finished=True)


class FleetCapped(backy.Worker):
    """Sleeps ``seconds`` with at most two attempts running at once across all runners."""

    name = "fleet_capped"
    global_concurrency = 2
    # Room for the two connections record() opens: on two busy cores one attempt of 0.05 s
    # took over a second and timed out (then rightly ran again).
    max_runtime = 3.0
    requeue_delay = 1.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        gevent.sleep(float(args.get("seconds", 0.3)))
        record(job, finished=True)


class RateLimited(backy.Worker):
    """Records and returns; at most three starts a second across all runners."""

    name = "rate_limited"
    rate_limit = (3, 1.0)
    max_runtime = 5.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job, at=time.time())
        record(job, finished=True)


class Fail(backy.Worker):
    """Always raises; retries twice, 0.2 s apart."""

    name = "fail"
    retry_count = 2

    def retry_delay(self, retry: int) -> float:
        return 0.2

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        raise ValueError(f"boom on attempt {job.attempt}")


class Crash(backy.Worker):
    """Kills its own runner process with SIGKILL: a job that takes its runner down."""

    name = "crash"
    max_runtime = 1.0
    requeue_delay = 1.0
    retry_count = 1

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        os.kill(os.getpid(), 9)


ALL = (Record, Sleep, Limited, FleetCapped, RateLimited, Fail, Crash)


class FailDefault(backy.Worker):
    """Always raises; how often and how soon it is retried is the configuration's."""

    name = "fail_default"

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        raise ValueError(f"boom on attempt {job.attempt}")


class Hang(backy.Worker):
    """Touches every 0.2 s for ``seconds`` (default 30) so it is never stopped at
    max_runtime, unless it runs in quarantine (its runner died under it: see
    runner.isolation) or past its first attempt: then it finishes at once."""

    name = "hang"
    max_runtime = 1.0
    requeue_delay = 1.0
    retry_count = 2

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        if job.attempt == 1 and not job.quarantined:
            end = time.monotonic() + float(args.get("seconds", 30))
            while time.monotonic() < end:
                gevent.sleep(0.2)
                backy.touch(job)
            backy.touch(job)  # the last record gets a max_runtime of its own
        record(job, finished=True)


class RecordTwin(backy.Worker):
    """A second worker named "record" (not in ALL): registering both is a start-up error."""

    name = "record"

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)


ALL = (*ALL, FailDefault, Hang)


class FailOnce(backy.Worker):
    """Raises on its first attempt, then succeeds and returns ``{"attempt": N}``."""

    name = "fail_once"
    retry_count = 1

    def retry_delay(self, retry: int) -> float:
        return 0.1

    def perform(self, job: backy.Job, args: dict[str, Any]) -> dict[str, int]:
        record(job)
        if job.attempt == 1:
            raise ValueError("first attempt fails")
        record(job, finished=True)
        return {"attempt": job.attempt}


ALL = (*ALL, FailOnce)


class FanOut(backy.Worker):
    """Enqueues ``count`` ``record`` jobs with ``backy.enqueue_many`` from inside the runner
    (the default client there is the runner's: it counts ``backy_jobs_enqueued_total``)."""

    name = "fan_out"

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        backy.enqueue_many("record", [{"from": job.id}] * int(args.get("count", 1)))
        record(job, finished=True)


ALL = (*ALL, FanOut)


class SnoozeOnce(backy.Worker):
    """Snoozes ``seconds`` on its first run, then returns what ``cancel`` says: raises
    ``Cancel`` when it is a reason, else returns its attempt number."""

    name = "snooze_once"
    max_runtime = 5.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> Any:
        record(job)
        conn = psycopg2.connect(os.environ["BACKY_TEST_RECORD_DSN"])
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM runs WHERE job_id = %s", (job.id,))
                runs = cur.fetchone()[0]
        finally:
            conn.close()
        if runs == 1:
            raise backy.Snooze(float(args.get("seconds", 0.3)))
        record(job, finished=True)
        if args.get("cancel"):
            raise backy.Cancel(args["cancel"])
        return {"attempt": job.attempt}


ALL = (*ALL, SnoozeOnce)


#: ``Steady``'s records: a few connections, each given up on after 2 s of connecting.
_steady_records = _RecordConnections(4, connect_timeout=2)

#: ``Steady`` also records when its attempt was claimed (the claim's ``attempted_at``), so
#: that a fault test can tell work claimed after a fault from work already under way.
STEADY_RUNS_COLUMNS = "ALTER TABLE runs ADD COLUMN IF NOT EXISTS claimed_at timestamptz"


def steady_record(job: backy.Job, *, finished: bool = False) -> None:
    """``record`` riding out database faults (``_steady_records``), idempotent, so that a
    statement retried after its connection broke at commit writes nothing twice."""
    pid, isolated = runner_pid()
    if finished:
        _steady_records.execute(
            "UPDATE runs SET finished_at = clock_timestamp()"
            " WHERE job_id = %s AND attempt = %s AND pid = %s AND finished_at IS NULL",
            (job.id, job.attempt, pid), ride_out_faults=True,
        )
    else:
        _steady_records.execute(
            "INSERT INTO runs (job_id, attempt, worker, pid, isolated, args, claimed_at)"
            " SELECT %s, %s, %s, %s, %s, %s::jsonb, %s WHERE NOT EXISTS ("
            "SELECT FROM runs WHERE job_id = %s AND attempt = %s AND pid = %s)",
            (job.id, job.attempt, job.worker, pid, isolated, psycopg2.extras.Json(job.args),
             job.attempted_at, job.id, job.attempt, pid), ride_out_faults=True,
        )


class Steady(backy.Worker):
    """For the fault suite (tests/faults): records its start, sleeps ``seconds`` (default
    0.02), records its end, like ``Sleep``, but over a few reused connections that ride
    out database faults (the ``runs`` table needs ``STEADY_RUNS_COLUMNS``). A short
    lease (max_runtime 1 + requeue_delay 1) so a dead runner's jobs come back quickly,
    and retries enough that a job whose runner dies again and again still ends up done;
    at most 20 at once per runner."""

    name = "steady"
    max_runtime = 1.0
    requeue_delay = 1.0
    max_concurrency = 20
    retry_count = 20

    def retry_delay(self, retry: int) -> float:
        return 0.1

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        steady_record(job)
        gevent.sleep(float(args.get("seconds", 0.02)))
        steady_record(job, finished=True)


ALL = (*ALL, Steady)


class EveryMinute(backy.Worker):
    """A periodic job, every minute: records its run (tests/acceptance/test_cron.py).
    Not in ALL: every runner of the other tests would enqueue it once a minute."""

    name = "every_minute"
    cron = "* * * * *"
    max_runtime = 10.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        record(job, finished=True)


class Hourly(EveryMinute):
    """A second periodic job, at minute 0 of every hour in Berlin."""

    name = "hourly"
    cron = "0 * * * *"
    cron_timezone = "Europe/Berlin"


#: The periodic test workers: load them with ``--import`` where a test wants them.
CRON = (EveryMinute, Hourly)


class BadCron(EveryMinute):
    """A cron of four fields: refused when registered (not when defined)."""

    name = "bad_cron"
    cron = "*/5 * * *"
