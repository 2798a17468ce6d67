"""``backy-gevent bench``: the phases in order, the table or JSON at the end, and a clean
exit on ^C (runners stopped, scratch schema dropped, exit status 130)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import signal
import statistics
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import gevent
import greenlet

from backy_gevent.cli.bench import floors, paths, scratch
from backy_gevent.cli.bench.loops import (
    TURNS,
    alternate,
    balanced_order,
    in_turns,
    percentile,
)
from backy_gevent.cli.bench.progress import Progress
from backy_gevent.cli.bench.report import Comparison, Row, as_json, runners_named, table
from backy_gevent.cli.bench.runners import runner_environment, runners
from backy_gevent.cli.bench.workers import Noop, Stamp
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db.connections import ConnectionPool
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.worker import Registry

#: Signals that stop the bench in order (runners stopped, schema dropped): ^C, a
#: terminal that went away, a service manager's stop. The exit status is then 128 plus
#: the signal's number, as a shell reports a process ended by it (130 for ^C).
STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
#: Turns of each runner count's backlog drain and of its floor, each of ``--jobs`` jobs.
DRAIN_TURNS = 2


class Stopped(BaseException):
    """Raised in the bench's main greenlet by the first stop signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
#: Options of ``bench`` not forwarded to its runners as ``BACKY_*`` variables: the bench
#: sets these itself.
_NOT_FORWARDED = ("dsn", "table_name", "log_level", "data_dir")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each phase does: the bench's own flags."""

    jobs: int
    seconds: float
    clients: int
    rate: float
    samples: int
    runners: tuple[int, ...]
    stream_rounds: int
    plugins: bool


@dataclasses.dataclass
class Bench:
    """What every phase works with: the scratch schema's DSN, a client of the bench's
    table, a connection to watch it, the runners' environment, the progress line."""

    sizes: Sizes
    settings: Settings
    dsn: str
    client: Client
    conn: Any
    env: dict[str, str]
    progress: Progress
    stamps: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)


def command_bench(arguments: argparse.Namespace, settings: Settings) -> int:
    """Run the bench; print the table (or with ``--json`` the JSON) on stdout."""
    assert settings.dsn is not None  # main() started the embedded server otherwise
    sizes = Sizes(arguments.jobs, arguments.seconds, arguments.clients, arguments.rate,
                  arguments.samples, tuple(arguments.runner_counts), arguments.stream_rounds,
                  arguments.plugins)
    progress = Progress(total=_phases(sizes))
    try:
        with _stoppable():
            rows, comparisons, server = _run(settings, sizes, _forwarded(arguments), progress)
    except Stopped as stopped:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            progress.close()
            print("backy-gevent: bench: interrupted; runners stopped, scratch schema"
                  " dropped", file=sys.stderr)
        return 128 + stopped.signum
    except RuntimeError as exc:  # a runner that did not start or died; a wait given up
        progress.close()
        print(f"backy-gevent: error: bench: {exc}; scratch schema dropped", file=sys.stderr)
        return 1
    progress.close()
    if arguments.json:
        print(as_json(rows, _about(settings, sizes, server), comparisons))
    else:
        print(table(rows, comparisons))
    return 0


def _phases(sizes: Sizes) -> int:
    """Three phases without runners, the latency and its floor (with one runner, started
    for it alone when 1 is not among the counts), the drain and its floor per runner
    count, and the steady stream's rounds."""
    return 4 + len(sizes.runners) + sizes.stream_rounds


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """Turn the first stop signal into ``Stopped`` in this greenlet, wherever it waits;
    ignore later ones, so that the clean-up it starts runs to its end."""
    main = greenlet.getcurrent()
    fired: list[int] = []

    def on_signal(signum: int) -> None:
        if not fired:
            fired.append(signum)
            gevent.kill(main, Stopped(signum))

    watchers = [gevent.signal_handler(signum, on_signal, signum) for signum in STOP_SIGNALS]
    try:
        yield
    finally:
        for watcher in watchers:
            watcher.cancel()


def _forwarded(arguments: argparse.Namespace) -> dict[str, str]:
    """The runner options given to ``bench`` as flags, as the runners' ``BACKY_*``
    variables (a config file is passed on as ``BACKY_CONFIG``)."""
    from backy_gevent.cli.parser import COMMAND_OPTIONS

    env = {"BACKY_CONFIG": arguments.config} if arguments.config else {}
    for name in COMMAND_OPTIONS["bench"]:
        value = getattr(arguments, name, None)
        if value is not None and name not in _NOT_FORWARDED:
            env[f"BACKY_{name.upper()}"] = ",".join(value) if isinstance(value, list) else value
    return env


def _run(settings: Settings, sizes: Sizes, forwarded: dict[str, str],
         progress: Progress) -> tuple[list[Row], list[Comparison], int]:
    """Measure every path in a scratch schema; the rows, the runner counts' streams
    compared, and the server's version."""
    assert settings.dsn is not None
    with contextlib.ExitStack() as stack:
        schema, dsn = stack.enter_context(scratch.scratch_schema(settings.dsn))
        progress.say(f"working in the scratch schema {schema} (dropped at the end)")
        bench_settings = settings.replace(dsn=dsn, table_name=scratch.TABLE)
        pool = ConnectionPool(dsn, size=max(4, sizes.clients),
                              application_name="backy-gevent bench",
                              prepare=settings.prepare_statements)
        client = stack.enter_context(Client(
            bench_settings, registry=Registry.from_classes(Noop, Stamp), pool=pool,
            hooks=_client_hooks(settings) if sizes.plugins else None))
        client.setup()
        conn = stack.enter_context(contextlib.closing(scratch.connect(dsn)))
        stamps = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "stamps")
        bench = Bench(sizes, bench_settings, dsn, client, conn,
                      runner_environment(forwarded, sizes.plugins), progress, stamps)
        _without_runners(bench)
        for count in sizes.runners:
            _with_runners(bench, count)
        if 1 not in sizes.runners:  # the latency, with one runner started for it alone
            with runners(dsn, 1, bench.env) as processes:
                _latency(bench, processes)
        _streams(bench)
        return _in_order(bench.rows, sizes.runners), bench.comparisons, conn.server_version


def _client_hooks(settings: Settings) -> Hooks:
    return Hooks(build_plugin_manager(disabled=settings.disable_plugins))


def _without_runners(bench: Bench) -> None:
    sizes, dsn, progress, tick = bench.sizes, bench.dsn, bench.progress, bench.progress.tick
    channel = scratch.channel(bench.conn)

    progress.start(f"bulk enqueue floor: {sizes.jobs:,} rows, 1,000-row INSERTs")
    bulk_floor = floors.bulk_insert(dsn, sizes.jobs, tick)
    scratch.empty(bench.conn)
    progress.start(f"bulk enqueue: {sizes.jobs:,} jobs, enqueue_many of 1,000")
    bench.rows.append(Row("bulk enqueue (enqueue_many, 1,000 a call)", "jobs/s",
                          paths.bulk_enqueue(bench.client, sizes.jobs, tick), bulk_floor,
                          "1,000-row unnest INSERT into the same table, one per transaction"))
    scratch.empty(bench.conn)

    progress.start(f"single enqueue and its floor (INSERT + NOTIFY), {sizes.seconds:g}s each,"
                   f" in {TURNS} turns")
    with floors.insert_notify(dsn, channel) as insert:
        single_floor, single = alternate(sizes.seconds, [insert, paths.enqueue_step(bench.client)],
                                         tick)
    bench.rows.append(Row("single enqueue (enqueue, 1 job a transaction)", "jobs/s", single,
                          single_floor, "INSERT + NOTIFY, one transaction, one connection"))
    scratch.empty(bench.conn)


def _with_runners(bench: Bench, count: int) -> None:
    """Start ``count`` runners; with one, measure the latency first (while it is idle);
    then the backlog drain and its floor, in ``DRAIN_TURNS`` turns (in a balanced order)
    while the runners are up: a drain and a floor taken a minute apart caught different
    spells of the machine (with one runner 0.86 of its floor in one run, 0.65 in the
    next). The floor's jobs are a worker the runners do not serve."""
    sizes, progress, tick = bench.sizes, bench.progress, bench.progress.tick
    keep = not bench.settings.delete_finished_jobs
    with runners(bench.dsn, count, bench.env) as processes:
        if count == 1:
            _latency(bench, processes)
        progress.start(f"drain and its floor: {sizes.jobs:,} jobs each, {DRAIN_TURNS} turns,"
                       f" {runners_named(count)}")

        def emptied(rate: float) -> float:
            scratch.empty(bench.conn)
            return rate

        rates = in_turns({
            "floor": lambda _: emptied(
                floors.claim_and_complete(bench.dsn, sizes.jobs, keep, tick)),
            "drain": lambda _: emptied(
                paths.drain(bench.client, bench.conn, processes, sizes.jobs, tick)),
        }, DRAIN_TURNS)
        # The same jobs in every turn: jobs a second over them all.
        bench.rows.append(Row(
            f"backlog drain, {runners_named(count)}", "jobs/s",
            statistics.harmonic_mean(rates["drain"]), statistics.harmonic_mean(rates["floor"]),
            f"claim {floors.CLAIM_BATCH} (runner's claim) and"
            f" {'mark completed' if keep else 'delete'}, one connection, in the same turns",
            count))


#: In a round of the steady stream, the clients alone (its floor).
_NO_RUNNER = 0


def _streams(bench: Bench) -> None:
    """The steady stream: ``stream_rounds`` rounds, each of which runs the clients alone
    (the floor) and beside every runner count's freshly started runners, for
    ``seconds`` each, in a balanced order (``balanced_order``). A count's row holds its
    mean rate against the mean floor. The machine's commit rate drifts within minutes
    (by a third between two runner counts of one run, once), so one stream of each
    count, each beside its own floor, put that drift into the comparison: one run's
    pair read two runners above one in 1 of 5 runs while 16 rounds read them the same.
    In rounds, each count's ratio is taken against the floor of its own round, and the
    counts are compared round by round."""
    sizes = bench.sizes
    taken: dict[int, list[float]] = {count: [] for count in (_NO_RUNNER, *sizes.runners)}
    for round_ in range(sizes.stream_rounds):
        order = balanced_order(list(taken), round_)
        bench.progress.start(
            f"steady stream, round {round_ + 1}/{sizes.stream_rounds}: {sizes.clients}"
            f" clients for {sizes.seconds:g}s {', then '.join(map(_beside, order))}")
        for count in order:
            taken[count].append(_stream(bench, count))
    floors_taken = taken.pop(_NO_RUNNER)
    floor = statistics.mean(floors_taken)
    for count, rates in taken.items():
        bench.rows.append(Row(
            f"steady stream, {sizes.clients} clients, {runners_named(count)}", "jobs/s",
            statistics.mean(rates), floor,
            f"the same {sizes.clients} clients' enqueue with no runner, in the same rounds",
            count))
    ratios = {count: [rate / floor_of_round for rate, floor_of_round
                      in zip(rates, floors_taken, strict=True)]
              for count, rates in taken.items()}
    first, *others = sizes.runners
    bench.comparisons += [Comparison.of("steady stream", count, first, ratios[count],
                                        ratios[first]) for count in others]


def _beside(count: int) -> str:
    return "alone" if count == _NO_RUNNER else f"beside {runners_named(count)}"


def _stream(bench: Bench, count: int) -> float:
    """One stream of the clients' enqueues, jobs a second: alone, or beside ``count``
    freshly started runners (counted until they have run the last job)."""
    sizes, tick = bench.sizes, bench.progress.tick
    if count == _NO_RUNNER:
        rate = paths.single_enqueue(bench.client, sizes.seconds, tick, sizes.clients)
    else:
        with runners(bench.dsn, count, bench.env) as processes:
            rate = paths.stream(bench.client, bench.conn, processes, sizes.clients,
                                sizes.seconds, tick)
    scratch.empty(bench.conn)
    return rate


def _latency(bench: Bench, processes: list[Any]) -> None:
    """Enqueue-to-perform latency beside one idle runner, held against its floor, the
    two in ``TURNS`` turns, in a balanced order: a figure and its floor taken a minute
    apart caught different spells of the machine (a p50 ratio of 1.34 in one run, 1.17
    in the next, the floor 1.8 and 2.1 ms). The floor's jobs are a worker the runner
    does not serve, and it notifies on a channel of its own, so the runner sleeps
    through the floor's turns."""
    sizes, tick = bench.sizes, bench.progress.tick
    bench.progress.start(f"latency and its floor: {sizes.samples:,} enqueues each at"
                         f" {sizes.rate:g}/s in turns, 1 idle runner")
    floor_channel = f"{scratch.channel(bench.conn)}_floor"
    turns = min(TURNS, sizes.samples)

    def samples(turn: int) -> int:
        return sizes.samples // turns + (turn < sizes.samples % turns)

    with floors.wake_and_claim(bench.dsn, floor_channel, sizes.rate) as floor_latency:
        taken = in_turns({
            "floor": lambda turn: floor_latency(samples(turn), lambda _: None),
            "runner": lambda turn: paths.latency(bench.client, processes, bench.stamps,
                                                 sizes.rate, samples(turn), lambda _: None),
        }, turns, lambda turn, _: tick(f"turn {turn + 1}/{turns}"))
    floor = [seconds for part in taken["floor"] for seconds in part]
    measured = [seconds for part in taken["runner"] for seconds in part]
    for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        bench.rows.append(Row(
            f"latency {name}, enqueue to perform, {sizes.rate:g} jobs/s", "ms",
            percentile(measured, share) * 1000,
            percentile(floor, share) * 1000,
            "INSERT + NOTIFY, woken on a LISTEN connection, claim (runner's claim)"))
    paths.finished(bench.conn, processes, tick)
    scratch.empty(bench.conn)


def _in_order(rows: list[Row], counts: tuple[int, ...]) -> list[Row]:
    """Enqueue rows, latency, then the drains by runner count, then the streams."""
    def key(row: Row) -> tuple[int, int]:
        kind = next(i for i, start in enumerate(
            ("bulk", "single", "latency", "backlog", "steady")) if row.path.startswith(start))
        return kind, counts.index(row.runners) if row.runners in counts else 0

    return sorted(rows, key=key)


def _about(settings: Settings, sizes: Sizes, server: int) -> dict[str, Any]:
    """What the JSON says about the run besides its rows."""
    from importlib import metadata

    return {
        "server_version": server,
        "backy_gevent": metadata.version("backy-gevent"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sizes": dataclasses.asdict(sizes),
        "delete_finished_jobs": settings.delete_finished_jobs,
        "fetch_limit": settings.fetch_limit,
        "prepare_statements": settings.prepare_statements,
    }
