"""One call of ``perform`` in this process, under its ``max_runtime`` clock.

``run_in_process`` calls the worker and turns whatever happens into an ``Outcome``;
what to record and which hooks to call is the executor's business. The exceptions that
stop an attempt from outside (``HandBack``, ``JobRevoked``) are defined here too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import gevent
from gevent import getcurrent

from backy_gevent.job import Cancel, Job, JobTimeout, Snooze
from backy_gevent.worker import Worker


class HandBack(BaseException):
    """Thrown into a running job at shutdown: stop, and give the job back unspent."""


class JobRevoked(BaseException):
    """Thrown into (or raised by ``touch`` inside) an attempt whose job is no longer its
    own: cancelled, or rescued after its lease ran out. Stop; there is nothing to record,
    since the row has moved on without this attempt."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ``perform`` returned or raised (``Snooze`` and ``Cancel``
    are outcomes of their own), or the attempt was handed back (shutdown, a lease that
    ran out before it started) or revoked.

    ``overran``: ``perform`` returned, but past its ``max_runtime`` (since the start or
    the last touch): code that never yielded, which the timer could not interrupt.
    """

    kind: Literal["returned", "raised", "handed_back", "revoked", "snoozed", "cancelled"]
    result: Any = None
    duration: float = 0.0
    error: BaseException | None = None
    timed_out: bool = False
    overran: bool = False


HANDED_BACK = Outcome("handed_back")


class Deadline:
    """The ``max_runtime`` clock of one attempt; ``restart()`` is what ``touch`` does.

    Unlike ``gevent.Timeout``, it can be restarted from any greenlet and always throws
    into the job's own greenlet.
    """

    # One per running job: thousands may be alive at once.
    __slots__ = ("_error", "_timer", "ends_at", "seconds", "target")

    def __init__(self, seconds: float, error: BaseException | Callable[[], BaseException],
                 target: Any) -> None:
        self.seconds = seconds
        # The error may come as a function that makes it, for when it is needed: most
        # attempts never time out, and an exception costs as much as the rest of a
        # deadline to build.
        self._error = error
        self.target = target
        self.ends_at = float("inf")  # time.monotonic() at which it fires
        self._timer: Any = None

    def restart(self) -> None:
        self.cancel()
        self.ends_at = time.monotonic() + self.seconds
        self._timer = gevent.get_hub().loop.timer(self.seconds)
        # update: count from now, not from the loop's idea of now, which stays where it
        # was while the hub did not run (code that blocked it, or, outside a runner, a
        # caller that never yields): the clock would fire early by that much. (What
        # gevent.Timeout does too.)
        self._timer.start(self._expire, update=True)

    @property
    def error(self) -> BaseException:
        """What the attempt is stopped with when the deadline passes (one object, so
        that it can be told apart from the job's own errors)."""
        if not isinstance(self._error, BaseException):
            self._error = self._error()
        return self._error

    def overdue(self) -> float:
        """Seconds past the deadline (0 or less while it still runs)."""
        return time.monotonic() - self.ends_at

    def _expire(self) -> None:
        if not self.target.dead:
            self.target.throw(self.error)

    def cancel(self) -> None:
        self.ends_at = float("inf")
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def new_deadline(job: Job, worker: Worker) -> Deadline:
    """A ``max_runtime`` clock for an attempt of ``job`` in the current greenlet."""
    max_runtime = float(worker.max_runtime)
    return Deadline(max_runtime, lambda: JobTimeout(job.id, max_runtime), getcurrent())


class _Touch:
    """``job.touch()`` inside an attempt: restart its clock, extend its lease
    (``extend``), and stop the attempt if the job is no longer its own. (An object, not
    a closure: thousands of attempts may be alive at once, each holding one.)"""

    __slots__ = ("attempt", "deadline", "extend")

    def __init__(self, deadline: Deadline, extend: Callable[[], bool], attempt: Any) -> None:
        self.deadline = deadline
        self.extend = extend
        self.attempt = attempt  # the attempt's greenlet

    def __call__(self) -> None:
        self.deadline.restart()
        if not self.extend() and getcurrent() is self.attempt:
            # Going on would run the job twice: another runner may have it now.
            raise JobRevoked("no longer this runner's (cancelled or rescued)")


def run_in_process(
    job: Job, worker: Worker, deadline: Deadline, touch: Callable[[], bool]
) -> Outcome:
    """Call ``worker.perform`` in the current greenlet under ``deadline``.

    ``touch()`` is what ``job.touch()`` does besides restarting the clock (extend the
    lease); when it returns False the job is no longer ours and the attempt stops.
    ``GreenletExit`` (the runner ending its greenlets) is re-raised.
    """
    job._toucher = _Touch(deadline, touch, getcurrent())
    deadline.restart()
    started = time.monotonic()
    try:
        result = worker.perform(job, job.args)
        return Outcome(
            "returned", result, time.monotonic() - started, overran=deadline.overdue() > 0
        )
    except HandBack:
        return HANDED_BACK
    except JobRevoked as revoked:
        return Outcome("revoked", error=revoked)
    except Snooze as snooze:
        return Outcome("snoozed", duration=snooze.seconds, error=snooze)
    except Cancel as cancel:
        return Outcome("cancelled", error=cancel)
    except gevent.GreenletExit:
        raise
    except BaseException as exc:  # a job's error, whatever it is, is its outcome
        timed_out = isinstance(exc, JobTimeout) and exc is deadline.error
        return Outcome("raised", error=exc, timed_out=timed_out)
    finally:
        deadline.cancel()
        job._toucher = None
