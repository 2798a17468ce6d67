"""How much of a steady stream is left with runners that do nothing but claim and delete?

``backy-gevent bench`` holds the steady stream (4 clients enqueueing one job per
transaction while runners work) against the same clients with no runner. This script
runs the same clients beside N *raw* runners instead: processes with no runner code at
all, each one claiming with the runner's claim shape (at most once per ``--gap``
seconds times their number, so claims are shared as backy-gevent's are) and deleting
what it claimed. A
raw runner either LISTENs on the table's channel and claims when woken ("listen"), or
claims every gap without listening ("poll", as a runner following a stream does). What
they cost the stream is what the database work of running jobs costs on this machine,
without backy-gevent:

    .venv/bin/python scripts/raw_runner_stream.py --dsn postgresql://root@127.0.0.1/test

Prints the clients' rate with 0, 1 and 2 raw runners (``--runners``) of each mode
(``--modes``), each with its ratio to the rate with none, in a scratch schema dropped
afterwards.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

from backy_gevent.cli.bench import floors, paths, scratch  # noqa: E402
from backy_gevent.cli.bench.workers import Noop, Stamp  # noqa: E402
from backy_gevent.client import Client  # noqa: E402
from backy_gevent.config import Settings  # noqa: E402
from backy_gevent.db import green  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

green.install()

def stream_rate(client: Client, conn: object, dsn: str, runners: int, mode: str, gap: float,
                seconds: float) -> float:
    """The 4 clients' jobs a second beside ``runners`` raw runners of ``mode``."""
    channel = scratch.channel(conn)
    processes = [floors.raw_claimer(dsn, channel, mode=mode, gap=gap, limit=1000)
                 for _ in range(runners)]
    try:
        return paths.single_enqueue(client, seconds, lambda _: None, clients=4)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        time.sleep(0.2)
        scratch.empty(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--runners", default="0,1,2",
                        help="raw runner counts, comma-separated (default 0,1,2)")
    parser.add_argument("--modes", default="listen,poll",
                        help="raw runner modes, comma-separated: listen, poll")
    parser.add_argument("--gap", type=float, default=0.01,
                        help="least seconds between two claims of one raw runner alone")
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    counts = [int(n) for n in arguments.runners.split(",")]
    with scratch.scratch_schema(arguments.dsn) as (_, dsn), Client(
        Settings(dsn=dsn, table_name=scratch.TABLE),
        registry=Registry.from_classes(Noop, Stamp),
    ) as client, contextlib.closing(scratch.connect(dsn)) as conn:
        client.setup()
        for mode in arguments.modes.split(","):
            first = None
            for count in counts:
                # Runners sharing a stream space their claims by the gap times their
                # number, so that together they claim about once per gap.
                gap = arguments.gap * max(1, count)
                rate = stream_rate(client, conn, dsn, count, mode, gap, arguments.seconds)
                first = first or rate
                print(f"{mode}: {count} raw runner(s), each claiming {gap * 1000:g} ms apart:"
                      f" {rate:,.0f} jobs/s ({rate / first:.2f} of the first)", flush=True)


if __name__ == "__main__":
    main()
