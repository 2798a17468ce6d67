"""The account every fault scenario settles at its end: no job lost, no job run twice
without a fault to excuse it.

The evidence is the ``runs`` table (one row per attempt a worker began, ``finished_at``
set when its ``perform`` got to the end; see tests/workers.py) and the jobs table (a
finished job is deleted, or ``completed`` when finished rows are kept).

Delivery is at least once: a job may run again when an earlier attempt was cut short by
the fault (its runner was killed, or lost the database before its outcome was written).
The scenario says which attempts the fault could have cut short with an ``Excuse``: the
pids it killed (``killed``), or the windows in which the database was away
(``overlapping``). Any other repeat is a defect and fails the check.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
from collections.abc import Callable, Collection, Iterable
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


def killed(pids: Collection[int]) -> Excuse:
    """Runs of the runner processes that were killed."""
    return lambda run: run.pid in pids


def overlapping(windows: Iterable[Window], slack: float = 2.0) -> Excuse:
    """Runs that were going on (give or take ``slack`` seconds: an outcome is written a
    moment after its run ends) while the database was away."""
    margin = datetime.timedelta(seconds=slack)
    spans = [(start - margin, end + margin) for start, end in windows]

    def excused(run: Run) -> bool:
        ended = run.finished_at or datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
        return any(run.started_at <= end and ended >= start for start, end in spans)

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
    run but its last ``excused``; no attempt may run twice, and no job may run that was
    not enqueued. Returns the summary; raises AssertionError listing what went wrong.
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
        attempts = collections.Counter(run.attempt for run in job_runs)
        for attempt, count in attempts.items():
            if count > 1:
                problems.append(f"job {job_id} attempt {attempt} ran {count} times")
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

