"""Spacing of the runner's round trips: under a stream, one statement for many jobs.

Every job enqueued one per transaction sends its own notification, and every attempt
that ends reports its own outcome. Claiming or writing at each of them costs the
database a transaction per job per runner, which at a few thousand jobs a second costs
more than the enqueues themselves. So a claim, or a write of outcomes, starts no sooner
than a gap after the start of the one before: what arrives meanwhile waits for the next
one and shares it. When the last one is older than the gap (anything but a stream)
nothing waits at all.

Runners that serve the same workers share the claims of a stream: each one's gap is
``CLAIM_GAP`` times how many of them there are (the beat says, see ``maintenance``), so
the fleet claims about once per ``CLAIM_GAP`` however many runners it has. The gaps
vary by a quarter either way, so runners woken by the same notifications drift apart
rather than claim in step.
"""

from __future__ import annotations

import random
import time

import gevent

#: The least time between the starts of two claims of one runner alone, in seconds:
#: under a stream of more than ``1 / CLAIM_GAP`` wake-ups a second, at most this much
#: (times the runners sharing) is added to a job's start; below that, nothing. It stays
#: below the 20 ms between the jobs of a 50 jobs/s trickle, which must not wait.
CLAIM_GAP = 0.01
#: The claim gap while a runner follows a stream (claims on its own, not woken by
#: notifications: ``runner.fetcher``). No trickle gets there, so nothing that arrives
#: alone waits for it; under a stream, each claim is a round trip and a commit for the
#: runner and the server whatever it brings, and twice the gap halves them.
STREAM_CLAIM_GAP = 0.02
#: The least time between the starts of two writes of outcomes, in seconds. Longer than
#: the claim gap: an outcome written later delays nothing but its row's update, while
#: each write is a round trip and a commit (under a steady stream, 25 ms instead of 10
#: cut the runner's CPU per job by about a sixth: 53-68 us against 67-85).
WRITE_GAP = 0.025
#: How much each gap varies either way, as a share of it.
JITTER = 0.25


class Spacing:
    """Keeps the starts of successive round trips about ``gap`` seconds apart."""

    def __init__(self, gap: float, jitter: float = 0.0) -> None:
        self.gap = gap
        self.jitter = jitter
        self._random = random.Random()
        self._last_start = -gap

    def wait_turn(self) -> bool:
        """Sleep until the gap has passed since the last turn began; begin this one.
        Whether it had to wait (the turns come faster than the gap)."""
        gap = self.gap * (1 + self._random.uniform(-self.jitter, self.jitter))
        delay = self._last_start + gap - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        self._last_start = time.monotonic()
        return delay > 0
