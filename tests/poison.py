"""Workers that misbehave on purpose, for the reliability tests: each records its
attempt in ``runs`` (see tests/workers.py), then does something a job should not do.

Runners load them with ``--import tests.poison:Name`` (``POISON_IMPORTS``). Most misbehave
only outside quarantine (``job.quarantined`` false) when ``args["once"]`` is set, so a
test can tell the first, fatal attempt from the later, isolated ones.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
from typing import Any

import backy_gevent as backy
from tests.workers import record


def _misbehaves(job: backy.Job, args: dict[str, Any]) -> bool:
    return not (args.get("once") and job.quarantined)


class Exit(backy.Worker):
    """Ends its process with ``os._exit(3)``: no cleanup, no exception, no goodbye."""

    name = "poison_exit"
    max_runtime = 2.0
    requeue_delay = 1.0
    retry_count = 1

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        if _misbehaves(job, args):
            os._exit(3)
        record(job, finished=True)


class Segfault(backy.Worker):
    """Reads address 0: a segmentation fault."""

    name = "poison_segfault"
    max_runtime = 2.0
    requeue_delay = 1.0
    retry_count = 1

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        if _misbehaves(job, args):
            ctypes.string_at(0)
        record(job, finished=True)


class Spin(backy.Worker):
    """Computes in pure Python without ever yielding to the hub, forever."""

    name = "poison_spin"
    max_runtime = 1.0
    requeue_delay = 2.0
    retry_count = 0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        n = 0
        while True:
            n += 1


class Backtrack(backy.Worker):
    """Stuck in one C call that checks no signal (a regular expression backtracking)."""

    name = "poison_backtrack"
    max_runtime = 1.0
    requeue_delay = 30.0
    retry_count = 0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        re.match(r"(a+)+$", "a" * 64 + "b")


class Raise(backy.Worker):
    """Raises ``SystemExit``, ``KeyboardInterrupt`` or a bare ``BaseException``."""

    name = "poison_raise"
    retry_count = 0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        kind = args["kind"]
        if kind == "SystemExit":
            raise SystemExit(3)
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt
        raise BaseException("a bare BaseException")


class Signal(backy.Worker):
    """Sends its own process a signal (``args["signal"]``, default SIGTERM)."""

    name = "poison_signal"
    max_runtime = 2.0
    requeue_delay = 1.0
    retry_count = 0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        record(job)
        os.kill(os.getpid(), int(args.get("signal", signal.SIGTERM)))
        record(job, finished=True)


ALL = (Exit, Segfault, Spin, Backtrack, Raise, Signal)
POISON_IMPORTS = [arg for cls in ALL for arg in ("--import", f"tests.poison:{cls.__name__}")]
