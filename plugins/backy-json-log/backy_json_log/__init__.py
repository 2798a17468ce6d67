"""backy-json-log: one JSON object per line for every job and runner event.

Installed, it is found through its ``backy.plugins`` entry point (``json-log``) and logs
to the file named by ``BACKY_JSON_LOG_FILE`` (appending; several processes may share the
file), or to stderr when that variable is unset, empty or ``-``. Job args are never
logged: they may hold personal data.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import backy_gevent as backy

__version__ = "0.1.0"

#: The environment variable naming the log file.
FILE_VARIABLE = "BACKY_JSON_LOG_FILE"
#: Results longer than this (as JSON) are logged as a truncated repr.
MAX_RESULT_CHARS = 1000


def error_type(error: BaseException) -> str:
    """``ValueError`` for built-in exceptions, ``package.module.Name`` for the rest."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _result(value: Any) -> Any:
    """``value`` when it is small JSON, else a truncated repr of it."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = None
    if text is not None and len(text) <= MAX_RESULT_CHARS:
        return value
    shown = repr(value)
    return shown if len(shown) <= MAX_RESULT_CHARS else shown[: MAX_RESULT_CHARS - 3] + "..."


def _job_fields(job: backy.Job) -> dict[str, Any]:
    return {"job_id": job.id, "worker": job.worker, "queue": job.queue, "attempt": job.attempt}


class JsonLog:
    """The plugin: each hook writes one JSON line.

    ``environ`` is read at every event, so the destination can change without a restart
    of the process (tests rely on it); ``now`` gives the timestamp. Each line is written
    with a single ``write`` call on a file opened for appending, so lines from several
    greenlets or processes never interleave.
    """

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
            datetime.timezone.utc
        ),
    ) -> None:
        self.environ = environ
        self.now = now
        self._files: dict[str, int] = {}

    # -- output -----------------------------------------------------------------------

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        """Write one event: ``ts``, ``event``, ``level``, ``pid``, then ``fields``."""
        record = {
            "ts": self.now().isoformat(timespec="milliseconds"),
            "event": event,
            "level": level,
            "pid": os.getpid(),
            **fields,
        }
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        path = self.environ.get(FILE_VARIABLE, "")
        if path in ("", "-"):
            sys.stderr.write(line)
            sys.stderr.flush()
            return
        fd = self._files.get(path)
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._files[path] = fd
        os.write(fd, line.encode())

    # -- hooks ------------------------------------------------------------------------

    @backy.hookimpl
    def backy_runner_started(self, runner: Any) -> None:
        self.emit(
            "runner_started",
            runner=runner.id,
            workers=[registration.name for registration in runner.registry],
            queues=list(runner.settings.queues),
        )

    @backy.hookimpl
    def backy_runner_stopping(self, runner: Any) -> None:
        self.emit("runner_stopping", runner=runner.id)

    @backy.hookimpl
    def backy_job_enqueued(self, jobs: list[backy.Job]) -> None:
        for job in jobs:
            self.emit(
                "job_enqueued",
                **_job_fields(job),
                priority=job.priority,
                run_at=job.run_at,
                max_attempts=job.max_attempts,
            )

    @backy.hookimpl
    def backy_before_job(self, job: backy.Job) -> None:
        waited = (self.now() - job.run_at).total_seconds() if job.run_at else None
        self.emit(
            "job_started", **_job_fields(job), runner=job.runner_id, wait=_seconds(waited)
        )

    @backy.hookimpl
    def backy_after_job(self, job: backy.Job, result: Any, duration: float) -> None:
        self.emit(
            "job_succeeded", **_job_fields(job), duration=_seconds(duration), result=_result(result)
        )

    @backy.hookimpl
    def backy_on_failure(
        self, job: backy.Job, error: BaseException, will_retry: bool, timed_out: bool
    ) -> None:
        self.emit(
            "job_failed",
            "warning" if will_retry else "error",
            **_job_fields(job),
            will_retry=will_retry,
            timed_out=timed_out,
            retries_left=job.retries_left,
            error_type=error_type(error),
            error=str(error),
        )


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 6)


#: What the ``json-log`` entry point registers.
plugin = JsonLog()
