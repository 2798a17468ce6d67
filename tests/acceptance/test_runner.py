"""``backy-gevent run`` as a subprocess, with real signals and a real database.

Workers record each attempt in the ``runs`` table (tests/workers.py); the assertions are
on those rows, on the jobs table, on exit statuses and on the runner's log. Timings
come from database timestamps and are checked against bounds derived from the options.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from backy_gevent.runner.fetcher import IDLE_POLLS
from backy_gevent.runner.maintenance import BEAT_SECONDS, LEADER_LEASE_SECONDS
from backy_gevent.worker import Registry
from tests import workers
from tests.acceptance.scraping import free_port, scrape, value
from tests.conftest import RunnerProcess, cli_env, query, wait_until, with_search_path

POLL = 0.2
FAST = ("--poll-interval", str(POLL))
#: A dead leader's successor rescues its jobs once the leadership's lease ran out and it
#: beat again (README, "Timing bound").
HANDOVER = LEADER_LEASE_SECONDS + BEAT_SECONDS


def rescue_bound(worker: type, leader_died: bool) -> float:
    """When a dead runner's jobs of ``worker`` must run again (README, "Timing bound")."""
    lease = worker.max_runtime + worker.requeue_delay
    return max(lease, HANDOVER if leader_died else 0.0) + POLL + 1.0
Runner = Callable[..., RunnerProcess]


def runs(db: Any, job_id: int | None = None) -> list[dict[str, Any]]:
    """The recorded attempts, oldest first."""
    sql = ("SELECT job_id, attempt, worker, pid, isolated, args, started_at, finished_at"
           " FROM runs")
    rows = query(db, sql + " WHERE job_id = %s ORDER BY started_at", job_id) if job_id else (
        query(db, sql + " ORDER BY started_at")
    )
    names = ("job_id", "attempt", "worker", "pid", "isolated", "args", "started_at",
             "finished_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


def job_row(db: Any, job_id: int) -> dict[str, Any] | None:
    with db.cursor() as cur:
        cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c.name for c in cur.description], row, strict=True))


def state(db: Any, job_id: int) -> str | None:
    row = job_row(db, job_id)
    return None if row is None else str(row["state"])


def count_jobs(db: Any) -> int:
    return int(query(db, "SELECT count(*) FROM jobs")[0][0])


def seconds(delta: datetime.timedelta) -> float:
    return delta.total_seconds()


def db_now(db: Any) -> datetime.datetime:
    return query(db, "SELECT clock_timestamp()")[0][0]  # type: ignore[no-any-return]


def max_overlap(intervals: list[tuple[datetime.datetime, datetime.datetime]]) -> int:
    """The most intervals open at one instant (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))
    open_now = highest = 0
    for _, step in events:
        open_now += step
        highest = max(highest, open_now)
    return highest


# -- each job once, args intact ------------------------------------------------------


def test_two_runners_run_each_of_200_jobs_exactly_once(
    runner: Runner, client: Client, db: Any
) -> None:
    first = runner(*FAST, "--fetch-limit", "5")
    second = runner(*FAST, "--fetch-limit", "5")
    batch = [
        {"n": n, "text": f"job {n}: ünïcødé ✓", "nested": {"list": [n, None, True, 2.5]}}
        for n in range(200)
    ]
    started = time.monotonic()
    jobs = client.enqueue_many(workers.Record, batch)
    wait_until(
        lambda: count_jobs(db) == 0, timeout=60, what="all 200 jobs to complete and be deleted"
    )
    elapsed = time.monotonic() - started
    done = runs(db)
    assert len(done) == 200, "a job ran twice or not at all"
    assert sorted(run["job_id"] for run in done) == sorted(job.id for job in jobs)
    by_id = {run["job_id"]: run for run in done}
    for job, args in zip(jobs, batch, strict=True):
        assert by_id[job.id]["args"] == args
        assert by_id[job.id]["attempt"] == 1
        assert by_id[job.id]["finished_at"] is not None
    per_runner = collections.Counter(run["pid"] for run in done)
    assert set(per_runner) == {first.process.pid, second.process.pid}, per_runner
    print(f"\n200 jobs on two runners: {elapsed:.2f}s, split {sorted(per_runner.values())}")


def test_a_stream_of_single_enqueues_runs_each_job_once_on_two_runners(
    runner: Runner, client: Client, db: Any
) -> None:
    """Jobs enqueued one per transaction while two runners work: their claims are
    spaced and shared (runner.pacing), and still every job runs, once, and promptly."""
    first = runner(*FAST)
    second = runner(*FAST)
    started = time.monotonic()
    jobs = [client.enqueue(workers.Record, {"n": n}) for n in range(600)]
    enqueued = time.monotonic() - started
    wait_until(lambda: count_jobs(db) == 0, timeout=30, what="all 600 jobs to run")
    lag = time.monotonic() - started - enqueued
    done = runs(db)
    assert sorted(run["job_id"] for run in done) == sorted(job.id for job in jobs)
    assert all(run["attempt"] == 1 and run["finished_at"] for run in done)
    assert {run["pid"] for run in done} <= {first.process.pid, second.process.pid}
    print(f"\n600 single enqueues on two runners: {enqueued:.2f}s, the last done {lag:.2f}s later")
    # The last jobs ran when notified (about 0.05 s here), not at the next safety-net
    # poll of a listening runner (IDLE_POLLS poll intervals: 2 s).
    assert lag < IDLE_POLLS * POLL / 2, f"the last jobs finished {lag:.2f}s after the last enqueue"


def test_a_row_of_an_unknown_worker_stalls_nothing(
    runner: Runner, client: Client, db: Any
) -> None:
    # Ghost rows first in line (lowest priority number, oldest), more than a fetch.
    query(
        db,
        "INSERT INTO jobs (worker, priority, run_at)"
        " SELECT 'ghost', -100, now() - interval '1 hour' FROM generate_series(1, 150)",
    )
    proc = runner(*FAST)
    jobs = client.enqueue_many(workers.Record, [{"n": n} for n in range(20)])
    wait_until(lambda: len(runs(db)) == 20 and count_jobs(db) == 150, timeout=15,
               what="the known worker's jobs to run")
    assert {run["job_id"] for run in runs(db)} == {job.id for job in jobs}
    ghosts = query(db, "SELECT state, attempt, count(*) FROM jobs GROUP BY state, attempt")
    assert ghosts == [("available", 0, 150)]
    assert proc.process.poll() is None
    assert "Traceback" not in proc.output


# -- retries ----------------------------------------------------------------------------


def test_retry_count_and_retry_delay_then_failed_with_history(
    runner: Runner, client: Client, db: Any
) -> None:
    runner(*FAST)
    job = client.enqueue(workers.Fail, n=1)
    wait_until(lambda: state(db, job.id) == "failed", timeout=15, what="the job to fail")
    attempts = runs(db, job.id)
    assert [run["attempt"] for run in attempts] == [1, 2, 3]  # retry_count = 2
    gaps = [seconds(b["started_at"] - a["started_at"]) for a, b in itertools.pairwise(attempts)]
    for gap in gaps:
        assert 0.2 <= gap < 0.2 + POLL + 1.0, gaps  # Fail.retry_delay = 0.2
    row = job_row(db, job.id)
    assert row is not None
    assert row["attempt"] == 3
    assert row["finished_at"] is not None
    assert row["runner_id"] is None
    errors = row["errors"]
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    for number, entry in enumerate(errors, start=1):
        assert entry["error"] == "builtins.ValueError"
        assert entry["message"] == f"boom on attempt {number}"
        assert f"ValueError: boom on attempt {number}" in entry["traceback"]
        assert "in perform" in entry["traceback"]
        assert datetime.datetime.fromisoformat(entry["at"])
    # A new runner does not pick the failed job up again.
    assert len(runs(db, job.id)) == 3


def test_retry_delay_callable_from_a_python_config_file(
    runner: Runner, settings: Any, db: Any, tmp_path: Path
) -> None:
    config = tmp_path / "backy_config.py"
    config.write_text("def retry_delay(retry):\n    return 0.3 * retry\n\npoll_interval = 0.2\n")
    enqueuer = Client(settings.replace(retry_count=2), registry=Registry.from_classes(*workers.ALL))
    try:
        enqueuer.setup()
        job = enqueuer.enqueue(workers.FailDefault)
    finally:
        enqueuer.close()
    runner("--config", str(config))
    wait_until(lambda: state(db, job.id) == "failed", timeout=15, what="the job to fail")
    attempts = runs(db, job.id)
    assert [run["attempt"] for run in attempts] == [1, 2, 3]
    first_gap = seconds(attempts[1]["started_at"] - attempts[0]["started_at"])
    second_gap = seconds(attempts[2]["started_at"] - attempts[1]["started_at"])
    assert 0.3 <= first_gap < 0.3 + 1.0
    assert 0.6 <= second_gap < 0.6 + 1.0


# -- max_runtime, touch, max_concurrency ---------------------------------------------------


def test_max_runtime_stops_a_job_and_touch_keeps_a_long_one_alive(
    runner: Runner, client: Client, db: Any
) -> None:
    runner(*FAST)
    stuck = client.enqueue(workers.Sleep, seconds=5)  # max_runtime 1.0, never touches
    alive = client.enqueue(workers.Sleep, seconds=2.5, touch_every=0.25)
    wait_until(
        lambda: state(db, stuck.id) == "failed" and job_row(db, alive.id) is None,
        timeout=10, what="the stuck job to time out and the touched one to finish",
    )
    row = job_row(db, stuck.id)
    assert row is not None
    [error] = row["errors"]
    assert error["error"] == "backy_gevent.job.JobTimeout"
    ran_for = seconds(row["finished_at"] - row["attempted_at"])
    assert workers.Sleep.max_runtime <= ran_for < workers.Sleep.max_runtime + 1.0
    [stuck_run] = runs(db, stuck.id)
    assert stuck_run["finished_at"] is None  # it never got to its end

    [alive_run] = runs(db, alive.id)  # one attempt, never rescued or retried
    assert alive_run["finished_at"] is not None
    lived = seconds(alive_run["finished_at"] - alive_run["started_at"])
    assert lived >= 2.5 > workers.Sleep.max_runtime + workers.Sleep.requeue_delay


def test_max_concurrency_is_never_exceeded(runner: Runner, client: Client, db: Any) -> None:
    runner(*FAST)
    client.enqueue_many(workers.Limited, [{"seconds": 0.2}] * 10)
    # Backy claimed the whole backlog at once; a runner claims only its free slots. So the
    # table never holds more claimed, unfinished attempts than max_concurrency. (A row
    # whose attempt has finished stays 'running' until the completer's batch commits,
    # a moment later; the slot is already free by then, so those rows are not counted.)
    claimed: list[int] = []
    unfinished = """
        SELECT count(*) FROM jobs j WHERE state = 'running' AND NOT EXISTS (
            SELECT 1 FROM runs r
            WHERE r.job_id = j.id AND r.attempt = j.attempt AND r.finished_at IS NOT NULL)
    """

    def drained() -> bool:
        claimed.append(query(db, unfinished)[0][0])
        return count_jobs(db) == 0

    wait_until(drained, timeout=15, interval=0.01, what="the jobs to finish")
    assert max(claimed) == workers.Limited.max_concurrency, claimed
    done = runs(db)
    assert len(done) == 10
    overlap = max_overlap([(run["started_at"], run["finished_at"]) for run in done])
    assert overlap == workers.Limited.max_concurrency, overlap


def test_an_unlimited_worker_claims_batch_after_batch_while_its_jobs_run(
    runner: Runner, client: Client, db: Any
) -> None:
    # A worker without max_concurrency claims fetch_limit jobs at a time; once its
    # greenlets have taken a batch, it claims the next at once, not a poll interval (or
    # ten, while notifications work) later, even though no job has finished yet.
    runner("--fetch-limit", "10")
    jobs = client.enqueue_many(workers.Sleep, [{"seconds": 8, "touch_every": 0.3}] * 60)
    started = time.monotonic()
    wait_until(lambda: len({run["job_id"] for run in runs(db)}) == len(jobs), timeout=6,
               what="all 60 jobs running at once, six batches of 10")
    assert time.monotonic() - started < 6


def test_notify_wakes_the_runner_at_commit_not_the_poll(
    runner: Runner, client: Client, db: Any, dsn: str
) -> None:
    runner("--poll-interval", "30")  # only LISTEN/NOTIFY can make it claim in time
    caller = psycopg2.connect(dsn)
    try:
        pending = client.enqueue(workers.Record, {"n": "in a transaction"}, connection=caller)
        sentinel = client.enqueue(workers.Record, {"n": "sentinel"})
        wait_until(lambda: runs(db, sentinel.id), timeout=3, what="a wake-up by NOTIFY")
        assert runs(db, pending.id) == []  # not committed: invisible to the runner
        caller.commit()
        committed = time.monotonic()
        wait_until(lambda: runs(db, pending.id), timeout=3, what="a wake-up at commit")
        assert time.monotonic() - committed < 3.0
    finally:
        caller.close()


def test_queue_and_worker_restrictions(runner: Runner, client: Client, db: Any) -> None:
    runner(*FAST, "--queue", "mail", "--worker", "record", "--worker", "fail")
    # Due first, but on a queue or of a worker this runner does not serve:
    earlier = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=60)
    other_queue = client.enqueue(workers.Record, run_at=earlier)
    other_worker = client.enqueue(workers.Limited, queue="mail", run_at=earlier)
    served = client.enqueue(workers.Record, queue="mail")
    wait_until(lambda: runs(db, served.id), timeout=10, what="the mail job to run")
    assert runs(db, other_queue.id) == runs(db, other_worker.id) == []
    assert state(db, other_queue.id) == state(db, other_worker.id) == "available"


# -- a runner that dies -------------------------------------------------------------------


def test_a_killed_runners_job_runs_again_within_the_bound(
    runner: Runner, client: Client, db: Any
) -> None:
    first = runner(*FAST)
    job = client.enqueue(workers.Hang, seconds=30)
    wait_until(lambda: runs(db, job.id), timeout=10, what="the first attempt to start")
    port = free_port()
    second = runner(*FAST, "--delete-finished-jobs", "false", "--metrics-port", str(port))
    first.process.kill()  # SIGKILL: no hand-back, no goodbye
    first.process.wait(10)
    killed_at = db_now(db)
    bound = rescue_bound(workers.Hang, leader_died=True)  # the first runner led
    wait_until(lambda: len(runs(db, job.id)) == 2, timeout=bound + 5,
               what="the job to run again")
    again = runs(db, job.id)[1]
    recovery = seconds(again["started_at"] - killed_at)
    print(f"\nkill -9 recovery: {recovery:.2f}s (bound {bound:.1f}s)")
    assert recovery <= bound
    # The lost attempt is not counted: the job ran beside others (as far as the rescuer
    # knows), any of which may have killed its runner. It now runs in quarantine: in a
    # process of its own, a child of the surviving runner.
    assert again["attempt"] == 1
    assert (again["pid"], again["isolated"]) == (second.process.pid, True)
    wait_until(lambda: state(db, job.id) == "completed", timeout=5, what="completion")
    row = job_row(db, job.id)
    assert row is not None
    assert (row["quarantined"], row["errors"]) == (True, [])
    # The survivor's rescuer took it back, and says so in its metrics.
    labels = {"worker": workers.Hang.name, "queue": "default", "state": "quarantined"}
    assert value(scrape(port), "backy_jobs_rescued_total", **labels) == 1


def test_a_job_that_kills_its_process_ends_failed_and_kills_its_runner_once(
    runner: Runner, client: Client, db: Any
) -> None:
    job = client.enqueue(workers.Crash)
    first = runner(*FAST, wait=False)  # it may die before it logs that it started
    assert first.process.wait(20) == -signal.SIGKILL
    second = runner(*FAST)
    wait_until(lambda: state(db, job.id) == "failed", timeout=20,
               what="the crashing job to fail")
    attempts = runs(db, job.id)
    # In the first runner, beside others as far as anyone knows: not counted. Then twice
    # in quarantine (retry_count = 1), each time killing only its own process.
    assert [run["attempt"] for run in attempts] == [1, 1, 2]
    assert attempts[0]["pid"] == first.process.pid
    assert [run["isolated"] for run in attempts] == [False, True, True]
    assert second.process.poll() is None, "the job took its runner down again"
    bound = rescue_bound(workers.Crash, leader_died=True)
    killed_at = attempts[0]["started_at"]
    gap = seconds(attempts[1]["started_at"] - killed_at)
    print(f"\ncrash recovery: {gap:.2f}s (bound {bound:.1f}s)")
    assert gap <= bound + 2.0  # the second runner started after the first died
    row = job_row(db, job.id)
    assert row is not None
    assert [(e["attempt"], e["error"]) for e in row["errors"]] == [
        (1, "backy_gevent.job.JobCrashed"), (2, "backy_gevent.job.JobCrashed"),
    ]
    assert "killed by signal 9 (SIGKILL)" in row["errors"][0]["message"]
    assert row["finished_at"] is not None


# -- shutdown ----------------------------------------------------------------------------


def test_sigterm_finishes_short_jobs_hands_back_long_ones_and_exits_0(
    runner: Runner, client: Client, db: Any
) -> None:
    proc = runner(*FAST, "--shutdown-timeout", "1")
    short = client.enqueue_many(workers.Sleep, [{"seconds": 0.5}, {"seconds": 0.5}])
    long = client.enqueue(workers.Hang, seconds=60)
    wait_until(lambda: len(runs(db)) == 3, timeout=10, what="all three to start")
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.output
    took = time.monotonic() - signalled
    assert 1.0 <= took < 1.0 + 5.0  # waited for the shutdown timeout, then handed back
    for job in short:
        [run] = runs(db, job.id)
        assert run["finished_at"] is not None
        assert job_row(db, job.id) is None  # completed and deleted
    row = job_row(db, long.id)
    assert row is not None
    assert row["state"] == "available"
    assert row["attempt"] == 0  # the attempt was not spent
    assert (row["runner_id"], row["expires_at"], row["errors"]) == (None, None, [])
    assert runs(db, long.id)[0]["finished_at"] is None
    assert "handing back 1 unfinished jobs" in proc.output
    assert query(db, "SELECT count(*) FROM jobs_runners") == [(0,)]


@pytest.mark.parametrize(
    ("first_signal", "second_signal"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)],
)
def test_a_second_signal_stops_at_once(
    runner: Runner, client: Client, db: Any, first_signal: int, second_signal: int
) -> None:
    proc = runner(*FAST, "--shutdown-timeout", "60")
    job = client.enqueue(workers.Hang, seconds=60)
    wait_until(lambda: runs(db, job.id), timeout=10, what="the job to start")
    proc.signal(first_signal)
    wait_until(lambda: "stopping" in proc.output, timeout=5, what="the warm shutdown")
    assert proc.process.poll() is None  # still draining
    signalled = time.monotonic()
    proc.signal(second_signal)
    assert proc.wait(timeout=10) == 0, proc.output
    assert time.monotonic() - signalled < 3.0
    row = job_row(db, job.id)
    assert row is not None
    assert (row["state"], row["attempt"]) == ("available", 0)  # handed back all the same


# -- finished jobs -------------------------------------------------------------------------


def test_delete_finished_jobs_false_keeps_completed_rows(
    runner: Runner, client: Client, db: Any, dsn: str
) -> None:
    runner(*FAST, env=cli_env(dsn, BACKY_DELETE_FINISHED_JOBS="No"))
    jobs = client.enqueue_many(workers.Record, [{"n": n} for n in range(3)])
    wait_until(
        lambda: query(db, "SELECT count(*) FROM jobs WHERE state = 'completed'") == [(3,)],
        timeout=10, what="three completed rows",
    )
    for job in jobs:
        row = job_row(db, job.id)
        assert row is not None
        assert row["finished_at"] is not None
        assert (row["attempt"], row["runner_id"], row["expires_at"]) == (1, None, None)
        assert len(runs(db, job.id)) == 1


def test_relaxed_commits_run_every_job_once_and_record_every_outcome(
    runner: Runner, client: Client, db: Any, dsn: str
) -> None:
    runner(*FAST, "--relaxed-commits", "true",
           env=cli_env(dsn, BACKY_DELETE_FINISHED_JOBS="false"))
    done = client.enqueue_many(workers.Record, [{"n": n} for n in range(50)])
    failed = client.enqueue(workers.Fail, {})
    wait_until(lambda: query(db, "SELECT count(*) FROM jobs WHERE state IN"
                                 " ('completed', 'failed')") == [(51,)],
               timeout=15, what="every outcome written")
    ran = sorted(run["job_id"] for run in runs(db))
    assert ran == sorted([job.id for job in done] + [failed.id] * 3)  # Fail retries twice
    assert job_row(db, failed.id)["state"] == "failed"  # type: ignore[index]


def test_delete_finished_jobs_true_deletes_rows(
    runner: Runner, client: Client, db: Any
) -> None:
    runner(*FAST, "--delete-finished-jobs", "true")
    job = client.enqueue(workers.Record)
    failed = client.enqueue(workers.Fail)
    wait_until(lambda: job_row(db, job.id) is None and state(db, failed.id) == "failed",
               timeout=10, what="the job to be deleted")
    assert len(runs(db, job.id)) == 1
    assert job_row(db, failed.id) is not None  # failed rows stay, to be looked at


# -- the database goes away --------------------------------------------------------------


def terminate_backends(db: Any, pid: int) -> int:
    """pg_terminate_backend every connection of the runner with this pid."""
    rows = query(
        db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE 'backy-gevent%%' AND application_name LIKE %s",
        f"%:{pid}:%",
    )
    return len(rows)


def test_runner_recovers_when_its_connections_are_killed(
    runner: Runner, client: Client, db: Any
) -> None:
    proc = runner(*FAST)
    warm = client.enqueue(workers.Record)
    wait_until(lambda: job_row(db, warm.id) is None, timeout=10, what="a first job")
    in_flight = client.enqueue(workers.Hang, seconds=1.0)
    wait_until(lambda: runs(db, in_flight.id), timeout=10, what="the long job to start")

    assert terminate_backends(db, proc.process.pid) >= 2  # the pool's and the listener's
    later = client.enqueue_many(workers.Record, [{"n": n} for n in range(20)])
    wait_until(lambda: count_jobs(db) == 0, timeout=20, what="every job to finish")

    assert terminate_backends(db, proc.process.pid) >= 1  # again, while idle
    last = client.enqueue(workers.Record, n=99)
    wait_until(lambda: job_row(db, last.id) is None, timeout=20, what="a job after that")

    assert proc.process.poll() is None, proc.output
    assert "database error" in proc.output  # it said what happened
    done = runs(db)
    expected = [warm.id, in_flight.id, *(job.id for job in later), last.id]
    assert sorted(run["job_id"] for run in done) == sorted(expected)  # none lost, none twice
    [hang_run] = runs(db, in_flight.id)
    assert hang_run["finished_at"] is not None and hang_run["attempt"] == 1


# -- cancelling a running job -------------------------------------------------------------


def test_cancelling_a_running_job_stops_it_at_once(
    runner: Runner, client: Client, db: Any
) -> None:
    process = runner(*FAST)
    job = client.enqueue(workers.Limited, seconds=4)  # max_runtime 5
    wait_until(lambda: runs(db, job.id), timeout=10, what="the attempt to start")
    cancelled_at = time.monotonic()
    assert client.cancel(job.id) is not None
    wait_until(lambda: "stopped: cancelled while running" in process.output, timeout=2,
               what="the runner to stop the cancelled attempt")
    print(f"\ncancel to stop: {time.monotonic() - cancelled_at:.3f}s")
    assert state(db, job.id) == "cancelled"
    # It never finished, and the slot is free again: the next job runs at once.
    assert [run["finished_at"] for run in runs(db, job.id)] == [None]
    other = client.enqueue(workers.Record)
    wait_until(lambda: state(db, other.id) is None, timeout=5, what="the next job to run")
    assert "Traceback" not in process.output


def test_a_cancel_in_another_schemas_table_of_the_same_name_stops_nothing_here(
    runner: Runner, client: Client, db: Any, server_dsn: str
) -> None:
    other_schema = "t_other_" + str(time.monotonic_ns())
    admin = psycopg2.connect(server_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{other_schema}"')
        other = Client(
            client.settings.replace(dsn=with_search_path(server_dsn, other_schema)),
            registry=Registry.from_classes(*workers.ALL),
        )
        other.setup()
        process = runner(*FAST)
        job = client.enqueue(workers.Limited, seconds=2)
        twin = other.enqueue(workers.Limited, seconds=2)
        assert twin.id == job.id  # same table name, same id, another schema
        wait_until(lambda: runs(db, job.id), timeout=10, what="the attempt to start")
        assert other.cancel(twin.id) is not None  # notifies that table's runners only
        wait_until(lambda: state(db, job.id) is None, timeout=10, what="our job to finish")
        assert [run["finished_at"] is not None for run in runs(db, job.id)] == [True]
        assert "stopped: cancelled" not in process.output
        other.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{other_schema}" CASCADE')
        admin.close()
