"""Quarantine: one attempt in a process of its own, so that it can only kill itself.

A job that was running when its runner died is *quarantined* (see the ``rescue``
statement): it may be the one that killed the runner (``os._exit``, a segfault, memory
blown up), or an innocent that ran beside it. Its later attempts run here: the runner
starts a child process (``python -m backy_gevent.runner.isolated``) for the one
attempt, and talks to it over two pipes, one JSON message per line:

- to the child: the job, the worker's name and the options it needs; then the answer to
  each touch (``{"touched": true}``);
- from the child: ``{"touch": true}`` when the job touches, then the end of the
  attempt: ``{"returned": result, "duration": s}``, ``{"raised": {...}, "timed_out":
  b}`` or ``{"revoked": message}``.

If the child dies before saying how the attempt ended, the attempt failed with
``JobCrashed``, which names the exit status or the signal: the job that kills its process
is found on its first attempt in quarantine, is charged for it like for any failure, and
the runner and the jobs beside it never notice. The runner kills a child that runs past
``max_runtime`` plus a grace (pure CPU work included), and at a cold shutdown.
Hooks run in the runner, not in the child.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.fileobject import FileObjectPosix

from backy_gevent.job import Job, JobCrashed, JobTimeout
from backy_gevent.runner.attempt import HANDED_BACK, Deadline, HandBack, JobRevoked, Outcome

#: How many quarantined attempts one runner runs at once (each is a process).
ISOLATED_AT_ONCE = 4
#: How long past ``max_runtime`` the runner lets a child run before killing it: the
#: child stops the attempt itself at ``max_runtime`` when its code yields.
KILL_GRACE = 2.0


class IsolatedError(Exception):
    """The exception ``perform`` raised in a child process, as the child described it."""

    def __init__(self, error_type: str, message: str, traceback_text: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.traceback_text = traceback_text


def job_to_json(job: Job) -> dict[str, Any]:
    """The job's public fields, as JSON can carry them (datetimes as ISO text)."""
    fields = {}
    for name, value in vars(job).items():
        if not name.startswith("_"):
            fields[name] = value.isoformat() if isinstance(value, datetime.datetime) else value
    return fields


def job_from_json(fields: dict[str, Any]) -> Job:
    """The Job that ``job_to_json`` described."""
    job = Job(**fields)
    for name in ("run_at", "enqueued_at", "attempted_at", "finished_at", "expires_at"):
        value = getattr(job, name)
        if isinstance(value, str):
            setattr(job, name, datetime.datetime.fromisoformat(value))
    return job


def run_isolated(
    job: Job,
    deadline: Deadline,
    touch: Callable[[], bool],
    options: dict[str, Any],
) -> Outcome:
    """Run one attempt of ``job`` in a child process and return how it ended.

    ``deadline`` is the runner's own clock for the child (``max_runtime`` plus
    ``KILL_GRACE``): when it fires the child is killed and the attempt timed out.
    ``touch()`` extends the lease when the child's job touches. ``options`` are the
    settings the child needs (``imports``, and the client options jobs enqueue with).
    HandBack and JobRevoked thrown into this greenlet kill the child first.
    """
    child = _Child(options)
    try:
        child.send({"job": job_to_json(job), "options": options})
        deadline.restart()
        for message in child.messages():
            if "touch" in message:
                deadline.restart()
                child.send({"touched": touch()})
                continue
            return _outcome(job, message)
        return Outcome("raised", error=JobCrashed(job.id, child.wait()))
    except HandBack:
        child.kill()
        return HANDED_BACK
    except JobRevoked as revoked:
        child.kill()
        return Outcome("revoked", error=revoked)
    except JobTimeout as timeout:
        child.kill()
        return Outcome("raised", error=timeout, timed_out=True)
    except BaseException:
        child.kill()
        raise
    finally:
        deadline.cancel()
        child.close()


def _outcome(job: Job, message: dict[str, Any]) -> Outcome:
    if "returned" in message:
        return Outcome("returned", message["returned"], float(message.get("duration", 0.0)))
    if "revoked" in message:
        return Outcome("revoked", error=JobRevoked(message["revoked"]))
    raised = message["raised"]
    if message.get("timed_out"):
        return Outcome("raised", error=JobTimeout(job.id, float(raised["seconds"])),
                       timed_out=True)
    error = IsolatedError(raised["type"], raised["message"], raised["traceback"])
    return Outcome("raised", error=error)


class _Child:
    """The child process and the two pipes to it."""

    def __init__(self, options: dict[str, Any]) -> None:
        from_child, child_writes = os.pipe()
        child_reads, to_child = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backy_gevent.runner.isolated",
                 str(child_reads), str(child_writes)],
                pass_fds=(child_reads, child_writes),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self._reader = FileObjectPosix(from_child, "rb")
        self._writer = FileObjectPosix(to_child, "wb")

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message, default=str).encode() + b"\n")
        self._writer.flush()

    def messages(self) -> Iterator[dict[str, Any]]:
        """Each message the child sends, until it closes its end (it exited)."""
        for line in self._reader:
            yield json.loads(line)

    def wait(self) -> int | None:
        """The child's exit status, waiting a little for it to be reaped."""
        try:
            return self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            with gevent.Timeout(5.0, False):
                self.process.wait()

    def close(self) -> None:
        for pipe in (self._reader, self._writer):
            with contextlib.suppress(OSError):  # a child that is gone breaks the pipe
                pipe.close()
        if self.process.poll() is None:
            self.kill()
