"""The account every fault scenario settles at its end: no job lost, no job run twice
without a fault to excuse it.

The evidence is the ``runs`` table (one row per attempt a worker began, ``finished_at``
set when its ``perform`` got to the end; see tests/workers.py) and the jobs table (a
finished job is deleted, or ``completed`` when finished rows are kept).

Delivery is at least once: a job may run again when an earlier attempt was cut short by
the fault (its runner was killed, or lost the database before its outcome was written).
The scenario says which attempts the fault could have cut short with an ``Excuse``: the
runner processes it killed and when (``killed``), or the windows in which the database
was away (``outage``). Any other repeat is a defect and fails the check: an outcome
the runner should have kept and written was lost, or a job was claimed twice.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import psycopg2


@dataclass(frozen=True)
class Run:
    """One attempt as the worker recorded it."""

    job_id: int
    attempt: int
    pid: int
    started_at: datetime.datetime
    finished_at: datetime.datetime | None


#: Whether the fault could have cut ``run`` short, so that its job may run again.
Excuse = Callable[[Run], bool]
Window = tuple[datetime.datetime, datetime.datetime]


def killed(kills: Mapping[int, datetime.datetime], slack: float = 1.0) -> Excuse:
    """Runs of the runner processes killed (pid -> when) that the kill cut short: under
    way at the kill, or finished so shortly before it (``slack`` seconds) that their
    outcome may not have been written yet (it is written a moment after the run)."""
    margin = datetime.timedelta(seconds=slack)

    def excused(run: Run) -> bool:
        at = kills.get(run.pid)
        return at is not None and (run.finished_at is None or run.finished_at >= at - margin)

    return excused


def outage(windows: Iterable[Window], lease: float, slack: float = 1.0) -> Excuse:
    """Runs that the database being away (the ``windows``) could cut short.

    - A run that never finished and was under way during a window: the worker's
      attempt failed with the database, or timed out waiting for it.
    - A run that finished, but whose outcome could not be written before its ``lease``
      (max_runtime + requeue_delay) ran out and the job was rescued. The runner keeps
      such an outcome and retries with doubling pauses, so it writes it at the latest
      about as long after the database is back as it had been away (at most 5 s), plus
      ``slack``; the lease must have run out before that, and the run must have finished
      no earlier than ``slack`` before the window.

    Any other repeat means an outcome was lost or a job was claimed twice.
    """
    margin, lease_span = datetime.timedelta(seconds=slack), datetime.timedelta(seconds=lease)
    spans = []
    for start, end in windows:
        backoff = min(end - start, datetime.timedelta(seconds=5))
        spans.append((start - margin, end + backoff + margin))

    def excused(run: Run) -> bool:
        for start, end in spans:
            if run.started_at > end or run.started_at + lease_span < start:
                continue
            if run.finished_at is None:
                return True
            if run.finished_at >= start and run.started_at + lease_span <= end:
                return True
        return False

    return excused


def either(*excuses: Excuse) -> Excuse:
    return lambda run: any(excuse(run) for excuse in excuses)


def now() -> datetime.datetime:
    """The wall clock, comparable with the database's ``clock_timestamp()`` (same host)."""
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Summary:
    """What a scenario did to its jobs, for the README's table."""

    jobs: int
    runs: int
    ran_twice: int  # jobs with more than one recorded run
    lost: int  # jobs neither finished nor in a terminal state the scenario allows
    terminal: dict[str, int]  # jobs left in an allowed terminal state, by state

    def __str__(self) -> str:
        extra = "".join(f" {state}={count}" for state, count in sorted(self.terminal.items()))
        return (
            f"jobs={self.jobs} runs={self.runs} ran_twice={self.ran_twice}"
            f" lost={self.lost}{extra}"
        )


def read_runs(dsn: str) -> list[Run]:
    """Every recorded run, oldest first."""
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT job_id, attempt, pid, started_at, finished_at FROM runs"
            " ORDER BY started_at, job_id"
        )
        return [Run(*row) for row in cur.fetchall()]


def _job_states(dsn: str) -> dict[int, str]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, state FROM jobs")
        return dict(cur.fetchall())


def check(
    dsn: str,
    enqueued: Collection[int],
    *,
    excused: Excuse = lambda run: False,
    terminal: Collection[str] = (),
) -> Summary:
    """Assert that every job in ``enqueued`` was done exactly as the faults allow.

    Done: its row is gone (deleted on success) or ``completed``, and one of its runs
    finished; or its row is in a state of ``terminal`` (e.g. ``failed`` when the scenario
    expects some jobs to run out of attempts). Anything else (still waiting or running,
    or finished without a finished run) is lost. A job with several runs must have every
    run but its last ``excused``: a run cut short by a fault is not counted as an
    attempt (the job is quarantined and runs its attempt again), so an attempt number
    may repeat only that way. No job may run that was not enqueued. Returns the
    summary; raises AssertionError listing what went wrong.
    """
    runs = read_runs(dsn)
    states = _job_states(dsn)
    by_job: dict[int, list[Run]] = collections.defaultdict(list)
    for run in runs:
        by_job[run.job_id].append(run)
    wanted = set(enqueued)
    problems: list[str] = []
    strangers = sorted(set(by_job) - wanted)
    if strangers:
        problems.append(f"{len(strangers)} jobs ran that were not enqueued: {strangers[:5]}")
    lost = ran_twice = 0
    left_terminal: collections.Counter[str] = collections.Counter()
    for job_id in sorted(wanted):
        state = states.get(job_id)
        job_runs = by_job.get(job_id, [])
        if state in terminal:
            left_terminal[str(state)] += 1
        elif state not in (None, "completed") or not any(r.finished_at for r in job_runs):
            lost += 1
            problems.append(
                f"job {job_id} lost: row {state or 'deleted'}, runs {_describe(job_runs)}"
            )
        if len(job_runs) > 1:
            ran_twice += 1
            for run in job_runs[:-1]:
                if not excused(run):
                    problems.append(
                        f"job {job_id} ran again, but no fault excuses its earlier run"
                        f" {_describe([run])}; all runs: {_describe(job_runs)}"
                    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    return Summary(len(wanted), len(runs), ran_twice, lost, dict(left_terminal))


def _describe(runs: list[Run]) -> str:
    def one(run: Run) -> str:
        end = run.finished_at.time().isoformat() if run.finished_at else "unfinished"
        return f"#{run.attempt} pid {run.pid} {run.started_at.time().isoformat()}-{end}"

    return "[" + ", ".join(one(run) for run in runs) + "]" if runs else "none"

