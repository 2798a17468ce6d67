"""The command line's grammar: every subcommand, its arguments and the option flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from backy_gevent.config import OPTIONS, Settings, load_settings
from backy_gevent.job import BIGINT_MAX

#: Options that take a list get a repeatable flag with a singular name.
_LIST_FLAGS = {
    "queues": "--queue",
    "workers": "--worker",
    "imports": "--import",
    "disable_plugins": "--disable-plugin",
}
#: Options every command that reaches the database reads.
_DATABASE = ("dsn", "table_name", "data_dir", "prepare_statements", "database_timeout",
             "log_level")
#: Options of the web dashboard; their flags are on ``web`` alone.
_WEB_OPTIONS = ("web_host", "web_port", "web_token", "web_basic_auth")
#: Every option a runner reads: all but the dashboard's.
_RUNNER = tuple(option.name for option in OPTIONS if option.name not in _WEB_OPTIONS)
#: The bench's: a runner's, less those it sets for its own runners (its workers, in the
#: default queue, with no metrics server).
_BENCH = tuple(name for name in _RUNNER
               if name not in ("queues", "workers", "imports", "metrics_host", "metrics_port"))
#: The options each subcommand reads: its --help shows their flags, and the environment
#: or config file's values of the others are not even parsed (a runner's bad
#: BACKY_METRICS_PORT does not stop ``backy-gevent jobs``).
COMMAND_OPTIONS: dict[str, tuple[str, ...]] = {
    "setup": _DATABASE,
    "run": _RUNNER,
    "enqueue": (*_DATABASE, "imports", "retry_count"),
    "workers": ("imports", "retry_count", "log_level"),
    "plugins": ("imports", "disable_plugins", "log_level"),
    "jobs": _DATABASE,
    "runners": _DATABASE,
    "show": _DATABASE,
    "retry": (*_DATABASE, "imports", "retry_count"),
    "cancel": _DATABASE,
    "prune": _DATABASE,
    "pause": _DATABASE,
    "resume": _DATABASE,
    "web": (*_DATABASE, "imports", "retry_count", *_WEB_OPTIONS),
    "bench": _BENCH,
    # periodic jobs
    "cron": _DATABASE,
}
#: Shorter spellings of some flags, as ``backy-gevent web --host H --port P``.
_ALIASES = {"web_host": ("--host",), "web_port": ("--port",)}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like a bad option,
    and starts like every other error: ``backy-gevent: error: COMMAND: ...``."""

    def error(self, message: str) -> NoReturn:
        program, _, command = self.prog.partition(" ")
        where = f"{command}: " if command else ""
        self.exit(2, f"{program}: error: {where}{_explained(message, command)}"
                     " (see --help)\n")


class _MainParser(_Parser):
    """The top parser: arguments left over are reported by the subcommand's parser,
    which can say which commands do take a misplaced option flag."""

    subcommands: dict[str, _Parser]

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        arguments, extras = self.parse_known_args(args, namespace)
        if extras:
            self.subcommands[arguments.command].error(
                f"unrecognized arguments: {' '.join(extras)}")
        return arguments


def _explained(message: str, command: str) -> str:
    """argparse's message, and for an option flag this command doesn't take, which
    commands do take it."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    flag = message.removeprefix(prefix).split()[0].split("=")[0]
    name = next((o.name for o in OPTIONS if _flag_of(o.name) == flag), None)
    if name is None:
        return message
    users = [other for other, used in COMMAND_OPTIONS.items() if name in used]
    return f"{flag} is not an option of {command} (it is one of {', '.join(users)})"


def _flag_of(name: str) -> str:
    return _LIST_FLAGS.get(name, "--" + name.replace("_", "-"))


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
        flag = _flag_of(option.name)
        if option.name in _LIST_FLAGS:
            parser.add_argument(flag, dest=option.name, action="append", help=option.help)
        else:
            parser.add_argument(*_ALIASES.get(option.name, ()), flag, dest=option.name,
                                metavar="VALUE", help=option.help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _MainParser(
        prog="backy-gevent",
        description="Background jobs on PostgreSQL and gevent. Every option is also an"
        " environment variable (BACKY_<OPTION>) and a config file setting.",
    )
    parser.add_argument("--version", action="version", version=f"backy-gevent {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    parser.subcommands = {}

    def command(name: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=description, description=description)
        parser.subcommands[name] = sub
        sub.add_argument("--config", help="Python config file (also BACKY_CONFIG)")
        _add_option_flags(sub, COMMAND_OPTIONS[name])
        return sub

    command("setup", "create or update the jobs table")
    command("run", "run jobs until stopped")
    _add_enqueue(command("enqueue", "enqueue one job"))
    _add_json(command("workers", "list registered workers and their settings"))
    _add_json(command("plugins", "list hook plugins and the hooks they implement"))
    _add_json(command("jobs", "job counts by worker, queue and state; live runners"))
    _add_json(command("runners", "live runners, and which one leads maintenance"))
    show = command("show", "one job as JSON, with its error history and result")
    show.add_argument("job_id", type=_job_id, metavar="JOB_ID")
    _add_json(show, "accepted: show prints JSON already")
    _add_retry(command("retry", "run failed or cancelled jobs again"))
    cancel = command("cancel", "cancel waiting or running jobs")
    cancel.add_argument("ids", nargs="+", type=_job_id, metavar="JOB_ID")
    _add_prune(command("prune", "delete finished jobs"))
    for name, what in (("pause", "stop claims from a queue on every runner"),
                       ("resume", "let runners claim from a paused queue again")):
        command(name, what).add_argument("queue", type=_text, metavar="QUEUE")
    web = command("web", "serve the web dashboard")
    web.add_argument("--allow-actions", action="store_true",
                     help="allow retry, cancel, delete, pause and resume from the dashboard")
    _add_bench(command("bench", "measure every path against its raw floor on this server"))
    # periodic jobs
    _add_json(command("cron", "periodic jobs: each schedule, its last tick and next run"))
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("backy-gevent")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_json(parser: argparse.ArgumentParser, description: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=description)


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


#: What ``prune`` deletes when not told: rows that finished more than a week ago. Not
#: everything: a prune typed to see what it does should not delete yesterday's failures.
PRUNE_DEFAULT_AGE = 7 * 86400.0


def _add_prune(prune: argparse.ArgumentParser) -> None:
    prune.add_argument("--older-than", type=float, default=PRUNE_DEFAULT_AGE,
                       metavar="SECONDS",
                       help="only jobs that finished more than this long ago (default:"
                            f" {PRUNE_DEFAULT_AGE:.0f}, a week; 0: every finished one)")
    prune.add_argument("--failed", action="store_true", help="also failed jobs")
    prune.add_argument("--cancelled", action="store_true", help="also cancelled jobs")
    prune.add_argument("--dry-run", action="store_true",
                       help="count what would be deleted, by state; delete nothing")


def _runner_counts(text: str) -> list[int]:
    """``--runners``: runner counts separated by commas, each at least 1 (no runner
    would wait for the jobs forever)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = [0]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"must be whole numbers of at least 1 separated by commas, not {text!r}")
    return list(dict.fromkeys(counts))


def _positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        number = float(text)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return number


def _add_bench(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--jobs", type=_at_least(1), default=20000,
                       help="jobs of the bulk enqueue and of each backlog drain"
                            " (default 20000)")
    bench.add_argument("--seconds", type=_positive_number, default=5.0,
                       help="length of each timed stream: single enqueue and steady"
                            " stream (default 5)")
    bench.add_argument("--runners", dest="runner_counts", type=_runner_counts, default=[1],
                       metavar="N[,N...]",
                       help="runner counts to measure the drain and the steady stream with,"
                            " as 1,2,4 (default 1)")
    bench.add_argument("--stream-rounds", type=_at_least(1), default=6, metavar="N",
                       help="rounds of the steady stream: each takes the clients alone and"
                            " every runner count once, in a balanced order; the runner"
                            " counts are compared round by round (default 6)")
    bench.add_argument("--clients", type=_at_least(1), default=4,
                       help="enqueuers of the steady stream (default 4)")
    bench.add_argument("--rate", type=_positive_number, default=50.0, metavar="JOBS_PER_S",
                       help="pace of the latency measurement (default 50)")
    bench.add_argument("--samples", type=_at_least(1), default=500,
                       help="jobs timed by the latency measurement (default 500)")
    bench.add_argument("--plugins", action="store_true",
                       help="load third-party hook plugins too (default: built-ins only)")
    _add_json(bench, "print the results as JSON on stdout instead of the table")


def settings_from(arguments: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Settings from the parsed flags, the environment and the config file: the options
    the command reads; the others keep their defaults."""
    used = COMMAND_OPTIONS[arguments.command]
    flags = {name: getattr(arguments, name, None) for name in used}
    return load_settings(flags=flags, environ=environ, config_file=arguments.config,
                         used=used)
