"""The runner's long-lived loops, supervised: each step retried with backoff on failure.

``supervise`` is the one skeleton every loop of the runner (fetcher, listener,
maintenance, completer) runs in: it calls the loop's ``step`` until told to stop, and
when a step loses the database it logs what happened, records it in the runner's
``DatabaseHealth`` (which ``/healthz`` reads), and tries again after a growing pause.
"""

from __future__ import annotations

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
        self.error = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("%s: database error (%s); retrying in %.1fs", what, self.error, delay)

    def silent_for(self) -> float:
        """Seconds since the last statement that succeeded."""
        return time.monotonic() - self.last_ok


def supervise(
    what: str,
    step: Callable[[], float | None],
    *,
    stop: Event,
    health: DatabaseHealth,
) -> None:
    """Call ``step`` until ``stop`` is set; retry it with backoff when it loses the database.

    ``step`` does one round of the loop's work and returns how many seconds to pause
    before the next one (None: go on at once). A step that raises a connection error is
    logged under ``what`` and tried again after a pause that doubles from 0.1 s to 5 s;
    a step that returns resets the pause. Pauses end early when ``stop`` is set.
    """
    backoff = Backoff()
    while not stop.is_set():
        try:
            pause = step()
        except CONNECTION_ERRORS as exc:
            pause = backoff.next_delay()
            health.failed(what, exc, pause)
        else:
            backoff.reset()
        if pause:
            stop.wait(pause)
