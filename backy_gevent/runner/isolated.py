"""``python -m backy_gevent.runner.isolated IN_FD OUT_FD``: one quarantined attempt.

The child side of ``runner.isolation``: patch gevent, read the job from ``IN_FD``, find
its worker the way the runner does (entry points and ``imports``), run ``perform``
under its ``max_runtime``, report each touch and the end of the attempt on ``OUT_FD``,
and exit. Jobs that enqueue jobs use a default client with the runner's options.
"""

from gevent import monkey

monkey.patch_all()

from backy_gevent.db import green  # noqa: E402 - must follow the patch

green.install()

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

from gevent.fileobject import FileObjectPosix  # noqa: E402

import backy_gevent  # noqa: E402
from backy_gevent.runner.attempt import Outcome, new_deadline, run_in_process  # noqa: E402
from backy_gevent.runner.isolation import job_from_json  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402


class _Parent:
    """The two pipes to the runner."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._reader = FileObjectPosix(in_fd, "rb")
        self._writer = FileObjectPosix(out_fd, "wb")

    def receive(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise SystemExit("the runner closed the pipe")
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message, default=repr).encode() + b"\n")
        self._writer.flush()

    def touch(self) -> bool:
        self.send({"touch": True})
        return bool(self.receive()["touched"])


def _report(outcome: Outcome) -> dict[str, Any]:
    if outcome.kind == "returned":
        return {"returned": outcome.result, "duration": outcome.duration}
    if outcome.kind == "revoked":
        return {"revoked": str(outcome.error)}
    error = outcome.error
    assert error is not None
    return {
        "raised": {
            "type": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
            "seconds": getattr(error, "seconds", None),
        },
        "timed_out": outcome.timed_out,
    }


def main(argv: list[str]) -> int:
    parent = _Parent(int(argv[0]), int(argv[1]))
    message = parent.receive()
    options = message["options"]
    logging.basicConfig(
        level=str(options.get("log_level", "info")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    job = job_from_json(message["job"])
    try:
        worker_class = Registry.discover(options["imports"]).get(job.worker).cls
        backy_gevent.configure(**options["client"])
        worker = worker_class()
    except Exception as exc:  # as in the runner: the attempt failed, it did not crash
        parent.send(_report(Outcome("raised", error=exc)))
        return 0
    outcome = run_in_process(job, worker, new_deadline(job, worker), parent.touch)
    parent.send(_report(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
