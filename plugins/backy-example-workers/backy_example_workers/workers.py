"""Three small workers that show the Worker API: output, touch, and retries."""

from __future__ import annotations

from typing import Any

import gevent

import backy_gevent as backy


class Greet(backy.Worker):
    """Print a greeting, as the Backy README's TestWorker does."""

    max_runtime = 5.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> str:
        name = args.get("name", "world")
        print(f"Job started for {name}", flush=True)
        print("Job finished", flush=True)
        return f"hello {name}"


class Nap(backy.Worker):
    """Sleep for ``seconds``; touch the job every ``touch_every`` seconds to outlive
    ``max_runtime`` (2 s here), as in the Backy README."""

    max_runtime = 2.0
    max_concurrency = 2
    requeue_delay = 5.0

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        remaining = float(args.get("seconds", 1.0))
        step = float(args.get("touch_every", remaining) or remaining)
        while remaining > 0:
            gevent.sleep(min(step, remaining))
            remaining -= step
            if remaining > 0 and args.get("touch_every"):
                backy.touch(job)


class Flaky(backy.Worker):
    """Fail until attempt ``succeed_on`` (never, by default), to watch retries."""

    retry_count = 2

    def retry_delay(self, retry: int) -> float:
        return 0.5 * retry

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        succeed_on = args.get("succeed_on")
        if succeed_on is None or job.attempt < int(succeed_on):
            raise RuntimeError(f"flaky failure on attempt {job.attempt}")
