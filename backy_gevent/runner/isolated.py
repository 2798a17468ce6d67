"""``python -m backy_gevent.runner.isolated IN_FD OUT_FD``: quarantined attempts.

The child side of ``runner.isolation``: patch gevent, read the options from ``IN_FD``,
find the workers the way the runner does (entry points and ``imports``), wait for the
jobs (a spare child waits until the runner needs it), and run each
attempt in a greenlet of its own under its ``max_runtime``: touch it once (starting a
process takes a moment of the lease), run ``perform``, report each touch and the end of
the attempt on ``OUT_FD``; exit when every attempt has ended. Jobs that enqueue jobs use
a default client with the runner's options.
"""

from gevent import monkey

monkey.patch_all()

from backy_gevent.db import green  # noqa: E402 - must follow the patch

green.install()

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import faulthandler  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import gevent  # noqa: E402
from gevent.event import AsyncResult, Event  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402

import backy_gevent  # noqa: E402
from backy_gevent.job import Job  # noqa: E402
from backy_gevent.runner.attempt import (  # noqa: E402
    JobRevoked,
    Outcome,
    new_deadline,
    run_in_process,
)
from backy_gevent.runner.isolation import job_from_json  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

#: prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class _Runner:
    """The pipes to the runner: touches asked and answered, ends reported, stops heard."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._reader = FileObjectPosix(in_fd, "rb")
        self._writer = FileObjectPosix(out_fd, "wb")
        self._touches: dict[int, AsyncResult] = {}
        self.attempts: dict[int, gevent.Greenlet] = {}
        self.sealed = False
        self.done = Event()  # sealed, and every attempt ended

    def receive(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            _runner_gone()
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._writer.write(json.dumps(message, default=repr).encode() + b"\n")
            self._writer.flush()
        except BrokenPipeError:
            _runner_gone()

    def touch(self, job_id: int) -> bool:
        answer = self._touches[job_id] = AsyncResult()
        self.send({"id": job_id, "touch": True})
        return bool(answer.get())

    def listen(self, registry: Registry) -> None:
        """Take the runner's jobs, answers and orders, until it closes the pipe."""
        while True:
            message = self.receive()
            if "jobs" in message:
                for fields in message["jobs"]:
                    job = job_from_json(fields)
                    attempt = gevent.spawn(_attempt, self, registry, job)
                    attempt.link(lambda _: self._maybe_done())
                    self.attempts[job.id] = attempt
            elif message.get("seal"):
                self.sealed = True
                self._maybe_done()
            elif "touched" in message:
                self._touches.pop(message["id"]).set(message["touched"])
            elif message.get("stop") and message["id"] in self.attempts:
                self.attempts[message["id"]].kill(JobRevoked("stopped by the runner"),
                                                  block=False)

    def _maybe_done(self) -> None:
        if self.sealed and all(attempt.dead for attempt in self.attempts.values()):
            self.done.set()


def _report(job_id: int, outcome: Outcome) -> dict[str, Any]:
    if outcome.kind == "returned":
        return {"id": job_id, "returned": outcome.result, "duration": outcome.duration}
    if outcome.kind == "revoked":
        return {"id": job_id, "revoked": str(outcome.error)}
    if outcome.kind == "snoozed":
        return {"id": job_id, "snoozed": outcome.duration}
    if outcome.kind == "cancelled":
        return {"id": job_id, "cancelled": str(outcome.error)}
    error = outcome.error
    assert error is not None
    return {
        "id": job_id,
        "raised": {
            "type": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
            "seconds": getattr(error, "seconds", None),
        },
        "timed_out": outcome.timed_out,
    }


def _attempt(runner: _Runner, registry: Registry, job: Job) -> None:
    """One attempt, reported to the runner however it ends."""
    try:
        worker = registry.get(job.worker).cls()
    except Exception as exc:  # as in the runner: the attempt failed, it did not crash
        runner.send(_report(job.id, Outcome("raised", error=exc)))
        return
    try:
        ready = runner.touch(job.id)
    except JobRevoked as revoked:  # stopped by the runner before it started
        runner.send({"id": job.id, "revoked": str(revoked)})
        return
    if not ready:
        runner.send({"id": job.id, "revoked": "no longer this runner's when it started"})
        return

    def touch() -> bool:
        return runner.touch(job.id)

    outcome = run_in_process(job, worker, new_deadline(job, worker), touch)
    runner.send(_report(job.id, outcome))


def _runner_gone() -> NoReturn:
    """The runner closed the pipes: it died (its death signal is on the way) or stopped.
    Nothing this process does can be reported any more: end it now, quietly."""
    os._exit(0)


def _die_with_the_runner() -> None:
    """A child outlives nothing: when its runner dies (kill -9 above all), the kernel
    kills it too (Linux), so its attempts end with their runner's, as if in-process."""
    runner_pid = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != runner_pid:  # the runner died before the request was made
        os._exit(1)


def main(argv: list[str]) -> int:
    _die_with_the_runner()
    runner = _Runner(int(argv[0]), int(argv[1]))
    options = runner.receive()["options"]
    logging.basicConfig(
        level=str(options.get("log_level", "info")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    faulthandler.enable()
    # Ready before there is work: the runner keeps this process open for what comes.
    registry = Registry.discover(options["imports"])
    backy_gevent.configure(**options["client"])
    gevent.spawn(runner.listen, registry)
    runner.done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
