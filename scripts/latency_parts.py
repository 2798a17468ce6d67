"""Split the enqueue-to-perform latency of an idle runner into its parts.

``backy-gevent bench`` gives the whole latency; this says where it goes. In a scratch
schema (dropped afterwards), one real runner keeps its finished rows
(``delete_finished_jobs = false``) and runs the bench's ``Stamp`` worker, which writes
when ``perform`` started. Jobs are enqueued at a steady pace; each one's time is then
split by the row's ``enqueued_at`` (the INSERT's transaction start) and ``attempted_at``
(the claim's), against the client's clock and the worker's (one machine, one clock):

    .venv/bin/python scripts/latency_parts.py --dsn postgresql://root@127.0.0.1/test

Prints p50 and p95 in milliseconds of: the client before the INSERT reaches the server;
the INSERT and its commit until ``enqueue`` returns; from then to the claim's start (the
wake-up); from the claim's start to ``perform`` (claim, commit, rows into Jobs, spawn).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from backy_gevent.cli.bench import scratch  # noqa: E402
from backy_gevent.cli.bench.loops import percentile  # noqa: E402
from backy_gevent.cli.bench.runners import runner_environment, runners  # noqa: E402
from backy_gevent.cli.bench.workers import Noop, Stamp  # noqa: E402
from backy_gevent.client import Client  # noqa: E402
from backy_gevent.config import Settings  # noqa: E402
from backy_gevent.db import green  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

green.install()

PARTS = ("client, before the INSERT", "INSERT and commit", "wake-up, to the claim's start",
         "claim's start to perform", "total")


def measure(dsn: str, jobs: int, rate: float, stamps: str) -> dict[str, list[float]]:
    """Enqueue ``jobs`` Stamp jobs at ``rate`` a second; each one's parts, in seconds."""
    called: dict[int, float] = {}
    returned: dict[int, float] = {}
    with scratch.scratch_schema(dsn) as (_, scoped):
        settings = Settings(dsn=scoped, table_name=scratch.TABLE)
        with Client(settings, registry=Registry.from_classes(Noop, Stamp)) as client:
            client.setup()
            env = runner_environment({"BACKY_DELETE_FINISHED_JOBS": "off"}, plugins=False)
            with runners(scoped, 1, env):
                started = time.monotonic()
                for n in range(jobs):
                    gevent.sleep(max(0.0, started + n / rate - time.monotonic()))
                    at = time.time()
                    job_id = client.enqueue(Stamp, {"to": stamps}).id
                    called[job_id], returned[job_id] = at, time.time()
                gevent.sleep(2)
            with contextlib.closing(scratch.connect(scoped)) as conn, conn.cursor() as cur:
                cur.execute("SELECT id, extract(epoch FROM enqueued_at)::float8,"
                            " extract(epoch FROM attempted_at)::float8 FROM backy_bench_jobs")
                rows = {job_id: (enqueued, attempted) for job_id, enqueued, attempted in cur}
    with open(stamps) as lines:
        performed = {int(job): float(at) for job, at in (line.split() for line in lines)}
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    for job_id, at in called.items():
        enqueued, attempted = rows[job_id]
        for part, seconds in zip(PARTS, (
                enqueued - at, returned[job_id] - enqueued, attempted - returned[job_id],
                performed[job_id] - attempted, performed[job_id] - at), strict=True):
            parts[part].append(seconds)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("BACKY_DSN"), required=False)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    arguments = parser.parse_args()
    if not arguments.dsn:
        parser.error("--dsn (or BACKY_DSN) is required")
    with tempfile.TemporaryDirectory() as directory:
        parts = measure(arguments.dsn, arguments.jobs, arguments.rate,
                        os.path.join(directory, "stamps"))
    for part, seconds in parts.items():
        print(f"{part:32s} p50 {percentile(seconds, 0.5) * 1000:6.2f} ms"
              f"  p95 {percentile(seconds, 0.95) * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
