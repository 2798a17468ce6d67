"""Ready-made retry delays: ``exponential(...)`` returns a ``retry -> seconds`` callable.

A ``retry_delay`` is a callable that takes the number of the retry (1 before the first
retry) and returns seconds. The default stays Backy's, ``(retry**3 + 100) / 1000``
(about 0.1 s, 0.11 s, 0.13 s: right for a blip, far too soon for a service that is down).
``exponential`` spreads retries over minutes, with jitter so that jobs that failed
together don't all come back at the same moment, and a cap::

    retry_delay = backy.backoff.exponential(base=1.0, factor=2.0, cap=300.0, jitter=0.1)

It works as a worker's class attribute and as the config file's ``retry_delay``. Pure
arithmetic: no I/O, nothing imported but the standard library.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from backy_gevent.job import MAX_SECONDS

__all__ = ["ExponentialBackoff", "exponential"]


def exponential(
    base: float = 1.0,
    factor: float = 2.0,
    cap: float = 300.0,
    jitter: float = 0.1,
    *,
    rng: Callable[[], float] | None = None,
) -> ExponentialBackoff:
    """A retry delay of ``base * factor ** (retry - 1)`` seconds, at most ``cap``, each
    spread at random by up to ``jitter`` (a fraction) either way.

    Retry 1 waits about ``base``, retry 2 ``base * factor``, and so on up to ``cap``
    (with the defaults: about 1, 2, 4, 8... s, never more than 5 minutes). Each delay is
    drawn uniformly from ``[delay * (1 - jitter), delay * (1 + jitter)]``, cut at
    ``cap``: never above the cap, and no pile-up on it. ``jitter=0`` gives exact delays.

    ``rng`` is the random source: a callable returning a float in [0, 1), by default
    ``random.random``; pass ``random.Random(seed).random`` (or a constant) for
    repeatable delays in tests. Raises ``ValueError`` naming a bad argument.
    """
    return ExponentialBackoff(base, factor, cap, jitter, rng=rng)


class ExponentialBackoff:
    """What ``exponential`` returns: call it with the retry number to get seconds.

    A callable object rather than a function, so that it works as a worker's class
    attribute (``retry_delay = exponential(...)``): a plain function there would become
    a method and receive the worker as its first argument.
    """

    def __init__(
        self,
        base: float,
        factor: float,
        cap: float,
        jitter: float,
        *,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.base = _number("base", base, 0, MAX_SECONDS)
        self.factor = _number("factor", factor, 1, math.inf)
        self.cap = _number("cap", cap, 0, MAX_SECONDS)
        self.jitter = _number("jitter", jitter, 0, 1)
        self.rng = random.random if rng is None else rng

    def delay(self, retry: int) -> float:
        """The delay before retry number ``retry`` without jitter: at most ``cap``."""
        try:
            raw = self.base * self.factor ** (retry - 1)
        except OverflowError:  # a large retry number: far past any cap
            raw = math.inf
        return min(raw, self.cap)

    def __call__(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1 before the first retry)."""
        delay = self.delay(retry)
        low = delay * (1 - self.jitter)
        high = min(delay * (1 + self.jitter), self.cap)
        # Clamped: a random source that strays outside [0, 1) can't break the bounds.
        return min(high, max(low, low + (high - low) * self.rng()))

    def __repr__(self) -> str:
        return (
            f"exponential(base={self.base:g}, factor={self.factor:g}, cap={self.cap:g},"
            f" jitter={self.jitter:g})"
        )


def _number(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a float from ``low`` to ``high``; ValueError naming ``name`` if not."""
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
    if not (math.isfinite(number) and low <= number <= high):
        span = f"of at least {low:,}" if high == math.inf else f"from {low:,} to {high:,}"
        raise ValueError(f"exponential: {name} must be a number {span}, not {value!r}")
    return number
