"""Slots: at most ``size`` holders at once, for threads and greenlets alike, and cheap to
take while one is free.

The connection pool takes a slot for every operation, an enqueue's and a claim's
included. A semaphore did this job, and gevent's costs little in a loop but 38 us to
acquire in a process that slept 20 ms before (its thread and hub checks): a tenth of
the client's part of an idle runner's enqueue-to-perform latency. Here a free slot is
an item of a plain list, and taking one is a ``pop``, atomic under the GIL whether
threads or greenlets take turns. Only a taker that finds none waits, on a condition
variable (made of gevent's locks in a process that gevent has patched, of the standard
ones otherwise), and only a giver that sees someone waiting touches it.

Why that loses no wake-up: a waiter counts itself (under the condition's lock) before
it looks for a slot once more, and a giver puts its slot back before it looks at that
count. Either the giver sees the waiter, and notifies it under the same lock, or the
waiter sees the slot. Every waiter is woken (``notify_all``): one woken and then
interrupted, before it took the slot, must not leave the others asleep beside it.
"""

from __future__ import annotations

import threading


class Slots:
    """``size`` slots; ``acquire`` takes one (waiting while none is free), ``release``
    gives one back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[None] = [None] * size
        self._waiting = 0  # takers inside the slow path; changed under the condition
        self._freed = threading.Condition()

    def acquire(self) -> None:
        """Take a slot, waiting (cooperatively under gevent) until one is free."""
        try:
            self._free.pop()
            return
        except IndexError:
            pass
        with self._freed:
            self._waiting += 1
            try:
                while True:
                    try:
                        self._free.pop()
                        return
                    except IndexError:
                        self._freed.wait()
            finally:
                self._waiting -= 1

    def release(self) -> None:
        """Give a slot back, and wake the takers waiting for one, if any."""
        if len(self._free) >= self.size:
            raise ValueError("Slots released more times than acquired")
        self._free.append(None)
        if self._waiting:
            with self._freed:
                self._freed.notify_all()

    def free(self) -> int:
        """How many slots are free now."""
        return len(self._free)
