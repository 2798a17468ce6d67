"""Settings: defaults, the file < environment < flag precedence, and every bad value.

The console script's handling of the same bad values (one line, exit status 2) is in
tests/acceptance/test_cli.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from backy_gevent.config import (
    OPTIONS,
    ConfigError,
    Settings,
    default_retry_delay,
    load_settings,
    read_config_file,
)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backy_conf.py"
    path.write_text(text)
    return path


def test_defaults_are_the_seeds() -> None:
    settings = load_settings(environ={})
    assert settings.dsn is None
    assert settings.table_name == "jobs"
    assert settings.retry_count == 3
    assert settings.poll_interval == 1.0
    assert settings.delete_finished_jobs is True
    # Backy's retry^3 + 100 milliseconds, in seconds.
    assert settings.retry_delay(1) == pytest.approx(0.101)
    assert settings.retry_delay(3) == pytest.approx(0.127)
    assert settings.retry_delay is default_retry_delay


def test_every_option_is_a_settings_field_with_the_same_default() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert set(fields) == {option.name for option in OPTIONS}
    for option in OPTIONS:
        assert fields[option.name] == option.default, option.name


def test_precedence_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "import math\n"
        "retry_count = 5\n"
        "poll_interval = 0.25\n"
        "table_name = 'from_file'\n"
        "retry_delay = lambda retry: math.sqrt(retry)\n",
    )
    only_file = load_settings(environ={}, config_file=config)
    assert (only_file.retry_count, only_file.poll_interval, only_file.table_name) == (
        5, 0.25, "from_file",
    )
    assert only_file.retry_delay(9) == 3.0
    assert only_file.delete_finished_jobs is True  # not in the file: the default

    environ = {"BACKY_RETRY_COUNT": "6", "BACKY_TABLE_NAME": "from_env"}
    with_env = load_settings(environ=environ, config_file=config)
    assert (with_env.retry_count, with_env.poll_interval, with_env.table_name) == (
        6, 0.25, "from_env",
    )

    with_flags = load_settings(
        flags={"retry_count": "7", "table_name": None}, environ=environ, config_file=config
    )
    assert with_flags.retry_count == 7
    assert with_flags.table_name == "from_env"  # a flag of None was not given
    assert with_flags.retry_delay(4) == 2.0  # still the file's callable


def test_config_file_from_backy_config_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, "delete_finished_jobs = False\n")
    settings = load_settings(environ={"BACKY_CONFIG": str(config)})
    assert settings.delete_finished_jobs is False


def test_config_file_may_import_and_define_helpers(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "import os\n"
        "from datetime import timedelta\n"
        "def backoff(retry):\n"
        "    return timedelta(seconds=retry).total_seconds() * 2\n"
        "_private = 'ignored'\n"
        "retry_delay = backoff\n",
    )
    values = read_config_file(config)
    assert set(values) == {"retry_delay"}
    assert load_settings(environ={}, config_file=config).retry_delay(3) == 6.0


def test_config_file_typo_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "poll_intervall = 0.5\n")
    with pytest.raises(ConfigError, match="poll_intervall"):
        load_settings(environ={}, config_file=config)


def test_config_file_missing_or_broken(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(environ={}, config_file=tmp_path / "absent.py")
    broken = write_config(tmp_path, "retry_count = (\n")
    with pytest.raises(ConfigError, match="config"):
        load_settings(environ={}, config_file=broken)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
        ("on", True), ("ON", True), (" true ", True),
        ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False),
        ("off", False), ("Off", False),
    ],
)
def test_booleans_from_the_environment(text: str, expected: bool) -> None:
    settings = load_settings(environ={"BACKY_DELETE_FINISHED_JOBS": text})
    assert settings.delete_finished_jobs is expected


def test_environment_names_every_option() -> None:
    environ = {
        "BACKY_DSN": "postgresql://someone@somewhere/db",
        "BACKY_TABLE_NAME": "my_jobs",
        "BACKY_RETRY_COUNT": "0",
        "BACKY_RETRY_DELAY": "2.5",
        "BACKY_POLL_INTERVAL": "0.1",
        "BACKY_DELETE_FINISHED_JOBS": "off",
        "BACKY_QUEUES": "mail, reports,,",
        "BACKY_METRICS_PORT": "0",
        "BACKY_SHUTDOWN_TIMEOUT": "0",
        "BACKY_LOG_LEVEL": "DEBUG",
    }
    settings = load_settings(environ=environ)
    assert settings.dsn == "postgresql://someone@somewhere/db"
    assert settings.table_name == "my_jobs"
    assert settings.retry_count == 0
    assert settings.retry_delay(1) == settings.retry_delay(7) == 2.5  # a number: constant
    assert settings.poll_interval == 0.1
    assert settings.delete_finished_jobs is False
    assert settings.queues == ("mail", "reports")
    assert settings.metrics_port == 0
    assert settings.shutdown_timeout == 0.0
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("poll_interval", "-1"),
        ("poll_interval", "0"),
        ("poll_interval", "nan"),
        ("poll_interval", "inf"),
        ("poll_interval", "soon"),
        ("table_name", "bad name"),
        ("table_name", "jobs; DROP TABLE jobs"),
        ("table_name", "Jobs"),
        ("table_name", "1jobs"),
        ("table_name", '"jobs"'),
        ("table_name", "j" * 64),
        ("table_name", ""),
        ("dsn", "not a dsn"),
        ("dsn", "postgresql://[bad"),
        ("dsn", "host=localhost port"),
        ("delete_finished_jobs", "maybe"),
        ("delete_finished_jobs", "2"),
        ("retry_count", "-1"),
        ("retry_count", "1.5"),
        ("retry_count", "three"),
        ("retry_count", "1000001"),  # max_attempts is a PostgreSQL integer
        ("retry_delay", "-0.5"),
        ("retry_delay", "1e300"),  # now() + retry_delay must be a timestamp
        ("metrics_port", "70000"),
        ("shutdown_timeout", "-1"),
        ("log_level", "loud"),
        ("fetch_limit", "0"),
        ("fetch_limit", "-5"),
        ("fetch_limit", "2147483648"),
        ("prune_completed_after", "-1"),
        ("prune_completed_after", "forever"),
        ("prune_failed_after", "1e300"),
    ],
)
def test_bad_value_names_option_and_value(option: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={f"BACKY_{option.upper()}": value})
    message = str(caught.value)
    assert option in message
    assert repr(value) in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "expected"), [("keep", None), ("", None), ("Keep", None),
                                               ("0", 0.0), ("86400", 86400.0)])
def test_retention_is_seconds_or_keep(text: str, expected: float | None) -> None:
    settings = load_settings(environ={"BACKY_PRUNE_COMPLETED_AFTER": text,
                                      "BACKY_PRUNE_FAILED_AFTER": text})
    assert settings.prune_completed_after == settings.prune_failed_after == expected


def test_bad_value_from_a_flag_or_file_is_named_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"poll_interval.*-2"):
        load_settings(flags={"poll_interval": -2}, environ={})
    config = write_config(tmp_path, "retry_count = True\n")
    with pytest.raises(ConfigError, match="retry_count"):
        load_settings(environ={}, config_file=config)


def test_replace_checks_values() -> None:
    settings = Settings()
    assert settings.replace(poll_interval="0.5").poll_interval == 0.5
    with pytest.raises(ConfigError, match="poll_interval"):
        settings.replace(poll_interval=-1)
    with pytest.raises(ConfigError, match="no_such_option"):
        settings.replace(no_such_option=1)


def test_longest_valid_table_name_leaves_room_for_derived_names() -> None:
    """Every object is named after the table; PostgreSQL cuts names at 63 bytes, so a
    table name must leave room for the longest suffix or two objects would collide."""
    from backy_gevent.db.queries import object_names

    longest = max(
        (n for n in (("x" * k) for k in range(1, 64)) if _valid_table_name(n)), key=len
    )
    for name, identifier in object_names(longest).items():
        text = identifier.strings[0]
        assert len(text.encode()) <= 63, (name, text)


def _valid_table_name(name: str) -> bool:
    try:
        Settings().replace(table_name=name)
    except ConfigError:
        return False
    return True
