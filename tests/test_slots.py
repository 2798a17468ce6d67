"""Slots (``db.slots``, the connection pool's): at most ``size`` holders at once, under
threads and under gevent's patching; a waiter that is interrupted leaves the slot to the
others; giving back more than was taken is an error."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from backy_gevent.db.slots import Slots
from tests.conftest import ROOT

#: Greenlets in a gevent-patched process: twelve take turns at three slots while each
#: holds its slot across a sleep; then, with one slot, a holder and two waiters, the
#: first waiter is killed while it waits and the holder gives its slot back: the second
#: must get it. Prints the most holders at once, then "second got it" or "stuck".
GREENLETS = r"""
from gevent import monkey
monkey.patch_all()
import gevent
from backy_gevent.db.slots import Slots
slots, out, peak = Slots(3), [0], [0]
def hold():
    slots.acquire()
    out[0] += 1
    peak[0] = max(peak[0], out[0])
    gevent.sleep(0.01)
    out[0] -= 1
    slots.release()
gevent.joinall([gevent.spawn(hold) for _ in range(12)], raise_error=True)
print(peak[0], slots.free())
one = Slots(1)
one.acquire()
first = gevent.spawn(one.acquire)
second = gevent.spawn(one.acquire)
gevent.sleep(0.05)
first.kill()
one.release()
second.join(timeout=2)
print("second got it" if second.successful() and one.free() == 0 else "stuck")
"""


def test_greenlets_take_turns_and_an_interrupted_waiter_leaves_the_slot() -> None:
    result = subprocess.run([sys.executable, "-c", GREENLETS], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    counts, outcome = result.stdout.splitlines()
    assert counts.split() == ["3", "3"]  # three at once at most, all three free after
    assert outcome == "second got it"


def test_threads_take_turns() -> None:
    slots, lock = Slots(2), threading.Lock()
    out, peak = [0], [0]

    def hold() -> None:
        slots.acquire()
        with lock:
            out[0] += 1
            peak[0] = max(peak[0], out[0])
        time.sleep(0.02)
        with lock:
            out[0] -= 1
        slots.release()

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert all(not thread.is_alive() for thread in threads)
    assert (peak[0], slots.free()) == (2, 2)


def test_giving_back_more_than_was_taken_is_an_error() -> None:
    slots = Slots(1)
    slots.acquire()
    slots.release()
    with pytest.raises(ValueError, match="released more times"):
        slots.release()
    assert slots.free() == 1
