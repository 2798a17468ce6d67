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

import faulthandler  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import AsyncResult  # noqa: E402
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


class _Runner:
    """The pipes to the runner: touches asked and answered, ends reported, stops heard."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._reader = FileObjectPosix(in_fd, "rb")
        self._writer = FileObjectPosix(out_fd, "wb")
        self._touches: dict[int, AsyncResult] = {}
        self.attempts: dict[int, gevent.Greenlet] = {}

    def receive(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise SystemExit("the runner closed the pipe")
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message, default=repr).encode() + b"\n")
        self._writer.flush()

    def touch(self, job_id: int) -> bool:
        answer = self._touches[job_id] = AsyncResult()
        self.send({"id": job_id, "touch": True})
        return bool(answer.get())

    def listen(self) -> None:
        """Route the runner's answers and orders until it closes the pipe."""
        while True:
            message = self.receive()
            job_id = message["id"]
            if "touched" in message:
                self._touches.pop(job_id).set(message["touched"])
            elif message.get("stop") and job_id in self.attempts:
                self.attempts[job_id].kill(JobRevoked("stopped by the runner"), block=False)


def _report(job_id: int, outcome: Outcome) -> dict[str, Any]:
    if outcome.kind == "returned":
        return {"id": job_id, "returned": outcome.result, "duration": outcome.duration}
    if outcome.kind == "revoked":
        return {"id": job_id, "revoked": str(outcome.error)}
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
    if not runner.touch(job.id):
        runner.send({"id": job.id, "revoked": "no longer this runner's when it started"})
        return

    def touch() -> bool:
        return runner.touch(job.id)

    outcome = run_in_process(job, worker, new_deadline(job, worker), touch)
    runner.send(_report(job.id, outcome))


def main(argv: list[str]) -> int:
    runner = _Runner(int(argv[0]), int(argv[1]))
    options = runner.receive()["options"]
    logging.basicConfig(
        level=str(options.get("log_level", "info")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    faulthandler.enable()
    # Ready before there is work: this child may be the runner's spare.
    registry = Registry.discover(options["imports"])
    backy_gevent.configure(**options["client"])
    jobs = [job_from_json(fields) for fields in runner.receive()["jobs"]]
    gevent.spawn(runner.listen)
    for job in jobs:
        runner.attempts[job.id] = gevent.spawn(_attempt, runner, registry, job)
    gevent.joinall(list(runner.attempts.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
