"""Quarantine: suspect attempts run in child processes, which is all they can kill.

A job that was running when its runner died is *quarantined* (see the ``rescue``
statement): it may be the one that killed the runner (``os._exit``, a segfault, memory
blown up), or one of the innocents that ran beside it. Its later attempts run here, in a
child process of the runner (``python -m backy_gevent.runner.isolated``):

- quarantined attempts share one long-lived child (up to ``BATCH_MAX`` at once; a full
  one is sealed and a new one opened), so a runner that died with a thousand jobs in
  flight costs a few processes, not a thousand, and an attempt starts at once;
- when a child dies before every attempt in it ended, the unfinished ones are split in
  two halves, each run again at once in a child of its own, until the one that kills
  its process runs alone: it then fails with ``JobCrashed`` (naming the signal or the
  exit status) and is charged for it like for any failure, while every innocent
  finishes, uncharged;
- a child whose attempt runs past ``max_runtime`` plus a grace (pure CPU work that no
  timeout can interrupt) is killed: that attempt timed out, the others are rerun;
- the open child is started with the runner and stays ready (imports done, workers
  found), so a quarantined attempt starts as fast as any other, within the bound a
  dead runner's jobs are promised.

The runner talks to each child over two pipes, one JSON message per line. To the
child: the options at once, then jobs as they come (``{"jobs": [...]}``), ``{"id": n,
"touched": b}`` answers, ``{"id": n, "stop": true}`` orders, and ``{"seal": true}``
(no more jobs: exit once those have ended). From the child: ``{"id": n,
"touch": true}`` (the first one when the attempt is about to start) and one end per
attempt: ``{"id": n, "returned": result, "duration": s}``, ``{"id": n, "raised":
{...}, "timed_out": b}``, ``{"id": n, "snoozed": s}``, ``{"id": n, "cancelled":
reason}`` or ``{"id": n, "revoked": message}``. Hooks run in the runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult, Event
from gevent.fileobject import FileObjectPosix

from backy_gevent.job import Cancel, Job, JobCrashed, JobTimeout, Snooze
from backy_gevent.runner.attempt import HANDED_BACK, Deadline, HandBack, JobRevoked, Outcome

log = logging.getLogger("backy_gevent.executor")

#: How long a child may take to be ready for its attempts.
START_TIMEOUT = 60.0
#: Most attempts that share one child process.
BATCH_MAX = 100
#: How long past ``max_runtime`` the runner lets an attempt in a child run before
#: killing the child: the child stops the attempt itself at ``max_runtime`` when its
#: code yields. Never more than half of ``requeue_delay``, to stay within the lease.
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


@dataclasses.dataclass(eq=False)
class Ticket:
    """One quarantined attempt waiting for, or running in, a child."""

    job: Job
    deadline: Deadline  # max_runtime plus the grace, started when the attempt starts
    touch: Callable[[], bool]
    started: Event = dataclasses.field(default_factory=Event)  # at the first touch
    outcome: AsyncResult = dataclasses.field(default_factory=AsyncResult)
    child: _Child | None = None


class Quarantine:
    """Runs quarantined attempts in child processes; one per runner.

    ``options`` are what a child needs: ``imports``, ``log_level`` and ``client`` (the
    options of the default client jobs enqueue with).
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._waiting: list[Ticket] = []
        self._arrived = Event()
        self._dispatcher: gevent.Greenlet | None = None
        self._children: set[_Child] = set()
        self._open: _Child | None = None  # takes new quarantined attempts as they come

    def start(self) -> None:
        """Start the open child now, so that the first quarantined attempt need not wait."""
        self._open_child()

    def _open_child(self) -> _Child:
        """The child that takes new attempts: alive and not full, else a new one (the
        old one is sealed: it ends once its attempts have)."""
        child = self._open
        if child is not None and child.alive() and len(child.tickets) < BATCH_MAX:
            return child
        if child is not None:
            child.seal()
        self._open = child = self._start_child()
        return child

    def _start_child(self) -> _Child:
        child = _Child(self.options)
        self._children.add(child)
        gevent.spawn(self._serve, child)
        return child

    def run(self, ticket: Ticket, lease: float) -> Outcome:
        """Run ``ticket``'s attempt in a child, from the job's own greenlet; return how
        it ended. HandBack, JobRevoked and the deadline's JobTimeout end it early.

        While its child starts (a busy machine may take seconds), the job is touched
        every third of its ``lease``, as a running job would be; a child that is not
        ready within ``START_TIMEOUT`` gives the job back.
        """
        if self._dispatcher is None:
            self._dispatcher = gevent.spawn(self._dispatch)
        self._waiting.append(ticket)
        self._arrived.set()
        try:
            if not self._wait_ready(ticket, lease):
                return self._end(ticket, HANDED_BACK)
            outcome: Outcome = ticket.outcome.get()
            return outcome
        except HandBack:
            return self._end(ticket, HANDED_BACK)
        except JobRevoked as revoked:
            return self._end(ticket, Outcome("revoked", error=revoked))
        except JobTimeout as timeout:
            # Past max_runtime and the grace: code that no timeout interrupts. Only
            # killing its process stops it; the attempts beside it are run again.
            log.warning("job %s ran past max_runtime in its process; killing the process",
                        ticket.job.id)
            ended = self._end(ticket, Outcome("raised", error=timeout, timed_out=True))
            if ticket.child is not None:
                ticket.child.kill()
            return ended
        finally:
            ticket.deadline.cancel()
            if ticket in self._waiting:
                self._waiting.remove(ticket)

    def _wait_ready(self, ticket: Ticket, lease: float) -> bool:
        """Wait until the child is ready for the attempt (or has ended it), keeping the
        lease alive meanwhile; False when it is not worth waiting any longer."""
        give_up = time.monotonic() + START_TIMEOUT
        while not (ticket.started.is_set() or ticket.outcome.ready()):
            left = give_up - time.monotonic()
            if left <= 0:
                log.warning("job %s: its process was not ready in %gs; handed back",
                            ticket.job.id, START_TIMEOUT)
                return False
            gevent.wait([ticket.started, ticket.outcome], timeout=min(lease / 3, left),
                        count=1)
            if not (ticket.started.is_set() or ticket.outcome.ready()) and not ticket.touch():
                raise JobRevoked("no longer this runner's (cancelled or rescued)")
        return True

    def _end(self, ticket: Ticket, outcome: Outcome) -> Outcome:
        """End a ticket from the runner's side: what its child says later is ignored."""
        if not ticket.outcome.ready():
            ticket.outcome.set(outcome)
            if ticket.child is not None:
                ticket.child.stop(ticket)
        return outcome

    def close(self) -> None:
        """Kill every child (the runner is stopping; its attempts were handed back)."""
        for child in list(self._children):
            child.kill()
        if self._dispatcher is not None:
            self._dispatcher.kill(block=False)

    def _dispatch(self) -> None:
        """Hand the attempts that arrived together to the open child, as they arrive."""
        while True:
            self._arrived.wait()
            self._arrived.clear()
            gevent.sleep(0.01)  # let the rest of a claim's batch arrive
            while self._waiting:
                child = self._open_child()
                room = BATCH_MAX - len(child.tickets)
                batch, self._waiting = self._waiting[:room], self._waiting[room:]
                child.assign(batch)

    def _serve(self, child: _Child) -> None:
        """Serve ``child`` until it exits; if it died with attempts unfinished, bisect."""
        try:
            child.serve()
        finally:
            self._children.discard(child)
        unfinished = [t for t in child.tickets.values() if not t.outcome.ready()]
        if not unfinished:
            return
        returncode = child.returncode()
        if len(unfinished) == 1:
            ticket = unfinished[0]
            ticket.outcome.set(Outcome("raised", error=JobCrashed(ticket.job.id, returncode)))
            return
        log.warning(
            "a quarantine process died (status %s) with %d attempts unfinished; running"
            " them again in two halves to find the one that kills its process",
            returncode, len(unfinished),
        )
        half = len(unfinished) // 2
        for part in (unfinished[:half], unfinished[half:]):
            sealed = self._start_child()
            sealed.assign(part)
            sealed.seal()


class _Child:
    """One child process, the attempts it runs, and the two pipes to it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.tickets: dict[int, Ticket] = {}
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
        self._send({"options": options})

    def alive(self) -> bool:
        return self.process.poll() is None

    def assign(self, batch: list[Ticket]) -> None:
        """Give the child more attempts (it may have been ready and waiting)."""
        for ticket in batch:
            self.tickets[ticket.job.id] = ticket
            ticket.child = self
        try:
            self._send({"jobs": [job_to_json(t.job) for t in batch]})
        except OSError as exc:  # it died: serve() sees it and bisects
            log.warning("a quarantine process is gone: %s", exc)

    def seal(self) -> None:
        """No more attempts for this child: it exits once the ones it has have ended."""
        with contextlib.suppress(OSError):
            self._send({"seal": True})

    def serve(self) -> None:
        """Answer the child until it exits: touches, and each attempt's end."""
        try:
            for line in self._reader:
                message = json.loads(line)
                ticket = self.tickets.get(message.pop("id"))
                if ticket is None or ticket.outcome.ready():
                    continue  # stopped meanwhile: what it says no longer matters
                if "touch" in message:
                    ticket.started.set()
                    ticket.deadline.restart()
                    self._send({"id": ticket.job.id, "touched": ticket.touch()})
                else:
                    ticket.outcome.set(_outcome(ticket.job, message))
        except (OSError, ValueError) as exc:  # a broken pipe, a garbled line
            log.warning("a quarantine process could not be heard: %s", exc)
        finally:
            self.kill()
            self.close()

    def stop(self, ticket: Ticket) -> None:
        """Ask the child to stop one attempt (a cancel, a hand-back)."""
        with contextlib.suppress(OSError):
            self._send({"id": ticket.job.id, "stop": True})

    def returncode(self) -> int | None:
        with gevent.Timeout(5.0, False):
            return self.process.wait()
        return self.process.poll()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)

    def close(self) -> None:
        for pipe in (self._reader, self._writer):
            with contextlib.suppress(OSError):  # a child that is gone breaks the pipe
                pipe.close()

    def _send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message, default=str).encode() + b"\n")
        self._writer.flush()


def _outcome(job: Job, message: dict[str, Any]) -> Outcome:
    if "returned" in message:
        return Outcome("returned", message["returned"], float(message.get("duration", 0.0)))
    if "revoked" in message:
        return Outcome("revoked", error=JobRevoked(message["revoked"]))
    if "snoozed" in message:
        seconds = float(message["snoozed"])
        return Outcome("snoozed", duration=seconds, error=Snooze(seconds))
    if "cancelled" in message:
        return Outcome("cancelled", error=Cancel(message["cancelled"]))
    raised = message["raised"]
    if message.get("timed_out"):
        return Outcome("raised", error=JobTimeout(job.id, float(raised["seconds"])),
                       timed_out=True)
    error = IsolatedError(raised["type"], raised["message"], raised["traceback"])
    return Outcome("raised", error=error)
