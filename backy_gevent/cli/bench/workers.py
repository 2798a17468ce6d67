"""The bench's workers: they do nothing, so the bench measures the queue, not the work."""

from __future__ import annotations

import time
from typing import Any

from backy_gevent.worker import Worker

#: ``--import`` values that register the bench's workers in a runner.
IMPORTS = ("backy_gevent.cli.bench.workers:Noop", "backy_gevent.cli.bench.workers:Stamp")


class Noop(Worker):
    """Does nothing."""

    name = "backy_bench_noop"
    max_runtime = 30.0

    def perform(self, job: Any, args: dict[str, Any]) -> None:
        return None


class Stamp(Worker):
    """Appends its job's id and the time ``perform`` started to the file ``args["to"]``:
    the latency measurement reads it back. A file, not a table, so that recording the
    start adds no statement to the database being measured."""

    name = "backy_bench_stamp"
    max_runtime = 30.0

    def perform(self, job: Any, args: dict[str, Any]) -> None:
        started = time.time()
        with open(args["to"], "a") as stamps:
            stamps.write(f"{job.id} {started:.6f}\n")
