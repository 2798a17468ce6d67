"""One frozen Settings object built from a config file, BACKY_* variables and flags.

Precedence is flag > environment > file > default. Every value is parsed and checked
once, here; a bad one raises ``ConfigError`` with one line naming the option and the
value, which the console script prints before exiting with status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import runpy
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import psycopg2.extensions

from backy_gevent.errors import ConfigError
from backy_gevent.job import INTEGER_MAX, MAX_RETRY_COUNT, MAX_SECONDS


def default_retry_delay(retry: int) -> float:
    """Backy's default, ``retry**3 + 100`` milliseconds, in seconds."""
    return (retry**3 + 100) / 1000


# At most 45 characters: every other object is named after the table with a suffix of up
# to 18 ("_running_has_lease"), and PostgreSQL cuts names at 63 bytes.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,44}$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _text(value)


def _dsn(value: Any) -> str | None:
    dsn = _optional_text(value)
    if dsn is not None:
        try:
            psycopg2.extensions.parse_dsn(dsn)
        except psycopg2.ProgrammingError as exc:
            raise ValueError(f"not a libpq DSN or URI ({str(exc).strip()})") from None
    return dsn


def _identifier(value: Any) -> str:
    name = _text(value)
    if not _IDENTIFIER.match(name):
        raise ValueError(
            "must be a plain lower-case SQL identifier (letters, digits, _; at most 45)"
        )
    return name


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _number(value: Any, *, minimum: float, integer: bool = False, exclusive: bool = False) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ValueError("expected " + ("a whole number" if integer else "a number")) from None
    if integer and isinstance(value, float) and value != int(value):
        raise ValueError("expected a whole number")
    if not math.isfinite(number) or number < minimum or (exclusive and number == minimum):
        relation = "greater than" if exclusive else "at least"
        raise ValueError(f"must be {relation} {minimum:g}")
    return number


def _seconds(value: Any) -> float:
    return float(_number(value, minimum=0, exclusive=True))


def _non_negative_seconds(value: Any) -> float:
    return float(_number(value, minimum=0))


def _at_most(number: int, maximum: int) -> int:
    if number > maximum:
        raise ValueError(f"must be at most {maximum}")
    return number


def _retry_count(value: Any) -> int:
    return _at_most(int(_number(value, minimum=0, integer=True)), MAX_RETRY_COUNT)


def _positive_count(value: Any) -> int:
    # A PostgreSQL integer in the claim query.
    return _at_most(int(_number(value, minimum=1, integer=True)), INTEGER_MAX)


def _count(value: Any) -> int:
    return int(_number(value, minimum=0, integer=True))


def _port(value: Any) -> int:
    port = int(_number(value, minimum=0, integer=True))
    if port > 65535:
        raise ValueError("must be at most 65535")
    return port


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [_text(part).strip() for part in value]
    else:
        raise ValueError("expected a list or a comma-separated string")
    for item in items:
        try:
            item.encode("utf-8")  # queue and worker names go to the database
        except UnicodeEncodeError:
            raise ValueError(f"not valid UTF-8: {item!r}") from None
    return tuple(item for item in items if item)


def _basic_auth(value: Any) -> str | None:
    credentials = _optional_text(value)
    if credentials is not None:
        user, colon, password = credentials.partition(":")
        if not (user and colon and password):
            raise ValueError("expected user:password, both non-empty")
    return credentials


def _log_level(value: Any) -> str:
    level = _text(value).lower()
    if level not in _LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(_LOG_LEVELS))
    return level


def _keep_or_seconds(value: Any) -> float | None:
    """A retention period: seconds from 0 to MAX_SECONDS, or None ("keep": never prune)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "keep")):
        return None
    seconds = _non_negative_seconds(value)
    if seconds > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS}, or 'keep'")
    return seconds


def _retry_delay(value: Any) -> Callable[[int], float]:
    if callable(value):
        return value
    # A number from the environment or a flag means a constant delay.
    constant = _non_negative_seconds(value)
    if constant > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS}")
    return lambda retry: constant


@dataclasses.dataclass(frozen=True)
class Option:
    """How one setting is named, parsed and defaulted."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("dsn", _dsn, None, "libpq DSN or URI; none at all starts the embedded server"),
    Option(
        "listen_dsn", _dsn, None,
        "DSN for the LISTEN connection when dsn goes through a transaction pooler",
    ),
    Option("table_name", _identifier, "jobs", "name of the jobs table"),
    Option("retry_count", _retry_count, 3, "retries after the first attempt"),
    Option("retry_delay", _retry_delay, default_retry_delay, "seconds before retry N"),
    Option("poll_interval", _seconds, 1.0, "seconds between polls (LISTEN/NOTIFY wakes sooner)"),
    Option("delete_finished_jobs", _boolean, True, "delete completed jobs instead of keeping"),
    Option("queues", _names, (), "queues to serve; empty means every queue"),
    Option("workers", _names, (), "restrict the runner to these worker names"),
    Option("imports", _names, (), "extra worker classes as module:Class, besides entry points"),
    Option("disable_plugins", _names, (), "hook plugins (by name) not to load"),
    Option("metrics_host", _text, "127.0.0.1", "address the metrics server binds"),
    Option("metrics_port", _port, 9721, "metrics server port; 0 disables it"),
    Option("shutdown_timeout", _non_negative_seconds, 30.0, "seconds to let jobs finish on stop"),
    Option("log_level", _log_level, "info", "logging level"),
    Option("fetch_limit", _positive_count, 1000, "most jobs claimed at once per worker"),
    Option("data_dir", _optional_text, None, "embedded server's data directory"),
    Option(
        "prepare_statements", _boolean, True,
        "prepare hot statements server-side (false behind PgBouncer in transaction mode)",
    ),
    Option(
        "database_timeout", _seconds, 10.0,
        "seconds to wait for any answer from PostgreSQL before calling it gone",
    ),
    Option(
        "vacuum_dead_rows", _count, 100_000,
        "dead row versions past which the leader VACUUMs the jobs table; 0: never",
    ),
    Option(
        "prune_completed_after", _keep_or_seconds, None,
        "seconds after which kept completed rows are deleted by the leader (default: keep)",
    ),
    Option(
        "prune_failed_after", _keep_or_seconds, None,
        "seconds after which failed and cancelled rows are deleted by the leader"
        " (default: keep)",
    ),
    Option(
        "relaxed_commits", _boolean, False,
        "the runner's claims and outcomes commit without waiting for the WAL flush"
        " (synchronous_commit off on those transactions; enqueues stay durable)",
    ),
    Option(
        "give_up_after", _seconds, 60.0,
        "seconds a runner loop may keep failing (not for a lost database) before the"
        " runner exits with status 1",
    ),
    Option("web_host", _text, "127.0.0.1", "address the web dashboard binds"),
    Option("web_port", _port, 9722, "web dashboard port (0: any free port)"),
    Option(
        "web_token", _optional_text, None,
        "web dashboard: a bearer token (or ?token= once, then a cookie)",
    ),
    Option("web_basic_auth", _basic_auth, None, "web dashboard: HTTP basic auth, user:password"),
)
_BY_NAME = {option.name: option for option in OPTIONS}
#: Options whose value a bad-value error must not print.
_SECRETS = ("web_token", "web_basic_auth")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every option, parsed and checked. Build it with ``load_settings``."""

    dsn: str | None = None
    listen_dsn: str | None = None
    table_name: str = "jobs"
    retry_count: int = 3
    retry_delay: Callable[[int], float] = default_retry_delay
    poll_interval: float = 1.0
    delete_finished_jobs: bool = True
    queues: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    disable_plugins: tuple[str, ...] = ()
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9721
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    # Claims are the runner's main per-batch cost: `backy-gevent bench` ran about 10k
    # no-op jobs/s with batches of 100 and 20k with 1000 on one runner.
    fetch_limit: int = 1000
    data_dir: str | None = None
    prepare_statements: bool = True
    # Bounds every wait for the server: a runner whose database goes silent says so
    # (log, /healthz) within this plus poll_interval, drops the connection and retries.
    database_timeout: float = 10.0
    give_up_after: float = 60.0
    # A server crash may then forget the last moments of claims and outcomes: those jobs
    # run again, as after a runner crash. See the README's Speed section.
    relaxed_commits: bool = False
    # Past it the leader VACUUMs the jobs table (runner/maintenance.py says why); 0: never.
    vacuum_dead_rows: int = 100_000
    # Retention, applied by the runner that leads maintenance; None keeps rows for good.
    prune_completed_after: float | None = None
    prune_failed_after: float | None = None
    web_host: str = "127.0.0.1"
    web_port: int = 9722
    web_token: str | None = None
    web_basic_auth: str | None = None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some options changed, each parsed and checked like any other source."""
        return dataclasses.replace(self, **{k: _parse(k, v) for k, v in changes.items()})


def _parse(name: str, value: Any) -> Any:
    option = _BY_NAME.get(name)
    if option is None:
        raise ConfigError(f"unknown option {name!r}")
    try:
        return option.parse(value)
    except ValueError as exc:
        shown = "(hidden)" if name in _SECRETS else repr(value)
        raise ConfigError(f"option {name}: bad value {shown}: {exc}") from None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Run a Python config file (gunicorn style) and return the options it sets.

    Module-level names that match an option are taken; private names, modules and the
    like are ignored, so the file may import what it needs. A name that looks like an
    option but isn't one is an error, so a typo doesn't silently do nothing.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"option config: bad value {str(path)!r}: no such file")
    try:
        namespace = runpy.run_path(str(file))
    except Exception as exc:
        raise ConfigError(f"option config: bad value {str(path)!r}: {exc!r}") from None
    values: dict[str, Any] = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, type(os)):
            continue
        if key in _BY_NAME:
            values[key] = value
        elif key.islower() and not callable(value):
            raise ConfigError(f"option {key}: unknown option in config file {str(path)!r}")
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set through ``BACKY_<OPTION>`` variables (``BACKY_DSN``, ``BACKY_RETRY_COUNT``)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        key = "BACKY_" + option.name.upper()
        if key in environ:
            values[option.name] = environ[key]
    return values


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    used: Collection[str] | None = None,
) -> Settings:
    """Build Settings from defaults, then the config file, the environment and flags.

    The config file is ``config_file``, else ``BACKY_CONFIG`` from the environment.
    Flags whose value is None count as not given. With ``used``, only those options are
    read; the others keep their defaults, whatever the environment or file says (a
    name that is no option at all is still an error in a file).
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file or environ.get("BACKY_CONFIG")
    if path:
        merged.update(read_config_file(path))
    merged.update(read_environment(environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    if used is not None:
        merged = {name: value for name, value in merged.items() if name in used}
    return Settings(**{name: _parse(name, value) for name, value in merged.items()})
