"""``main``: parse, configure, pick the database, run the command, map errors to exits.

Exit statuses: 0 success; 1 a job could not be found or changed, the schema is missing,
or the database can't be reached or refuses the command; 2 bad input or configuration;
130 interrupted (^C).
Every error is one line (``--log-level debug`` adds a database error's traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
import psycopg2.errors

from backy_gevent.cli.database import database, embedded_connection_limit
from backy_gevent.cli.parser import build_parser, settings_from
from backy_gevent.config import Settings
from backy_gevent.errors import (
    BadJobArgs,
    BadOption,
    ConfigError,
    DatabaseUnavailable,
    PluginError,
    SchemaMissing,
    UsageError,
    WorkerError,
)

log = logging.getLogger("backy_gevent.cli")

#: What each subcommand runs, ``module:function``, ``function(arguments, settings)``
#: returning the exit status. Imported when the command runs: a one-shot command does
#: not pay for the runner's imports.
COMMANDS: dict[str, str] = {
    "setup": "backy_gevent.cli.jobs:command_setup",
    "run": "backy_gevent.cli.run:command_run",
    "enqueue": "backy_gevent.cli.jobs:command_enqueue",
    "workers": "backy_gevent.cli.catalog:command_workers",
    "plugins": "backy_gevent.cli.catalog:command_plugins",
    "jobs": "backy_gevent.cli.jobs:command_jobs",
    "show": "backy_gevent.cli.jobs:command_show",
    "retry": "backy_gevent.cli.jobs:command_retry",
    "cancel": "backy_gevent.cli.jobs:command_cancel",
    "prune": "backy_gevent.cli.jobs:command_prune",
    "bench": "backy_gevent.cli.bench.command:command_bench",
    "runners": "backy_gevent.cli.fleet:command_runners",
    "pause": "backy_gevent.cli.queues:command_pause",
    "resume": "backy_gevent.cli.queues:command_resume",
    "web": "backy_gevent.web.server:command_web",
    # periodic jobs
    "cron": "backy_gevent.cli.periodic:command_cron",
}


#: Subcommands that never touch the database (so never start the embedded server).
WITHOUT_DATABASE = ("workers", "plugins")
#: Checks of a subcommand's settings made before any database is reached, ``module:function``.
BEFORE_DATABASE: dict[str, str] = {"web": "backy_gevent.web.server:check_exposure"}


def _function(path: str) -> Any:
    """The function ``module:function`` names, imported now."""
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _on_the_jobs_table(
    handler: Callable[[argparse.Namespace, Settings], int],
    arguments: argparse.Namespace,
    settings: Settings,
) -> int:
    """Run a command that uses the database; a jobs table that is not there (``setup``
    never ran on this database and schema) is ``SchemaMissing``, for every command."""
    try:
        return int(handler(arguments, settings))
    except psycopg2.errors.UndefinedTable:
        raise SchemaMissing(
            f"the jobs table {settings.table_name!r} is missing: run `backy-gevent setup`"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = settings_from(arguments, environ)
        _configure_logging(settings.log_level)
        handler: Callable[[argparse.Namespace, Settings], int] = _function(
            COMMANDS[arguments.command])
        if arguments.command in BEFORE_DATABASE:
            _function(BEFORE_DATABASE[arguments.command])(settings)
        if arguments.command in WITHOUT_DATABASE:
            return int(handler(arguments, settings))
        limit = 100 if settings.dsn else embedded_connection_limit(settings, arguments.command)
        with database(settings, environ, max_connections=limit) as ready:
            return _on_the_jobs_table(handler, arguments, ready)
    except (ConfigError, UsageError, WorkerError, PluginError, BadJobArgs, BadOption) as exc:
        print(f"backy-gevent: error: {exc}", file=sys.stderr)
        return 2
    except (SchemaMissing, DatabaseUnavailable) as exc:
        print(f"backy-gevent: error: {exc}", file=sys.stderr)
        return 1
    except psycopg2.Error as exc:
        if _interrupted(exc):
            # The ^C closed the connection; what closed it next only says so.
            print("backy-gevent: interrupted", file=sys.stderr)
            return 130
        # A one-shot command whose database can't be reached (the runner retries instead)
        # or refuses it: read-only (a standby), permission denied, out of disk...
        log.debug("database error", exc_info=True)
        print(f"backy-gevent: error: database: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # ^C of a one-shot command (a prune or a migration on a big table, a database
        # that does not answer): what it had not committed is rolled back with its
        # connection. run, web and bench handle their signals themselves.
        print("backy-gevent: interrupted", file=sys.stderr)
        return 130


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` happened while handling a ^C (closing the connection it closed)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def _one_line(exc: psycopg2.Error) -> str:
    """The server's own message, without its LINE/CONTEXT lines; libpq's for a failed
    connection, on one line."""
    primary = getattr(exc.diag, "message_primary", None)
    return str(primary) if primary else " ".join(str(exc).split())
