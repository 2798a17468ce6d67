"""Spacing of the runner's round trips: under a stream, one statement for many jobs.

Every job enqueued one per transaction sends its own notification, and every attempt
that ends reports its own outcome. Claiming or writing at each of them costs the
database a transaction per job per runner, which at a few thousand jobs a second costs
more than the enqueues themselves (and with two runners, twice that). So a claim, or a
write of outcomes, starts no sooner than ``gap`` seconds after the start of the one
before: what arrives meanwhile waits for the next one and shares it. When the last one
is older than ``gap`` (anything but a stream) nothing waits at all.
"""

from __future__ import annotations

import time

import gevent

#: The least time between the starts of two claims of one runner, and of two writes of
#: outcomes, in seconds: at most this much is added to a job's start under a stream of
#: more than ``1 / CLAIM_GAP`` wake-ups a second; none below that.
CLAIM_GAP = 0.01
WRITE_GAP = 0.01


class Spacing:
    """Keeps the starts of successive round trips at least ``gap`` seconds apart."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self._last_start = -gap

    def wait_turn(self) -> None:
        """Sleep until ``gap`` has passed since the last turn began; begin this one."""
        delay = self._last_start + self.gap - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        self._last_start = time.monotonic()
