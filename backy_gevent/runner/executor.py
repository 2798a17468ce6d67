"""One attempt of one job: hooks, the ``max_runtime`` clock, and the outcome.

The executor knows nothing of fetching or of the database; it reports each attempt's
outcome to an ``OutcomeSink`` (the runner's completer), so one job's life can be tested
without a runner loop.
"""

from __future__ import annotations

import datetime
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
from backy_gevent.worker import Registration, Worker

log = logging.getLogger("backy_gevent.executor")


class HandBack(BaseException):
    """Thrown into a running job at shutdown: stop, and give the job back unspent."""


class JobRevoked(BaseException):
    """Thrown into (or raised by ``touch`` inside) an attempt whose job is no longer its
    own: cancelled, or rescued after its lease ran out. Stop; there is nothing to record,
    since the row has moved on without this attempt."""


class OutcomeSink(Protocol):
    """Where the executor reports outcomes (the runner's completer)."""

    def completed(self, job: Job) -> None: ...

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None: ...

    def handed_back(self, job: Job) -> None: ...

    def touch(self, job: Job, lease: float) -> bool: ...


class Deadline:
    """The ``max_runtime`` clock of one attempt; ``restart()`` is what ``touch`` does.

    Unlike ``gevent.Timeout``, it can be restarted from any greenlet and always throws
    into the job's own greenlet.
    """

    def __init__(self, seconds: float, error: BaseException, target: Any) -> None:
        self.seconds = seconds
        self.error = error
        self.target = target
        self.expired = False
        self._timer: Any = None

    def restart(self) -> None:
        self.cancel()
        self._timer = gevent.get_hub().loop.timer(self.seconds)
        self._timer.start(self._expire)

    def _expire(self) -> None:
        self.expired = True
        if not self.target.dead:
            self.target.throw(self.error)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def error_entry(job: Job, error: BaseException) -> dict[str, Any]:
    """The record of a failed attempt appended to ``job.errors``."""
    return {
        "attempt": job.attempt,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "error": f"{type(error).__module__}.{type(error).__qualname__}",
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }


def lease_seconds(worker_class: type[Worker]) -> float:
    """How long a claimed attempt may go without a touch before it is rescued."""
    return float(worker_class.max_runtime) + float(worker_class.requeue_delay)


class Executor:
    """Runs attempts and reports their outcomes; one Executor serves a whole runner."""

    def __init__(self, settings: Settings, hooks: Hooks, sink: OutcomeSink) -> None:
        self.settings = settings
        self.hooks = hooks
        self.sink = sink
        #: The greenlets inside ``perform`` right now; shutdown interrupts only these.
        self.performing: dict[Any, Job] = {}

    def run(self, job: Job, registration: Registration) -> None:
        """Run one attempt of ``job`` in the current greenlet and report its outcome."""
        try:
            worker = registration.cls()
        except Exception as exc:
            self._fail(job, None, exc, timed_out=False)
            return
        self.hooks.call("backy_before_job", job=job, worker=worker)
        started = time.monotonic()
        returned, result = self._perform(job, worker)
        if not returned:
            return
        duration = time.monotonic() - started
        self.hooks.call(
            "backy_after_job", job=job, worker=worker, result=result, duration=duration
        )
        self.sink.completed(job)

    def _perform(self, job: Job, worker: Worker) -> tuple[bool, Any]:
        """Call ``perform`` under the ``max_runtime`` clock.

        Returns ``(True, result)`` when it returned; ``(False, None)`` when the attempt
        ended otherwise and its outcome (failure, hand-back, nothing when revoked) has
        been reported already.
        """
        current = getcurrent()
        max_runtime = float(worker.max_runtime)
        deadline = Deadline(max_runtime, JobTimeout(job.id, max_runtime), current)
        job._toucher = self._toucher(job, deadline, lease_seconds(type(worker)))
        deadline.restart()
        self.performing[current] = job
        try:
            return True, worker.perform(job, job.args)
        except HandBack:
            deadline.cancel()
            self.sink.handed_back(job)
        except JobRevoked as revoked:
            log.info("job %s (%s) attempt %s stopped: %s", job.id, job.worker, job.attempt,
                     revoked)
        except gevent.GreenletExit:
            deadline.cancel()
            self.sink.handed_back(job)
            raise
        except BaseException as exc:  # a job's error, whatever it is, is its outcome
            deadline.cancel()  # now, not in finally: the failure hooks run first
            self._fail(job, worker, exc, timed_out=exc is deadline.error)
        finally:
            self.performing.pop(current, None)
            deadline.cancel()
            job._toucher = None
        return False, None

    def _toucher(self, job: Job, deadline: Deadline, lease: float) -> Callable[[], None]:
        """What ``job.touch()`` does during this attempt: restart the clock, extend the
        lease, and stop the attempt if the job is no longer this runner's."""
        attempt_greenlet = deadline.target

        def touch() -> None:
            deadline.restart()
            if not self.sink.touch(job, lease) and getcurrent() is attempt_greenlet:
                # Going on would run the job twice: another runner may have it now.
                raise JobRevoked("no longer this runner's (cancelled or rescued)")

        return touch

    def _fail(
        self, job: Job, worker: Worker | None, error: BaseException, *, timed_out: bool
    ) -> None:
        will_retry = job.attempt < job.max_attempts
        retry_in = self._retry_delay(job, worker, error) if will_retry else None
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
        self.sink.failed(job, error_entry(job, error), retry_in)

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
