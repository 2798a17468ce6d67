"""How much CPU does one runner spend on a steady stream, a second and a job?

Starts one real runner of the bench's no-op worker in a scratch schema (dropped
afterwards), measures its CPU (from /proc) while idle, then while clients enqueue one job
per transaction at each paced rate (``--rates``, jobs a second, each for ``--seconds``),
counted until the runner has run the last of them:

    .venv/bin/python scripts/runner_cpu.py --dsn postgresql://root@127.0.0.1/test

The CPU a second that does not grow with the rate is the cost of the runner's cycles
(its claims every gap, its writes of outcomes, their wake-ups); what grows with it is
the cost of each job.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

from backy_gevent.cli.bench import paths, scratch  # noqa: E402
from backy_gevent.cli.bench.loops import paced  # noqa: E402
from backy_gevent.cli.bench.runners import runner_environment, runners  # noqa: E402
from backy_gevent.cli.bench.workers import Noop, Stamp  # noqa: E402
from backy_gevent.client import Client  # noqa: E402
from backy_gevent.config import Settings  # noqa: E402
from backy_gevent.db import green  # noqa: E402
from backy_gevent.db.connections import ConnectionPool  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

# psycopg2 waits on the hub, as in `backy-gevent bench`: without this each query
# blocks the process and the clients' greenlets take turns on one connection.
green.install()

#: Jobs a second one paced client enqueues at most (a commit takes about 1 ms here).
PER_CLIENT = 400


def rates(text: str) -> list[float]:
    """``--rates``: jobs a second, comma-separated, each above 0."""
    try:
        values = [float(rate) for rate in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of rates above 0")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--rates", type=rates, default="100,200,500,1000,1500",
                        help="jobs a second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    if arguments.seconds <= 0:
        parser.error("--seconds must be above 0")
    with scratch.scratch_schema(arguments.dsn) as (_, dsn):
        settings = Settings(dsn=dsn, table_name=scratch.TABLE)
        pool = ConnectionPool(dsn, size=8, application_name="backy-gevent runner_cpu",
                              prepare=True)
        with Client(settings, registry=Registry.from_classes(Noop, Stamp), pool=pool) as client, \
                contextlib.closing(scratch.connect(dsn)) as conn:
            client.setup()
            with runners(dsn, 1, runner_environment({}, plugins=False)) as processes:
                pid = processes[0].pid
                used = cpu_seconds([pid])
                time.sleep(arguments.seconds)
                idle = (cpu_seconds([pid]) - used) / arguments.seconds
                print(f"idle: {idle * 1000:.1f} ms of CPU a second", flush=True)
                for rate in arguments.rates:
                    clients = max(1, round(rate / PER_CLIENT))
                    each = int(rate / clients * arguments.seconds)
                    used, started = cpu_seconds([pid]), time.monotonic()
                    gevent.joinall([
                        gevent.spawn(paced, rate / clients, each,
                                     lambda: client.enqueue(Noop, {}), lambda _: None)
                        for _ in range(clients)])
                    paths.finished(conn, processes, lambda _: None)
                    elapsed, used = time.monotonic() - started, cpu_seconds([pid]) - used
                    jobs = clients * each
                    print(f"{rate:,.0f} jobs/s (ran {jobs / elapsed:,.0f}/s): runner"
                          f" {used / elapsed * 1000:.0f} ms of CPU a second,"
                          f" {used / jobs * 1e6:.0f} us a job", flush=True)
                    scratch.empty(conn)


if __name__ == "__main__":
    main()
