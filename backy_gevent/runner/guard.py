"""The hub guard: a native thread that watches the gevent hub from outside it.

Everything in a runner happens in one gevent hub, so code that computes without ever
yielding (a pure-CPU job, a plugin stuck in a C call) stops everything else: timers,
the heartbeat, signals, the shutdown itself. The guard is an OS thread, outside the
hub, that notices when the hub has not run for a while:

- after a second, it sends the process ``SIGUSR2``; the handler runs between two
  bytecodes of whatever is blocking the hub and, when that is a job past its
  ``max_runtime``, raises the job's ``JobTimeout`` right there: pure Python loops are
  stopped on time like any other job;
- when the hub stays blocked longer than the longest ``max_runtime`` plus a few seconds
  (a C call that no signal interrupts, and that may hold the GIL, so no Python thread
  can run either), ``faulthandler``'s own C thread, re-armed by the hub about once a
  second, prints every thread's traceback and exits the process with status 1: its
  jobs' leases free them, and the job that was running will run in quarantine, in a
  process of its own;
- after a second stop signal, when the process has not exited within ``COLD_SECONDS``,
  it exits at once (status 0): a cold stop never waits on anything.

The runner reserves ``SIGUSR2``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from typing import Any

import gevent
from gevent import monkey

from backy_gevent.runner.executor import Executor

#: How long a second stop signal may take to end the process.
COLD_SECONDS = 2.0
#: After how long a blocked hub is poked (SIGUSR2), and how often the guard looks.
POKE_AFTER = 1.0
CHECK_EVERY = 0.25
#: How often the hub re-arms faulthandler's timer, at most. Re-arming joins the old
#: timer thread and starts a new one while holding the GIL: 65 us on an idle machine,
#: but 2.6 ms at p95 (9 ms at worst) with both cores busy, time in which the whole hub
#: stands still. So it is armed for ``stuck_after`` plus this, and re-armed this often.
REARM_EVERY = 1.0

# The real ones: gevent has patched these into greenlet-based versions.
_sleep = monkey.get_original("time", "sleep")
_start_thread = monkey.get_original("_thread", "start_new_thread")


class HubGuard:
    """Watches the hub of this process; ``start()`` once, in the hub's thread."""

    def __init__(self, executor: Executor, *, stuck_after: float) -> None:
        self.executor = executor
        self.stuck_after = stuck_after
        #: Set by a second stop signal: time.monotonic() by which the process must end.
        self.exit_by: float | None = None
        self._tick = time.monotonic()
        self._armed_at = -REARM_EVERY
        self._timer: Any = None
        self._stopped = False

    def start(self) -> None:
        """Start beating in the hub, handling SIGUSR2, and watching from a thread."""
        faulthandler.enable()  # a segfault prints the Python traceback of every thread
        self._beat()
        self._timer = gevent.get_hub().loop.timer(CHECK_EVERY / 2, CHECK_EVERY / 2, ref=False)
        self._timer.start(self._beat)
        signal.signal(signal.SIGUSR2, self._interrupt_overdue_job)
        _start_thread(self._watch, ())

    def stop(self) -> None:
        """Stop watching (the runner is done)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.close()
        faulthandler.cancel_dump_traceback_later()

    def exit_soon(self) -> None:
        """A second stop signal came: the process must be gone within COLD_SECONDS."""
        if self.exit_by is None:
            self.exit_by = time.monotonic() + COLD_SECONDS

    def _beat(self) -> None:
        self._tick = now = time.monotonic()
        if now - self._armed_at >= REARM_EVERY:
            # Needs no GIL to fire: the way out of a C call that never returns. Armed
            # this long, it fires once the hub has been blocked for about ``stuck_after``
            # to ``stuck_after + REARM_EVERY`` seconds.
            self._armed_at = now
            faulthandler.dump_traceback_later(self.stuck_after + REARM_EVERY, exit=True)

    def _interrupt_overdue_job(self, signum: int, frame: Any) -> None:
        # Runs in the main thread, inside whatever greenlet is blocking the hub.
        running = self.executor.overdue(gevent.getcurrent())
        if running is not None:
            raise running.deadline.error

    def _watch(self) -> None:
        while not self._stopped:
            _sleep(CHECK_EVERY)
            now = time.monotonic()
            if self.exit_by is not None and now >= self.exit_by:
                _exit(0, f"not stopped {COLD_SECONDS:g}s after a second stop signal;"
                         " exiting now (jobs not handed back are rescued by their leases)")
            blocked = now - self._tick
            if blocked >= POKE_AFTER and not self._stopped:
                os.kill(os.getpid(), signal.SIGUSR2)


def _exit(status: int, why: str) -> None:
    """End the process now, saying why on stderr (logging's locks may be held)."""
    os.write(2, f"backy-gevent: {why}\n".encode())
    os._exit(status)
