"""What do real runners cost a steady stream, and what does a change to them cost it?

``backy-gevent bench`` measures the steady stream (4 clients enqueueing one job per
transaction while runners work) once per runner count. On a noisy machine one stream
says little, so this script takes many short ones in turns: each round the clients
alone (the floor), then for every variant and runner count a stream beside freshly
started runners. A variant is a checkout of backy-gevent the runners import
(``NAME=PATH``: PATH goes first on their PYTHONPATH), optionally with runner settings
(``NAME=PATH:relaxed_commits=true``), so two versions of the runner can be held against
each other in the same minutes. The streams of a round run in a balanced order (a
Williams design, see ``balanced_order``: give it a multiple of as many rounds as there are
streams), as the machine drifts within a round. Two variants that run one runner the
same way read -0.001 apart (standard error 0.010) over 16 rounds so: a difference of
0.02 needs about that many. (Identical code from a worktree once read 0.045 below the
main checkout over 10 rounds, with the order fixed: hold checkouts of one kind against
each other, two ``git worktree``s.) Until 2026-12-05 this script left psycopg2
blocking, so the four clients took turns on one connection: its figures from before
then are of a one-connection stream, not the bench's.

    .venv/bin/python scripts/stream_turns.py --dsn postgresql://root@127.0.0.1/test \\
        --variants before=../before,after=../after --runners 1,2 --rounds 16

For each stream it prints the rate as a share of the round's floor, the runners' CPU
per job (from /proc), the WAL bytes per job (``pg_current_wal_insert_lsn``) and the
WAL range, for ``pg_waldump --stats=record -s START -e END`` on the server's host (its
``Transaction/COMMIT`` count is the stream's commits); then each variant's ratios,
sorted, and the differences round by round: each variant's second and later runner
counts against its first, and each later variant against the first (the mean with
its standard error, the median, and in how many rounds it was at least as high); and
the mean ratio by place in the round, which shows how much the order still matters.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from proc_cpu import cpu_seconds  # noqa: E402

from backy_gevent.cli.bench import paths, scratch  # noqa: E402
from backy_gevent.cli.bench.loops import balanced_order  # noqa: E402
from backy_gevent.cli.bench.report import Comparison  # noqa: E402
from backy_gevent.cli.bench.runners import runner_environment, runners  # noqa: E402
from backy_gevent.cli.bench.workers import Noop, Stamp  # noqa: E402
from backy_gevent.client import Client  # noqa: E402
from backy_gevent.config import Settings  # noqa: E402
from backy_gevent.db import green  # noqa: E402
from backy_gevent.worker import Registry  # noqa: E402

# psycopg2 waits on the hub, as in `backy-gevent bench`: without this each query
# blocks the process and the clients' greenlets take turns on one connection.
green.install()

CLIENTS = 4


def wal_position(conn: Any) -> tuple[float, str]:
    """The server's WAL insert position: in bytes, and as PostgreSQL writes it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0',"
                    " pg_current_wal_insert_lsn()::text")
        wal, lsn = cur.fetchone()
    return float(wal), lsn


def measured(conn: Any, measure: Callable[[], float]) -> tuple[float, float, str]:
    """Run ``measure`` (a rate, jobs a second); the rate, about how many jobs that was,
    and the WAL they wrote: bytes a job, and the range for ``pg_waldump``."""
    wal, start = wal_position(conn)
    started = time.monotonic()
    rate = measure()
    jobs = rate * (time.monotonic() - started)
    wal_after, end = wal_position(conn)
    return rate, jobs, f"{(wal_after - wal) / jobs:.0f} B of WAL a job; WAL {start}-{end}"


def variant_environment(spec: str) -> dict[str, str]:
    """The runners' environment for ``PATH[:setting=value,...]``."""
    path, _, settings = spec.partition(":")
    forwarded = {}
    for setting in filter(None, settings.split(";")):
        name, _, value = setting.partition("=")
        forwarded[f"BACKY_{name.upper()}"] = value
    env = runner_environment(forwarded, plugins=False)
    env["PYTHONPATH"] = os.path.abspath(path)
    # ``python -m`` puts the working directory first on sys.path, ahead of PYTHONPATH:
    # run from a checkout, every variant would import that checkout's backy_gevent.
    env["PYTHONSAFEPATH"] = "1"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    parser.add_argument("--variants", default="this=.",
                        help="NAME=PATH[:setting=value;...],... (default: this=.)")
    parser.add_argument("--runners", default="1,2", help="runner counts (default: 1,2)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="each stream's length")
    arguments = parser.parse_args()
    if arguments.seconds <= 0 or arguments.rounds < 1:
        parser.error("--seconds must be above 0 and --rounds at least 1")
    variants = {}
    for variant in arguments.variants.split(","):
        name, _, spec = variant.partition("=")
        if not name or not os.path.isdir(spec.partition(":")[0]):
            parser.error(f"--variants: {variant!r} is not NAME=PATH[:setting=value;...]"
                         " with PATH a checkout of backy-gevent")
        variants[name] = spec
    counts = [int(count) for count in arguments.runners.split(",")]
    ratios: dict[tuple[str, int], list[float]] = {}
    places: dict[int, list[float]] = {}  # place in the round (from 1): the ratios
    with scratch.scratch_schema(arguments.dsn) as (_, dsn):
        settings = Settings(dsn=dsn, table_name=scratch.TABLE)
        with Client(settings, registry=Registry.from_classes(Noop, Stamp)) as client, \
                contextlib.closing(scratch.connect(dsn)) as conn:
            client.setup()
            for round_ in range(arguments.rounds):
                floor, _, wal = measured(conn, lambda: paths.single_enqueue(
                    client, arguments.seconds, lambda _: None, CLIENTS))
                scratch.empty(conn)
                line = [f"floor {floor:,.0f}/s ({wal})"]
                streams = [(count, name) for count in counts for name in variants]
                for place, (count, name) in enumerate(balanced_order(streams, round_), 1):
                    spec = variants[name]
                    with runners(dsn, count, variant_environment(spec)) as processes:
                        pids = [process.pid for process in processes]
                        used = cpu_seconds(pids)
                        rate, jobs, wal = measured(conn, lambda: paths.stream(
                            client, conn, processes, CLIENTS, arguments.seconds,
                            lambda _: None))
                        used = cpu_seconds(pids) - used
                    scratch.empty(conn)
                    ratios.setdefault((name, count), []).append(rate / floor)
                    places.setdefault(place, []).append(rate / floor)
                    line.append(f"{name}/{count} {rate / floor:.2f}"
                                f" ({used / jobs * 1e6:.0f} us of runner CPU a job, {wal})")
                print(f"round {round_ + 1}: " + "  ".join(line), flush=True)
    for (name, count), shares in ratios.items():
        print(f"{name}, {count} runner(s): " + " ".join(f"{r:.2f}" for r in sorted(shares)))
    print("by place in the round: " + "  ".join(
        f"{place}: {statistics.mean(shares):.3f}" for place, shares in sorted(places.items())))
    for name in variants:
        for count in counts[1:]:
            print(paired(f"{name}/{count} against {name}/{counts[0]}",
                         ratios[(name, count)], ratios[(name, counts[0])]))
    first = next(iter(variants))
    for name in list(variants)[1:]:
        for count in counts:
            print(paired(f"{name}/{count} against {first}/{count}",
                         ratios[(name, count)], ratios[(first, count)]))


def paired(title: str, these: list[float], those: list[float]) -> str:
    """Round by round, ``these`` against ``those`` (the bench's ``Comparison``): the
    mean difference with its standard error, the median, and how many rounds it was at
    least 0 (the rounds share their floor and their minutes)."""
    compared = Comparison.of(title, 0, 0, these, those)
    error = compared.standard_error
    return (f"{title}: mean difference {compared.mean:+.3f}"
            f" (standard error {error if error is not None else float('nan'):.3f}),"
            f" median {statistics.median(compared.differences):+.3f}, at least as high in"
            f" {compared.at_least_as_high} of {len(compared.differences)} rounds")


if __name__ == "__main__":
    main()
