"""The ``backy-gevent`` console script.

gevent and psycopg2 are patched here, before anything else is imported, because
modules imported earlier would keep unpatched sockets, locks and threads.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

from backy_gevent.db import green  # noqa: E402 - must follow the patch

green.install()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

from backy_gevent.config import OPTIONS, Settings, load_settings  # noqa: E402
from backy_gevent.db.dsn import configured_dsn  # noqa: E402
from backy_gevent.errors import (  # noqa: E402
    ConfigError,
    DatabaseUnavailable,
    PluginError,
    SchemaMissing,
    UsageError,
    WorkerError,
)

log = logging.getLogger("backy_gevent.cli")

#: Options that take a list get a repeatable flag with a singular name.
_LIST_FLAGS = {
    "queues": "--queue",
    "workers": "--worker",
    "imports": "--import",
    "disable_plugins": "--disable-plugin",
}
#: Options that only the runner uses; their flags are on ``run`` alone.
_RUN_OPTIONS = (
    "queues",
    "workers",
    "metrics_host",
    "metrics_port",
    "shutdown_timeout",
    "fetch_limit",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like a bad option."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_option_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for option in OPTIONS:
        if option.name not in names:
            continue
        flag = _LIST_FLAGS.get(option.name, "--" + option.name.replace("_", "-"))
        if option.name in _LIST_FLAGS:
            parser.add_argument(flag, dest=option.name, action="append", help=option.help)
        else:
            parser.add_argument(flag, dest=option.name, metavar="VALUE", help=option.help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = _Parser(add_help=False)
    common.add_argument("--config", help="Python config file (also BACKY_CONFIG)")
    _add_option_flags(
        common, [o.name for o in OPTIONS if o.name not in _RUN_OPTIONS]
    )
    parser = _Parser(
        prog="backy-gevent", description="Background jobs on PostgreSQL and gevent."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("setup", parents=[common], help="create or update the jobs table")
    run = commands.add_parser("run", parents=[common], help="run jobs until stopped")
    _add_option_flags(run, _RUN_OPTIONS)
    enqueue = commands.add_parser("enqueue", parents=[common], help="enqueue one job")
    enqueue.add_argument("worker", help="registered worker name")
    enqueue.add_argument("args", nargs="?", default="{}", help="job args as a JSON object")
    enqueue.add_argument("--job-queue", dest="job_queue", help="queue (default: the worker's)")
    enqueue.add_argument("--delay", type=float, help="seconds before it may run")
    enqueue.add_argument("--priority", type=int, help="lower runs first")
    enqueue.add_argument("--unique-key", help="skip if a job with this key waits or runs")
    commands.add_parser("workers", parents=[common], help="list registered workers")
    commands.add_parser("plugins", parents=[common], help="list hook plugins")
    commands.add_parser("jobs", parents=[common], help="job counts by worker, queue, state")
    show = commands.add_parser("show", parents=[common], help="one job, with its error history")
    show.add_argument("job_id", type=int, metavar="JOB_ID")
    retry = commands.add_parser(
        "retry", parents=[common], help="run failed or cancelled jobs again"
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="JOB_ID")
    retry.add_argument("--failed", action="store_true", help="every failed job (see filters)")
    retry.add_argument("--worker", dest="only_workers", action="append", default=[],
                       metavar="NAME", help="with --failed: only this worker's (repeatable)")
    retry.add_argument("--queue", dest="only_queues", action="append", default=[],
                       metavar="NAME", help="with --failed: only this queue's (repeatable)")
    cancel = commands.add_parser("cancel", parents=[common], help="cancel jobs")
    cancel.add_argument("ids", nargs="+", type=int, metavar="JOB_ID")
    prune = commands.add_parser("prune", parents=[common], help="delete finished jobs")
    prune.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS")
    prune.add_argument("--failed", action="store_true", help="also failed jobs")
    prune.add_argument("--cancelled", action="store_true", help="also cancelled jobs")
    bench = commands.add_parser(
        "bench", parents=[common], help="measure jobs/s against pgbench on this server"
    )
    bench.add_argument("--jobs", type=int, default=20000, help="no-op jobs to run")
    bench.add_argument("--runners", type=int, default=1, help="runner processes")
    bench.add_argument("--pgbench-clients", type=int, default=4,
                       help="pgbench -c, and the number of one-by-one enqueuers")
    bench.add_argument("--single-jobs", type=int, default=5000,
                       help="jobs enqueued one per transaction while the runners work")
    return parser


def settings_from(arguments: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Settings from the parsed flags, the environment and the config file."""
    flags = {o.name: getattr(arguments, o.name, None) for o in OPTIONS}
    return load_settings(flags=flags, environ=environ, config_file=arguments.config)


def embedded_connection_limit(settings: Settings, command: str) -> int:
    """The embedded server's max_connections, sized to fit a runner's concurrency.

    A runner holds 6 connections of its own (a pool of 4, the listener, the metrics
    query), and each running job may open one; unlimited
    workers count as 100 (most jobs open no connection; ``fetch_limit`` would ask for a
    thousand). Never below 100, so that several processes fit.
    """
    if command != "run":
        return 100
    from backy_gevent.worker import Registry

    registry = Registry.discover(settings.imports).restricted(settings.workers)
    jobs = sum(r.cls.max_concurrency or 100 for r in registry)
    return max(100, 20 + jobs)


@contextlib.contextmanager
def database(
    settings: Settings, environ: dict[str, str], *, max_connections: int = 100
) -> Iterator[Settings]:
    """Settings with a usable DSN: the configured one, libpq's PG* variables, or the
    embedded server (started here and stopped when the last user exits)."""
    dsn = configured_dsn(settings.dsn, environ)
    if dsn is not None:
        yield settings.replace(dsn=dsn)
        return
    from backy_gevent import embedded

    data_dir = Path(settings.data_dir) if settings.data_dir else embedded.default_data_dir(environ)
    with contextlib.ExitStack() as stack:
        try:
            dsn = stack.enter_context(
                embedded.embedded_server(data_dir, max_connections=max_connections)
            )
        except embedded.EmbeddedUnavailable as exc:
            raise UsageError(str(exc)) from None
        except embedded.EmbeddedServerError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        from backy_gevent.client import Client

        ready = settings.replace(dsn=dsn)
        client = Client(ready, registry=None)
        try:
            client.setup()
        finally:
            client.close()
        yield ready


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    import psycopg2

    from backy_gevent import commands

    parser = build_parser()
    arguments = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = settings_from(arguments, environ)
        _configure_logging(settings.log_level)
        handler = getattr(commands, "command_" + arguments.command)
        needs_db = arguments.command not in ("workers", "plugins")
        if not needs_db:
            return int(handler(arguments, settings))
        limit = 100 if settings.dsn else embedded_connection_limit(settings, arguments.command)
        with database(settings, environ, max_connections=limit) as ready:
            return int(handler(arguments, ready))
    except (ConfigError, UsageError, WorkerError, PluginError) as exc:
        print(f"backy-gevent: error: {exc}", file=sys.stderr)
        return 2
    except (SchemaMissing, DatabaseUnavailable) as exc:
        print(f"backy-gevent: error: {exc}", file=sys.stderr)
        return 1
    except psycopg2.OperationalError as exc:
        # A one-shot command that can't reach the database (the runner retries instead).
        print(f"backy-gevent: error: database: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
