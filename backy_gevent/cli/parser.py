"""The command line's grammar: every subcommand, its arguments and the option flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn

from backy_gevent.config import OPTIONS, Settings, load_settings
from backy_gevent.job import BIGINT_MAX

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
    "give_up_after",
    "listen_dsn",
    "prune_completed_after",
    "prune_failed_after",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like a bad option,
    and starts like every other error: ``backy-gevent: error: COMMAND: ...``."""

    def error(self, message: str) -> NoReturn:
        program, _, command = self.prog.partition(" ")
        where = f"{command}: " if command else ""
        self.exit(2, f"{program}: error: {where}{message} (see --help)\n")


def _job_id(text: str) -> int:
    """A job id: a whole number from 1 to the largest bigint (ids start at 1)."""
    try:
        job_id = int(text)
    except ValueError:
        job_id = 0
    if not 1 <= job_id <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(
            f"a job id is a whole number from 1 to {BIGINT_MAX}, not {text!r}"
        )
    return job_id


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def whole_number(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of at least {minimum}, not {text!r}"
            )
        return number

    return whole_number


def _text(text: str) -> str:
    """Text for the database: the bytes given must be UTF-8 (Python keeps other bytes
    as lone surrogates, which PostgreSQL can't store)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {text!r}") from None
    return text


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
    _add_option_flags(common, [o.name for o in OPTIONS if o.name not in _RUN_OPTIONS])
    parser = _Parser(
        prog="backy-gevent", description="Background jobs on PostgreSQL and gevent."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("setup", parents=[common], help="create or update the jobs table")
    run = commands.add_parser("run", parents=[common], help="run jobs until stopped")
    _add_option_flags(run, _RUN_OPTIONS)
    _add_enqueue(commands.add_parser("enqueue", parents=[common], help="enqueue one job"))
    commands.add_parser("workers", parents=[common], help="list registered workers")
    commands.add_parser("plugins", parents=[common], help="list hook plugins")
    commands.add_parser("jobs", parents=[common], help="job counts by worker, queue, state")
    runners = commands.add_parser(
        "runners", parents=[common], help="live runners, and which one leads maintenance"
    )
    runners.add_argument("--json", action="store_true", help="print JSON")
    show = commands.add_parser("show", parents=[common], help="one job, with its error history")
    show.add_argument("job_id", type=_job_id, metavar="JOB_ID")
    _add_retry(
        commands.add_parser("retry", parents=[common], help="run failed or cancelled jobs again")
    )
    cancel = commands.add_parser("cancel", parents=[common], help="cancel jobs")
    cancel.add_argument("ids", nargs="+", type=_job_id, metavar="JOB_ID")
    _add_prune(commands.add_parser("prune", parents=[common], help="delete finished jobs"))
    _add_bench(
        commands.add_parser(
            "bench", parents=[common], help="measure jobs/s against pgbench on this server"
        )
    )
    return parser


def _add_enqueue(enqueue: argparse.ArgumentParser) -> None:
    enqueue.add_argument("worker", type=_text, help="registered worker name")
    enqueue.add_argument("args", nargs="?", type=_text, default="{}",
                         help="job args as a JSON object")
    enqueue.add_argument("--job-queue", dest="job_queue", type=_text,
                         help="queue (default: the worker's)")
    enqueue.add_argument("--delay", type=float, help="seconds before it may run (0 and up)")
    enqueue.add_argument("--priority", type=int, help="lower runs first")
    enqueue.add_argument("--unique-key", type=_text,
                         help="skip if a job with this key waits or runs")
    enqueue.add_argument("--unique-for", type=float, metavar="SECONDS",
                         help="with --unique-key: also skip if a job of that key was"
                              " enqueued within this long, finished or not")


def _add_retry(retry: argparse.ArgumentParser) -> None:
    retry.add_argument("ids", nargs="*", type=_job_id, metavar="JOB_ID")
    retry.add_argument("--failed", action="store_true", help="every failed job (see filters)")
    retry.add_argument("--worker", dest="only_workers", action="append", default=[],
                       type=_text, metavar="NAME",
                       help="with --failed: only this worker's (repeatable)")
    retry.add_argument("--queue", dest="only_queues", action="append", default=[],
                       type=_text, metavar="NAME",
                       help="with --failed: only this queue's (repeatable)")


def _add_prune(prune: argparse.ArgumentParser) -> None:
    prune.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS")
    prune.add_argument("--failed", action="store_true", help="also failed jobs")
    prune.add_argument("--cancelled", action="store_true", help="also cancelled jobs")


def _add_bench(bench: argparse.ArgumentParser) -> None:
    # No runner would wait for the jobs forever; pgbench -c 0 fails.
    bench.add_argument("--jobs", type=_at_least(1), default=20000, help="no-op jobs to run")
    bench.add_argument("--runners", type=_at_least(1), default=1, help="runner processes")
    bench.add_argument("--pgbench-clients", type=_at_least(1), default=4,
                       help="pgbench -c, and the number of one-by-one enqueuers")
    bench.add_argument("--single-jobs", type=_at_least(0), default=5000,
                       help="jobs enqueued one per transaction while the runners work")


def settings_from(arguments: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Settings from the parsed flags, the environment and the config file."""
    flags = {o.name: getattr(arguments, o.name, None) for o in OPTIONS}
    return load_settings(flags=flags, environ=environ, config_file=arguments.config)
