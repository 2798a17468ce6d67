"""How the bench drives a measurement: repeat a step for some seconds from a few
greenlets, or at a steady pace; wait for a condition; read percentiles."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import gevent

T = TypeVar("T")
#: Called with a few words on how a phase is going, a few times a second.
Tick = Callable[[str], None]
#: How often a waiting phase looks again, and tells how it is going.
LOOK_EVERY = 0.01
TICK_EVERY = 0.25
#: In how many turns ``alternate`` runs each of its steps.
TURNS = 10


def repeat_for(seconds: float, step: Callable[[], object], tick: Tick,
               clients: int = 1) -> tuple[int, float]:
    """Run ``step`` over and over from ``clients`` greenlets for ``seconds``; return how
    many steps finished and the seconds they took (the last steps end after the window)."""
    done = [0]
    started = time.monotonic()
    until = started + seconds

    def client() -> None:
        while time.monotonic() < until:
            step()
            done[0] += 1

    greenlets = [gevent.spawn(client) for _ in range(clients)]
    try:
        while not all(greenlet.dead for greenlet in greenlets):
            gevent.joinall(greenlets, timeout=TICK_EVERY)
            for greenlet in greenlets:
                if greenlet.exception is not None:
                    raise greenlet.exception
            tick(f"{time.monotonic() - started:.1f}/{seconds:g}s, {done[0]:,} so far")
    finally:
        gevent.killall(greenlets)
    return done[0], time.monotonic() - started


def alternate(seconds: float, steps: Sequence[Callable[[], object]], tick: Tick,
              turns: int = TURNS) -> list[float]:
    """Steps a second of each of ``steps``, each run for ``seconds`` in all, in ``turns``
    turns taken in rotation. On a shared machine whose speed drifts within seconds (the
    disk's flush time above all), a figure and its floor measured one after the other
    can each catch a different spell; in turns, both see the same ones."""
    counts = [0] * len(steps)
    elapsed = [0.0] * len(steps)
    for turn in range(turns):
        for n, step in enumerate(steps):
            done, took = repeat_for(seconds / turns, step, lambda _: None)
            counts[n] += done
            elapsed[n] += took
        tick(f"turn {turn + 1}/{turns}")
    return [count / took for count, took in zip(counts, elapsed, strict=True)]


def balanced_order(items: Sequence[T], round_: int) -> list[T]:
    """``items`` in the order round ``round_`` takes them: the rows of a Williams design.
    Over every ``n`` rounds (``2n`` when ``n``, the number of items, is odd) each item
    takes every place of the round equally often and comes right after every other
    equally often. The machine drifts within a round: in a fixed order, or one merely
    reversed every other round, two of four streams that always took the middle places
    read 0.02 above the two at the ends (the same code, 16 rounds)."""
    n = len(items)
    first = [0]  # 0, 1, n-1, 2, n-2, ...: each difference between neighbours once
    for step in range(1, n):
        first.append((step + 1) // 2 if step % 2 else n - step // 2)
    order = [items[(position + round_) % n] for position in first]
    return order[::-1] if n % 2 and (round_ // n) % 2 else order


def in_turns(steps: Mapping[str, Callable[[int], T]], turns: int,
             after_turn: Callable[[int, dict[str, list[T]]], object] = lambda *_: None,
             ) -> dict[str, list[T]]:
    """Call each of ``steps`` once per turn, with the turn's number, for ``turns`` turns,
    in a balanced order (``balanced_order``): a figure and its floors taken in turns see
    the same spells of the machine. What each step returned, by name, turn by turn;
    ``after_turn(turn, taken)`` is called at the end of each turn."""
    taken: dict[str, list[T]] = {name: [] for name in steps}
    for turn in range(turns):
        for name in balanced_order(list(steps), turn):
            taken[name].append(steps[name](turn))
        after_turn(turn, taken)
    return taken


def paced(rate: float, count: int, step: Callable[[], object], tick: Tick) -> None:
    """Call ``step`` ``count`` times, ``rate`` times a second, each call at its own time
    (late calls are not bunched up to catch up)."""
    started = time.monotonic()
    for n in range(count):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        step()
        if n % max(1, round(rate * TICK_EVERY)) == 0:
            tick(f"{n:,}/{count:,} jobs")


def wait_until(done: Callable[[], bool], timeout: float, what: str, tick: Tick,
               check: Callable[[], None] = lambda: None) -> None:
    """Return once ``done()``; ``check()`` may raise to give up early; past ``timeout``
    seconds, raise ``RuntimeError`` naming ``what`` was awaited."""
    started = time.monotonic()
    last_tick = 0.0
    while not done():
        check()
        now = time.monotonic()
        if now - started > timeout:
            raise RuntimeError(f"gave up waiting for {what} after {timeout:.0f}s")
        if now - last_tick > TICK_EVERY:
            tick(f"waiting for {what}")
            last_tick = now
        gevent.sleep(LOOK_EVERY)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of ``values`` (``share`` from 0 to 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]
