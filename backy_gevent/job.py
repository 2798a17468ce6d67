"""The Job record and its states; plain data, no I/O."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

AVAILABLE = "available"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

#: The values the jobs table's columns can hold: ``priority`` and the attempt counts are
#: PostgreSQL integers, ``id`` a bigint.
INTEGER_MIN, INTEGER_MAX = -(2**31), 2**31 - 1
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
#: The most retries a job can be given (by the ``retry_count`` option or a worker's): far
#: beyond any use, and far inside the integer ``max_attempts``, even after many ``retry``.
MAX_RETRY_COUNT = 1_000_000
#: The longest delay (``delay``, ``retry_delay``) and ``prune`` age, in seconds (about 317
#: years): far beyond any schedule, and far inside the dates Python and PostgreSQL hold.
MAX_SECONDS = 10_000_000_000
#: The longest ``queue`` and ``unique_key``: both are indexed, and a PostgreSQL btree entry
#: holds about 2,700 bytes; 500 characters are at most 2,000 bytes of UTF-8.
MAX_NAME_LENGTH = 500


class JobTimeout(BaseException):
    """Raised inside a job that ran past its ``max_runtime``.

    A BaseException, like ``gevent.Timeout``, so that a worker's ``except Exception``
    does not swallow it.
    """

    def __init__(self, job_id: int, seconds: float) -> None:
        super().__init__(f"job {job_id} ran past max_runtime ({seconds:g}s)")
        self.job_id = job_id
        self.seconds = seconds


class JobCrashed(Exception):
    """The error of an attempt whose process died under it: a quarantined job (one that
    was running when its runner died) runs in a process of its own, and that process
    exited, or was killed, before the attempt ended (``os._exit``, a segfault, the OOM
    killer). ``returncode`` is the process's: negative for the signal that killed it."""

    def __init__(self, job_id: int, returncode: int | None) -> None:
        if returncode is not None and returncode < 0:
            how = f"was killed by signal {-returncode} ({_signal_name(-returncode)})"
        else:
            how = f"exited with status {returncode}"
        super().__init__(f"job {job_id}: its process {how} before the attempt ended")
        self.job_id = job_id
        self.returncode = returncode


class Snooze(BaseException):
    """Raise it in ``perform`` to run the job again in ``seconds``, without spending an
    attempt (the next run sees the same ``job.attempt``) and without recording an error.

    A BaseException, like ``JobTimeout``, so that a worker's ``except Exception`` around
    the code that raises it does not swallow it.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not (
            isinstance(seconds, (int, float)) and 0 <= seconds <= 10_000_000_000
        ):
            raise ValueError(f"Snooze takes seconds from 0 to 10,000,000,000, not {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)


class Cancel(BaseException):
    """Raise it in ``perform`` to end the job ``cancelled``: no retry; the reason is
    recorded in its ``errors`` history. A BaseException, like ``Snooze``."""

    def __init__(self, reason: str = "cancelled by the job") -> None:
        super().__init__(reason)
        self.reason = reason


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


@dataclasses.dataclass
class Job:
    """One row of the jobs table, as Python sees it.

    ``attempt`` is 1 during the first run. ``errors`` holds one entry per failed attempt
    (attempt, time, error type, message and traceback). ``touch()`` works only on a job
    handed to ``Worker.perform`` by a runner: it restarts the attempt's ``max_runtime``
    clock and extends the job's lease in the database.
    """

    id: int
    worker: str
    args: dict[str, Any]
    queue: str
    priority: int
    state: str
    attempt: int
    max_attempts: int
    run_at: datetime.datetime
    enqueued_at: datetime.datetime
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unique_key: str | None = None
    attempted_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    runner_id: str | None = None
    #: The job was running when its runner died: every later attempt runs in a process
    #: of its own, so that a job that kills its process can't take innocent jobs along.
    quarantined: bool = False
    #: How many times the job lost its runner (rescued after its lease ran out).
    rescues: int = 0
    #: What ``perform`` returned, as JSON, when finished rows are kept.
    result: Any = None
    #: False when ``enqueue`` found a job holding the same ``unique_key`` and returned it
    #: instead of writing one (not a column: it says what this call did).
    inserted: bool = True
    # Set by the executor while an attempt runs; ``touch`` calls it.
    _toucher: Callable[[], None] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    # When this runner's lease on the attempt ends at the latest, by its own monotonic
    # clock, measured from before it sent the claim (or the last touch): an attempt is
    # never started past it.
    _lease_ends: float | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """Build a Job from a row of the jobs table (a mapping of column to value)."""
        if row.keys() <= _COLUMNS:  # the usual case, checked at C speed
            return cls(**row)
        return cls(**{k: v for k, v in row.items() if k in _COLUMNS})

    @classmethod
    def from_tuples(cls, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[Job]:
        """Jobs from rows as tuples in the order of ``columns`` (a cursor's description).
        The runner's claims return the columns in the order of Job's fields
        (``ROW_ORDER``): each Job is then built from its tuple by position, with no dict
        per row (a sixth of the time of ``from_row``). Any other order is read by name."""
        if list(columns) == ROW_ORDER:
            return [cls(*row) for row in rows]
        return [cls.from_row(dict(zip(columns, row, strict=True))) for row in rows]

    @property
    def retries_left(self) -> int:
        """How many more attempts may follow this one if it fails."""
        return max(0, self.max_attempts - self.attempt)

    def touch(self) -> None:
        """Tell the runner this job is alive: restart ``max_runtime`` and extend the lease.

        Raises ``RuntimeError`` when called on a job that is not being run by a runner
        in this process (for example a Job returned by ``enqueue``).
        """
        if self._toucher is None:
            raise RuntimeError(f"job {self.id} is not running in this process; nothing to touch")
        self._toucher()


#: The Job fields that are columns of the jobs table (a row may carry more).
_COLUMNS = frozenset(f.name for f in dataclasses.fields(Job) if not f.name.startswith("_"))
#: The columns of a job's row in the order of Job's fields: the order the runner's claims
#: return them in (``queries.sql``), for ``Job.from_tuples``.
ROW_ORDER = [f.name for f in dataclasses.fields(Job) if f.name in _COLUMNS and f.name != "inserted"]


def touch(job: Job) -> None:
    """Module-level form of ``job.touch()``, as in Backy's ``Backy.touch(job)``."""
    job.touch()
