"""One attempt of one job: the lease check, hooks, where it runs, and the outcome.

The executor knows nothing of fetching or of the database; it reports each attempt's
outcome to an ``OutcomeSink`` (the runner's completer), so one job's life can be tested
without a runner loop. An attempt runs in this process (``runner.attempt``), or, for a
quarantined job, in a process of its own (``runner.isolation``).

The outcome is handed to the sink *before* the hooks that follow it run: a shutdown
that interrupts ``backy_after_job`` can't make finished work run again.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent import getcurrent

from backy_gevent.config import Settings
from backy_gevent.hooks import Hooks
from backy_gevent.job import MAX_SECONDS, Job, JobTimeout
from backy_gevent.runner.attempt import (
    HANDED_BACK,
    Deadline,
    HandBack,
    JobRevoked,
    Outcome,
    new_deadline,
    run_in_process,
)
from backy_gevent.runner.isolation import KILL_GRACE, IsolatedError, Quarantine, Ticket
from backy_gevent.worker import Registration, Worker

__all__ = ["Executor", "HandBack", "JobRevoked", "OutcomeSink", "error_entry", "lease_seconds"]

log = logging.getLogger("backy_gevent.executor")


class OutcomeSink(Protocol):
    """Where the executor reports outcomes (the runner's completer)."""

    def completed(self, job: Job, result: Any = None) -> None: ...

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None: ...

    def snoozed(self, job: Job, seconds: float) -> None: ...

    def cancelled(self, job: Job, error: dict[str, Any]) -> None: ...

    def handed_back(self, job: Job) -> None: ...

    def touch(self, job: Job, lease: float) -> bool | None:
        """True: lease extended; False: the job is no longer ours; None: unknown."""


def error_entry(job: Job, error: BaseException) -> dict[str, Any]:
    """The record of a failed attempt appended to ``job.errors``."""
    if isinstance(error, IsolatedError):  # raised in a child process: its own record
        error_type, trace = error.error_type, error.traceback_text
    else:
        error_type = f"{type(error).__module__}.{type(error).__qualname__}"
        trace = "".join(traceback.format_exception(error))
    return {
        "attempt": job.attempt,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "error": error_type,
        "message": str(error),
        "traceback": trace,
    }


def lease_seconds(worker_class: type[Worker]) -> float:
    """How long a claimed attempt may go without a touch before it is rescued."""
    return float(worker_class.max_runtime) + float(worker_class.requeue_delay)


@dataclasses.dataclass(slots=True)
class Running:
    """An attempt whose ``perform`` runs now (in this process or in a child)."""

    job: Job
    deadline: Deadline
    isolated: bool


class Executor:
    """Runs attempts and reports their outcomes; one Executor serves a whole runner.

    ``isolation`` holds the options a quarantined attempt's child process needs
    (``imports``, ``client``, ``log_level``).
    """

    def __init__(
        self,
        settings: Settings,
        hooks: Hooks,
        sink: OutcomeSink,
        *,
        isolation: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.hooks = hooks
        self.sink = sink
        self.quarantine = Quarantine(
            isolation or {"imports": list(settings.imports), "client": {}}
        )
        #: The attempts inside ``perform`` right now, by greenlet: only these are ever
        #: interrupted (a cancel, a shutdown), so finished work never is.
        self.running: dict[Any, Running] = {}

    def run(self, job: Job, registration: Registration) -> Outcome:
        """Run one attempt of ``job`` in the current greenlet, report its outcome to the
        sink, and return it (``backy_gevent.testing`` reads it; the runner does not)."""
        if self._hand_back_if_late(job, "before it started"):
            return HANDED_BACK
        try:
            worker = registration.cls()
        except Exception as exc:
            self._fail(job, None, exc, timed_out=False)
            return Outcome("raised", error=exc)
        self.hooks.call("backy_before_job", job=job, worker=worker)
        if self._hand_back_if_late(job, "while backy_before_job ran"):
            return HANDED_BACK
        try:
            outcome = self._attempt(job, worker)
        except gevent.GreenletExit:
            self.sink.handed_back(job)
            raise
        self._report(job, worker, outcome)
        return outcome

    def _attempt(self, job: Job, worker: Worker) -> Outcome:
        lease = lease_seconds(type(worker))
        touch = functools.partial(self._extend_lease, job, lease)
        current = getcurrent()
        if job.quarantined:
            # The child stops the attempt itself at max_runtime when its code yields; the
            # runner kills it a little later, still within the lease.
            seconds = float(worker.max_runtime)
            grace = min(KILL_GRACE, float(worker.requeue_delay) / 2)
            deadline = Deadline(seconds + grace, JobTimeout(job.id, seconds), current)
        else:
            deadline = new_deadline(job, worker)
        self.running[current] = Running(job, deadline, job.quarantined)
        try:
            if job.quarantined:
                return self.quarantine.run(Ticket(job, deadline, touch), lease)
            return run_in_process(job, worker, deadline, touch)
        finally:
            self.running.pop(current, None)

    def _extend_lease(self, job: Job, lease: float) -> bool:
        """What ``job.touch()`` asks of the database: extend the lease (False: the job
        is no longer this attempt's; True also when the database can't be asked)."""
        sent = time.monotonic()
        extended = self.sink.touch(job, lease)
        if extended:
            job._lease_ends = sent + lease
        return extended is not False

    def _hand_back_if_late(self, job: Job, when: str) -> bool:
        """Give the job back, unspent, if this runner's lease on it may have run out: by
        now another runner may have rescued it and be running it."""
        if job._lease_ends is None or time.monotonic() < job._lease_ends:
            return False
        log.warning(
            "job %s (%s): its lease may have run out %s; handed back, not started",
            job.id, job.worker, when,
        )
        self.sink.handed_back(job)
        return True

    def _report(self, job: Job, worker: Worker, outcome: Outcome) -> None:
        if outcome.kind == "returned":
            self.sink.completed(job, outcome.result)
            self.hooks.call(
                "backy_after_job", job=job, worker=worker, result=outcome.result,
                duration=outcome.duration,
            )
        elif outcome.kind == "raised":
            assert outcome.error is not None
            self._fail(job, worker, outcome.error, timed_out=outcome.timed_out)
        elif outcome.kind == "snoozed":
            log.info("job %s (%s) snoozed for %gs", job.id, job.worker, outcome.duration)
            self.sink.snoozed(job, outcome.duration)
        elif outcome.kind == "cancelled":
            assert outcome.error is not None
            log.info("job %s (%s) cancelled itself: %s", job.id, job.worker, outcome.error)
            self.sink.cancelled(job, error_entry(job, outcome.error))
        elif outcome is HANDED_BACK:
            self.sink.handed_back(job)
        else:
            log.info("job %s (%s) attempt %s stopped: %s", job.id, job.worker, job.attempt,
                     outcome.error)

    def interrupt(self, error: BaseException, job_id: int | None = None) -> int:
        """Throw ``error`` into the attempts running now (of job ``job_id`` only, if
        given) while they are still inside ``perform``; return how many were asked."""
        asked = 0
        for greenlet, running in list(self.running.items()):
            if job_id is None or running.job.id == job_id:
                gevent.get_hub().loop.run_callback(self._deliver, greenlet, running, error)
                asked += 1
        return asked

    def _deliver(self, greenlet: Any, running: Running, error: BaseException) -> None:
        # A pool greenlet runs one job after another: throw only into the same attempt.
        if self.running.get(greenlet) is running:
            greenlet.throw(error)

    def overdue(self, greenlet: Any) -> Running | None:
        """The in-process attempt of ``greenlet`` if it ran past its ``max_runtime``."""
        running = self.running.get(greenlet)
        if running is None or running.isolated or running.deadline.overdue() <= 0:
            return None
        return running

    def _fail(
        self, job: Job, worker: Worker | None, error: BaseException, *, timed_out: bool
    ) -> None:
        will_retry = job.attempt < job.max_attempts
        retry_in = self._retry_delay(job, worker, error) if will_retry else None
        self.sink.failed(job, error_entry(job, error), retry_in)
        log.info(
            "job %s (%s) attempt %s %s: %s%s",
            job.id,
            job.worker,
            job.attempt,
            "timed out" if timed_out else "failed",
            error,
            f"; retry in {retry_in:.3g}s" if retry_in is not None else "; no retries left",
        )
        self.hooks.call(
            "backy_on_failure",
            job=job,
            worker=worker,
            error=error,
            will_retry=will_retry,
            timed_out=timed_out,
        )

    def _retry_delay(self, job: Job, worker: Worker | None, error: BaseException) -> float:
        chosen = self.hooks.first(
            "backy_retry_delay", accept=_is_delay, job=job, worker=worker, error=error
        )
        if chosen is not None:
            return float(chosen)
        custom: Callable[[int], float] | None = getattr(worker, "retry_delay", None)
        try:
            delay = custom(job.attempt) if custom else self.settings.retry_delay(job.attempt)
            if _is_delay(delay):
                return float(delay)
            log.error("retry_delay(%s) returned %r; retrying at once", job.attempt, delay)
        except Exception:
            log.exception("retry_delay(%s) raised; retrying at once", job.attempt)
        return 0.0


def _is_delay(value: Any) -> bool:
    # Past MAX_SECONDS, now() + delay could overflow the timestamp and the outcome could
    # not be written.
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_SECONDS
    )
