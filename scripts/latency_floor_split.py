"""The bench's latency floor, and the same floor with its claimer in a process of its own.

``backy-gevent bench`` holds the runner's enqueue-to-perform latency against a raw loop
in one process: one connection inserts and notifies, one LISTENs, one claims when woken
(``floors.wake_and_claim``). That process is awake when the notification comes: it has
just inserted. A runner is a process of its own, asleep in ``epoll`` until then. This
script measures both shapes side by side (``floors.wake_and_claim_apart``), in a scratch
schema dropped afterwards, to show what the process boundary alone costs:

    .venv/bin/python scripts/latency_floor_split.py --dsn postgresql://root@127.0.0.1/test

Prints p50 and p95 in milliseconds of each, for each of ``--rounds`` rounds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402

from backy_gevent.cli.bench import floors, scratch  # noqa: E402
from backy_gevent.cli.bench.loops import percentile  # noqa: E402
from backy_gevent.cli.bench.workers import Noop, Stamp  # noqa: E402
from backy_gevent.client import Client  # noqa: E402
from backy_gevent.config import Settings  # noqa: E402
from backy_gevent.db import green  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

green.install()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    with scratch.scratch_schema(arguments.dsn) as (_, dsn), Client(
        Settings(dsn=dsn, table_name=scratch.TABLE),
        registry=Registry.from_classes(Noop, Stamp),
    ) as client, contextlib.closing(scratch.connect(dsn)) as conn:
        client.setup()
        channel = scratch.channel(conn)
        for _ in range(arguments.rounds):
            with floors.wake_and_claim(dsn, f"{channel}_floor", arguments.rate) as measure:
                same = measure(arguments.samples, lambda _: None)
            scratch.empty(conn)
            split = floors.wake_and_claim_apart(dsn, channel, arguments.rate,
                                                arguments.samples, lambda _: None)
            scratch.empty(conn)
            print(f"one process: p50 {percentile(same, 0.5) * 1000:.2f} ms,"
                  f" p95 {percentile(same, 0.95) * 1000:.2f} ms | claimer apart:"
                  f" p50 {percentile(split, 0.5) * 1000:.2f} ms,"
                  f" p95 {percentile(split, 0.95) * 1000:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
