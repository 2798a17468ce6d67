"""The runner's long-lived loops, supervised: no loop dies quietly or idles in silence.

Every loop of the runner (fetcher, listener, maintenance, completer) is a ``step``
function run by ``Supervisor.run``:

- a step that loses the database (a connection error, a silent server) is logged,
  recorded in the runner's ``DatabaseHealth`` and tried again after a growing pause,
  for as long as it takes: the database coming back is the cure;
- a step that fails with anything else (a permission revoked, a bug) is logged with its
  traceback, counted (``backy_runner_loop_failures_total``), reported by ``/healthz``,
  and tried again with the same backoff; a loop that has kept failing like that for
  ``give_up_after`` seconds can't be cured from inside, so the supervisor gives up:
  the runner stops and exits with status 1, for systemd or Kubernetes to restart it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable

from gevent.event import Event

from backy_gevent.db.connections import CONNECTION_ERRORS

log = logging.getLogger("backy_gevent.runner")


class Backoff:
    """Growing, capped sleeps between tries while the database is away."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return float(min(self.cap, self.first * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message, else its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__


class DatabaseHealth:
    """When the runner last reached the database, and why it can't now, if it can't."""

    def __init__(self) -> None:
        self.last_ok = 0.0  # time.monotonic() of the last statement that succeeded
        self.error: str | None = None

    def ok(self) -> None:
        """A statement succeeded just now."""
        self.last_ok = time.monotonic()
        self.error = None

    def failed(self, what: str, exc: BaseException, delay: float) -> None:
        """``what`` lost the database with ``exc``; it tries again in ``delay`` seconds."""
        self.error = one_line(exc)
        log.warning("%s: database error (%s); retrying in %.1fs", what, self.error, delay)

    def silent_for(self) -> float:
        """Seconds since the last statement that succeeded."""
        return time.monotonic() - self.last_ok


@dataclasses.dataclass
class Failing:
    """A loop whose last step failed with something other than a lost database."""

    since: float  # time.monotonic() of the first failure in a row
    error: str


class Supervisor:
    """Runs the runner's loops and knows which of them are failing.

    ``on_give_up(loop, error)`` is called (once) when a loop has failed for
    ``give_up_after`` seconds in a row; the runner then stops.
    """

    def __init__(
        self,
        database: DatabaseHealth,
        *,
        give_up_after: float,
        on_give_up: Callable[[str, BaseException], None],
    ) -> None:
        self.database = database
        self.give_up_after = give_up_after
        self.on_give_up = on_give_up
        #: Steps that failed with anything but a lost database, by loop, since start.
        self.failures: collections.Counter[str] = collections.Counter()
        #: Loops whose last step failed with anything but a lost database.
        self.failing: dict[str, Failing] = {}

    def run(self, what: str, step: Callable[[], float | None], *, stop: Event) -> None:
        """Call ``step`` until ``stop`` is set, or until the loop is given up.

        ``step`` does one round of the loop's work and returns how many seconds to
        pause before the next one (None: go on at once). Failed steps are tried again
        after a pause that doubles from 0.1 s to 5 s; a step that returns resets it.
        Pauses end early when ``stop`` is set.
        """
        backoff = Backoff()
        while not stop.is_set():
            try:
                pause = step()
            except CONNECTION_ERRORS as exc:
                pause = backoff.next_delay()
                self.database.failed(what, exc, pause)
            except Exception as exc:
                pause = backoff.next_delay()
                if self._failed(what, exc, pause):
                    return
            else:
                backoff.reset()
                self.failing.pop(what, None)
            if pause:
                stop.wait(pause)

    def _failed(self, what: str, exc: Exception, pause: float) -> bool:
        """Record a failed step; True when the loop must be given up."""
        self.failures[what] += 1
        now = time.monotonic()
        failing = self.failing.setdefault(what, Failing(now, one_line(exc)))
        failing.error = one_line(exc)
        if now - failing.since >= self.give_up_after:
            log.critical(
                "%s has failed for %.0fs; giving up: %s", what, now - failing.since,
                failing.error, exc_info=exc,
            )
            self.on_give_up(what, exc)
            return True
        log.error("%s failed: %s; retrying in %.1fs", what, failing.error, pause, exc_info=exc)
        return False

    def trouble(self) -> str | None:
        """A line naming a failing loop and why, or None when every loop is fine."""
        for what, failing in sorted(self.failing.items()):
            seconds = time.monotonic() - failing.since
            return f"{what} failing for {seconds:.0f}s: {failing.error}"
        return None
