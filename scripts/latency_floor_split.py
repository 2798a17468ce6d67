"""The bench's latency floor, the same floor with its claimer in a process of its own,
and an idle runner, in turns.

``backy-gevent bench`` holds the runner's enqueue-to-perform latency against a raw loop
in one process: one connection inserts and notifies, one LISTENs, one claims when woken
(``floors.wake_and_claim``). That process is awake when the notification comes: it has
just inserted. A runner is a process of its own, asleep in ``epoll`` until then. This
script measures the floor in both shapes (``floors.wake_and_claim_apart``) and the
runner's latency (as the bench does) in turns, in a scratch schema dropped afterwards,
to show what the process boundary alone costs and what the runner adds beyond it:

    .venv/bin/python scripts/latency_floor_split.py --dsn postgresql://root@127.0.0.1/test

Prints, for each of ``--rounds`` rounds, the p50 and p95 in milliseconds of each (the
three in a balanced order: each takes each place as often over six rounds), then the
mean of the rounds' p50s.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from backy_gevent.cli.bench import floors, paths, scratch  # noqa: E402
from backy_gevent.cli.bench.loops import in_turns, percentile  # noqa: E402
from backy_gevent.cli.bench.runners import runner_environment, runners  # noqa: E402
from backy_gevent.cli.bench.workers import Noop, Stamp  # noqa: E402
from backy_gevent.client import Client  # noqa: E402
from backy_gevent.config import Settings  # noqa: E402
from backy_gevent.db import green  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

green.install()

SHAPES = ("one process", "claimer apart", "runner")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    arguments = parser.parse_args()
    rate, samples = arguments.rate, arguments.samples
    with contextlib.ExitStack() as stack:
        _, dsn = stack.enter_context(scratch.scratch_schema(arguments.dsn))
        client = stack.enter_context(Client(Settings(dsn=dsn, table_name=scratch.TABLE),
                                            registry=Registry.from_classes(Noop, Stamp)))
        client.setup()
        conn = stack.enter_context(contextlib.closing(scratch.connect(dsn)))
        stamps = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "stamps")
        floor_channel = f"{scratch.channel(conn)}_floor"
        processes = stack.enter_context(
            runners(dsn, 1, runner_environment({}, plugins=False)))
        same = stack.enter_context(floors.wake_and_claim(dsn, floor_channel, rate))

        def printed(round_: int, taken: dict[str, list[list[float]]]) -> None:
            paths.finished(conn, processes, lambda _: None)
            scratch.empty(conn)
            print(" | ".join(f"{shape}: p50 {percentile(taken[shape][-1], 0.5) * 1000:.2f} ms,"
                             f" p95 {percentile(taken[shape][-1], 0.95) * 1000:.2f} ms"
                             for shape in SHAPES), flush=True)

        taken = in_turns({
            "one process": lambda _: same(samples, lambda _: None),
            "claimer apart": lambda _: floors.wake_and_claim_apart(
                dsn, floor_channel, rate, samples, lambda _: None),
            "runner": lambda _: paths.latency(client, processes, stamps, rate, samples,
                                              lambda _: None),
        }, arguments.rounds, printed)
    print("mean of the p50s: " + ", ".join(
        f"{shape} {statistics.mean(percentile(part, 0.5) for part in taken[shape]) * 1000:.2f} ms"
        for shape in SHAPES))


if __name__ == "__main__":
    main()
