"""The real ``backy-gevent`` console script: subcommands, bad input, exit statuses,
configuration precedence, ``python -m backy_gevent``, and gevent patched first."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from backy_gevent.client import Client
from tests import workers
from tests.conftest import (
    CONSOLE_SCRIPT,
    ROOT,
    RunnerProcess,
    cli_env,
    query,
    run_cli,
    wait_until,
)

IMPORTS = ",".join(f"tests.workers:{cls.__name__}" for cls in workers.ALL)


def cli(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with the test workers importable."""
    return run_cli(*args, dsn=dsn, env=cli_env(dsn, BACKY_IMPORTS=IMPORTS, **env))


def count_jobs(db: Any) -> int:
    return int(query(db, "SELECT count(*) FROM jobs")[0][0])


def table_exists(db: Any, name: str = "jobs") -> bool:
    return query(db, "SELECT to_regclass(%s)", name)[0][0] is not None


#: A command-line argument holding a byte that is not UTF-8, as Python sees it.
NOT_UTF8 = os.fsdecode(b"caf\xe9")


def one_error_line(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The one line a refused command printed, having checked its exit status."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("backy-gevent: error: ")
    assert done.stdout == ""
    return lines[0]


# -- bad configuration: one line naming the option and the value, exit status 2 ----------


@pytest.mark.parametrize(
    ("args", "env", "option", "value"),
    [
        (["run", "--poll-interval", "-1"], {}, "poll_interval", "-1"),
        (["run"], {"BACKY_POLL_INTERVAL": "-2"}, "poll_interval", "-2"),
        (["setup", "--table-name", "bad name"], {}, "table_name", "bad name"),
        (["setup"], {"BACKY_TABLE_NAME": "jobs;drop"}, "table_name", "jobs;drop"),
        (["setup", "--dsn", "not a dsn"], {}, "dsn", "not a dsn"),
        (["run"], {"BACKY_DSN": "postgresql://[oops"}, "dsn", "postgresql://[oops"),
        (["run"], {"BACKY_DELETE_FINISHED_JOBS": "maybe"}, "delete_finished_jobs", "maybe"),
        (["enqueue", "record", "--retry-count", "lots"], {}, "retry_count", "lots"),
        (["run", "--metrics-port", "70000"], {}, "metrics_port", "70000"),
        (["run", "--shutdown-timeout", "-1"], {}, "shutdown_timeout", "-1"),
        (["setup", "--log-level", "chatty"], {}, "log_level", "chatty"),
        # Past what PostgreSQL's columns hold: the runner could not write the outcome.
        (["enqueue", "record", "--retry-count", "99999999999"], {}, "retry_count",
         "99999999999"),
        (["run", "--fetch-limit", "99999999999"], {}, "fetch_limit", "99999999999"),
        (["run", "--retry-delay", "1e300"], {}, "retry_delay", "1e300"),
        # Bytes that are not UTF-8 (Python keeps them as lone surrogates):
        (["run", "--queue", NOT_UTF8], {}, "queues", NOT_UTF8),
        (["run"], {"BACKY_WORKERS": NOT_UTF8}, "workers", NOT_UTF8),
    ],
)
def test_bad_value_is_one_line_and_exit_2(
    dsn: str, db: Any, args: list[str], env: dict[str, str], option: str, value: str
) -> None:
    line = one_error_line(cli(dsn, *args, **env))
    assert option in line
    assert repr(value) in line
    assert not table_exists(db)  # nothing was done


def test_bad_value_in_a_config_file(dsn: str, db: Any, tmp_path: Path) -> None:
    config = tmp_path / "conf.py"
    config.write_text("database_timeout = -3\n")
    line = one_error_line(cli(dsn, "setup", "--config", str(config)))
    assert "database_timeout" in line and "-3" in line
    config.write_text("pol_interval = 3\n")
    assert "pol_interval" in one_error_line(cli(dsn, "setup", "--config", str(config)))
    assert "no such file" in one_error_line(cli(dsn, "setup", "--config", "/nonexistent.py"))
    assert not table_exists(db)


def test_run_before_setup_says_what_to_do(dsn: str) -> None:
    done = cli(dsn, "run", "--metrics-port", "0")
    assert done.returncode == 1
    assert "backy-gevent setup" in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["jobs"],
        ["show", "1"],
        ["cancel", "1"],
        ["retry", "1"],
        ["retry", "--failed"],
        ["prune"],
        ["enqueue", "record", "{}"],
    ],
)
def test_a_command_before_setup_says_what_to_do(dsn: str, db: Any, command: list[str]) -> None:
    line = one_error_line(cli(dsn, *command), status=1)
    assert line == "backy-gevent: error: the jobs table 'jobs' is missing: run `backy-gevent setup`"
    assert not table_exists(db)


def test_a_missing_table_is_named_as_configured(dsn: str, db: Any, client: Client) -> None:
    line = one_error_line(cli(dsn, "jobs", "--table-name", "other_jobs"), status=1)
    assert "the jobs table 'other_jobs' is missing" in line


# -- workers and registration ---------------------------------------------------------


def test_duplicate_worker_names_are_a_start_up_error(dsn: str, client: Client) -> None:
    done = run_cli(
        "run", "--metrics-port", "0",
        "--import", "tests.workers:Record", "--import", "tests.workers:RecordTwin",
        dsn=dsn,
    )
    line = one_error_line(done)
    assert "two workers named 'record'" in line
    assert "tests.workers:Record " in line and "tests.workers:RecordTwin" in line
    assert " started: " not in done.stderr


def test_unknown_worker_restriction_is_an_error(dsn: str, client: Client) -> None:
    line = one_error_line(cli(dsn, "run", "--metrics-port", "0", "--worker", "ghost"))
    assert "unknown worker 'ghost'" in line


def test_workers_lists_name_class_source_and_settings(dsn: str) -> None:
    done = cli(dsn, "workers")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["WORKER", "CLASS", "FROM", "SETTINGS"]
    lines = {row.split()[0]: row.split(maxsplit=3) for row in rows}
    name, path, source, settings = lines["limited"]
    assert (name, path, source) == ("limited", "tests.workers:Limited", "imports")
    assert "max_concurrency=2" in settings
    assert "max_runtime=5" in settings
    assert "retry_count=3" in settings  # the configured default
    assert "retry_count=2" in lines["fail"][3]  # the worker's own
    assert "global_concurrency=2" in lines["fleet_capped"][3]
    assert "rate_limit=3/1s" in lines["rate_limited"][3]
    listed = {worker["name"]: worker for worker in json.loads(cli(dsn, "workers", "--json").stdout)}
    assert listed["limited"] | {"source": "-"} == {
        "name": "limited", "class": "tests.workers:Limited", "source": "-",
        "queue": "default", "priority": 0, "max_runtime": 5.0, "max_concurrency": 2,
        "requeue_delay": 10.0, "retry_count": 3}
    assert listed["rate_limited"]["rate_limit"] == [3, 1.0]


# -- precedence through the console script --------------------------------------------------


def test_precedence_flag_over_environment_over_file(dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "conf.py"
    config.write_text("retry_count = 5\n")

    def retry_count_of_record(*args: str, **env: str) -> int:
        done = cli(dsn, "workers", "--json", *args, **env)
        assert done.returncode == 0, done.stderr
        [record] = [worker for worker in json.loads(done.stdout) if worker["name"] == "record"]
        return int(record["retry_count"])

    assert retry_count_of_record() == 3
    assert retry_count_of_record("--config", str(config)) == 5
    assert retry_count_of_record(BACKY_CONFIG=str(config)) == 5
    assert retry_count_of_record("--config", str(config), BACKY_RETRY_COUNT="6") == 6
    assert retry_count_of_record(
        "--config", str(config), "--retry-count", "7", BACKY_RETRY_COUNT="6"
    ) == 7


# -- setup -------------------------------------------------------------------------------


def test_setup_is_idempotent(dsn: str, db: Any) -> None:
    first = cli(dsn, "setup")
    assert first.returncode == 0, first.stderr
    assert "applied migration 0001" in first.stdout
    second = cli(dsn, "setup")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert table_exists(db)
    custom = cli(dsn, "setup", BACKY_TABLE_NAME="other_jobs")
    assert custom.returncode == 0 and "applied migration 0001" in custom.stdout
    assert table_exists(db, "other_jobs")


# -- enqueue --------------------------------------------------------------------------------


def test_enqueue_writes_the_job_and_prints_it(dsn: str, db: Any, client: Client) -> None:
    done = cli(dsn, "enqueue", "record", '{"name": "foo bar", "n": [1, 2]}', "--priority", "3",
               "--job-queue", "mail")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["worker"] == "record"
    assert printed["args"] == {"name": "foo bar", "n": [1, 2]}
    row = query(db, "SELECT args, queue, priority, state FROM jobs WHERE id = %s", printed["id"])
    assert row == [({"name": "foo bar", "n": [1, 2]}, "mail", 3, "available")]


def test_enqueue_with_delay_and_unique_key(dsn: str, db: Any, client: Client) -> None:
    first = json.loads(cli(dsn, "enqueue", "record", "--unique-key", "k", "--delay", "60").stdout)
    again = json.loads(cli(dsn, "enqueue", "record", '{"x": 1}', "--unique-key", "k").stdout)
    assert again["id"] == first["id"]
    assert (first["inserted"], again["inserted"]) == (True, False)
    assert count_jobs(db) == 1
    [(waits,)] = query(db, "SELECT extract(epoch FROM run_at - now()) FROM jobs")
    assert 55 < waits <= 60
    # --unique-for: a finished job of the key still holds it within the window.
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now()")
    held = json.loads(cli(dsn, "enqueue", "record", "--unique-key", "k",
                          "--unique-for", "3600").stdout)
    assert (held["id"], held["inserted"], held["state"]) == (first["id"], False, "completed")
    assert json.loads(cli(dsn, "enqueue", "record", "--unique-key", "k").stdout)["inserted"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["record", "{not json"], "not valid JSON"),
        (["record", "{'single': 'quotes'}"], "not valid JSON"),
        (["record", "[1, 2]"], "JSON object"),
        (["record", '"text"'], "JSON object"),
        (["no_such_worker", "{}"], "unknown worker 'no_such_worker'"),
    ],
)
def test_enqueue_bad_input_exits_2_and_writes_nothing(
    dsn: str, db: Any, client: Client, args: list[str], expected: str
) -> None:
    assert expected in one_error_line(cli(dsn, "enqueue", *args))
    assert count_jobs(db) == 0


NOT_JSON = "job arg 'a' can't be stored as JSON: "
NO_NAN = "it holds {}, and JSON has no NaN or infinity (1e999 reads as inf)"
NO_NUL = "it holds a NUL character (\\u0000), which PostgreSQL can't store"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ('{"a": NaN}', NOT_JSON + NO_NAN.format("nan")),
        ('{"a": Infinity}', NOT_JSON + NO_NAN.format("inf")),
        ('{"a": -Infinity}', NOT_JSON + NO_NAN.format("-inf")),
        ('{"a": 1e999}', NOT_JSON + NO_NAN.format("inf")),
        ('{"a": [1, {"b": 1e999}]}', NOT_JSON + NO_NAN.format("inf")),
        ('{"a": "x\\u0000y"}', NOT_JSON + NO_NUL),
        ('{"a": {"b\\u0000": 1}}', NOT_JSON + NO_NUL),
        ('{"a\\u0000": 1}', "job arg 'a\\x00' can't be stored as JSON: " + NO_NUL),
        ('{"a": "\\ud800"}',
         NOT_JSON + "it holds '\\ud800', a lone surrogate, which is not valid Unicode"),
        pytest.param('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "args: nested too deeply",
                     id="nested-5000-deep"),
        pytest.param('{"a": ' + "9" * 5000 + "}",
                     "args: can't be read (Exceeds the limit (4300 digits) for integer string"
                     " conversion: value has 5000 digits; use sys.set_int_max_str_digits() to"
                     " increase the limit)",
                     id="5000-digits"),
    ],
)
def test_enqueue_args_jsonb_cant_hold_are_one_line_naming_the_key(
    dsn: str, db: Any, client: Client, args: str, line: str
) -> None:
    done = cli(dsn, "enqueue", "record", args)
    assert one_error_line(done) == f"backy-gevent: error: {line}"
    assert count_jobs(db) == 0


def test_enqueue_args_jsonb_can_hold_are_kept(dsn: str, db: Any, client: Client) -> None:
    args = {"emoji": "\U0001f600", "backslash": "\\u0000", "text": "x" * 100_000}
    done = cli(dsn, "enqueue", "record", json.dumps(args))
    assert done.returncode == 0, done.stderr
    assert query(db, "SELECT args FROM jobs") == [(args,)]


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--priority", "99999999999"],
         "priority must be an integer from -2147483648 to 2147483647, not 99999999999"),
        (["--priority", "-2147483649"],
         "priority must be an integer from -2147483648 to 2147483647, not -2147483649"),
        (["--delay", "nan"], "delay must be a number of seconds from 0 to 10000000000, not nan"),
        (["--delay", "inf"], "delay must be a number of seconds from 0 to 10000000000, not inf"),
        (["--delay=-inf"], "delay must be a number of seconds from 0 to 10000000000, not -inf"),
        (["--delay", "-5"], "delay must be a number of seconds from 0 to 10000000000, not -5.0"),
        # Past the year 9999: the row would be written and then be unreadable.
        (["--delay", "1e12"],
         "delay must be a number of seconds from 0 to 10000000000, not 1000000000000.0"),
        (["--job-queue", ""], "queue must be a non-empty string, not ''"),
        pytest.param(["--job-queue", "q" * 501], "queue must be at most 500 characters, not 501",
                     id="long-queue"),
        pytest.param(["--unique-key", "k" * 501],
                     "unique_key must be at most 500 characters, not 501", id="long-key"),
        (["--unique-key", "k", "--unique-for", "-1"],
         "unique_for must be a number of seconds from 0 to 10000000000, not -1.0"),
    ],
)
def test_enqueue_bad_option_is_one_line_and_writes_nothing(
    dsn: str, db: Any, client: Client, options: list[str], line: str
) -> None:
    done = cli(dsn, "enqueue", "record", "{}", *options)
    assert one_error_line(done) == f"backy-gevent: error: {line}"
    assert count_jobs(db) == 0


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["record", "{}", "--job-queue", NOT_UTF8],
         "enqueue: argument --job-queue: not valid UTF-8: 'caf\\udce9'"),
        (["record", "{}", "--unique-key", NOT_UTF8],
         "enqueue: argument --unique-key: not valid UTF-8: 'caf\\udce9'"),
        (["record", '{"a": "' + NOT_UTF8 + '"}'],
         "enqueue: argument args: not valid UTF-8: '{\"a\": \"caf\\udce9\"}'"),
        ([NOT_UTF8, "{}"], "enqueue: argument worker: not valid UTF-8: 'caf\\udce9'"),
        (["record", "{}", "--delay", "-inf"], "enqueue: argument --delay: expected one argument"),
        (["record", "{}", "--priority", "1.5"],
         "enqueue: argument --priority: invalid int value: '1.5'"),
        (["", "{}"], "unknown worker '' (registered: "),
    ],
)
def test_enqueue_bad_command_line_is_one_line(
    dsn: str, db: Any, client: Client, args: list[str], line: str
) -> None:
    done = cli(dsn, "enqueue", *args)
    assert one_error_line(done).startswith(f"backy-gevent: error: {line}")
    assert count_jobs(db) == 0


# -- jobs, retry, cancel, prune ------------------------------------------------------------


BAD_ID = "argument JOB_ID: a job id is a whole number from 1 to 9223372036854775807, not {!r}"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["show", "99999999999999999999"], "show: " + BAD_ID.format("99999999999999999999")),
        (["cancel", "1", "2", "99999999999999999999"],
         "cancel: " + BAD_ID.format("99999999999999999999")),
        (["retry", "99999999999999999999"], "retry: " + BAD_ID.format("99999999999999999999")),
        (["show", "-1"], "show: " + BAD_ID.format("-1")),
        (["cancel", "-5"], "cancel: " + BAD_ID.format("-5")),
        (["retry", "0"], "retry: " + BAD_ID.format("0")),
        (["show", "abc"], "show: " + BAD_ID.format("abc")),
        (["cancel"], "cancel: the following arguments are required: JOB_ID"),
        (["retry"], "retry: give job ids, or --failed for every failed job"),
        (["retry", "--failed", "--queue", NOT_UTF8],
         "retry: argument --queue: not valid UTF-8: 'caf\\udce9'"),
        (["retry", "--failed", "--worker", NOT_UTF8],
         "retry: argument --worker: not valid UTF-8: 'caf\\udce9'"),
    ],
)
def test_bad_job_ids_and_filters_are_one_line_and_change_nothing(
    dsn: str, db: Any, client: Client, args: list[str], line: str
) -> None:
    jobs = client.enqueue_many(workers.Record, [{"n": 1}, {"n": 2}])
    query(db, "UPDATE jobs SET state = 'failed' WHERE id = %s", jobs[1].id)
    done = cli(dsn, *args)
    suffix = "" if line.startswith("retry: give") else " (see --help)"
    assert one_error_line(done) == f"backy-gevent: error: {line}{suffix}"
    assert query(db, "SELECT state FROM jobs ORDER BY id") == [("available",), ("failed",)]




def test_jobs_shows_counts_due_and_scheduled_and_the_oldest_wait(
    dsn: str, db: Any, client: Client
) -> None:
    client.enqueue_many(workers.Record, [{"n": 1}, {"n": 2}, {"n": 3}])
    client.enqueue(workers.Record, delay=600)
    client.enqueue(workers.Fail, queue="mail", delay=600)
    query(db, "UPDATE jobs SET run_at = now() - interval '90 seconds'"
              " WHERE worker = 'record' AND run_at < now() + interval '1 minute'")
    done = cli(dsn, "jobs")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["WORKER", "QUEUE", "STATE", "JOBS", "DUE", "SCHEDULED",
                                "OLDEST", "WAIT"]
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in lines[1:3]}
    count, due, scheduled, wait = rows[("record", "default", "available")]
    assert (count, due, scheduled) == ("4", "3", "1")
    assert 90 <= float(wait.rstrip("s")) < 120
    assert rows[("fail", "mail", "available")] == ["1", "0", "1"]  # not due: no wait shown
    # Due jobs that no live runner serves are called out; scheduled ones are not (yet).
    assert ("warning: 3 due jobs of worker 'record' in queue 'default': no live runner"
            " serves them") in lines
    assert not any("'fail'" in line for line in lines if line.startswith("warning"))
    assert "0 runners" in lines
    shown = json.loads(cli(dsn, "jobs", "--json").stdout)
    assert {(r["worker"], r["state"], r["jobs"], r["due"]) for r in shown["jobs"]} == {
        ("record", "available", 4, 3), ("fail", "available", 1, 0)}
    assert shown["runners"] == [] and len(shown["warnings"]) == 1
    query(db, "UPDATE jobs SET state = 'completed' WHERE id IN (SELECT id FROM jobs"
              " WHERE worker = 'record' AND run_at < now() ORDER BY id LIMIT 2)")
    assert ("warning: 1 due job of worker 'record' in queue 'default': no live runner"
            " serves it") in cli(dsn, "jobs").stdout.splitlines()


def test_jobs_with_a_live_runner_warns_of_nothing_and_counts_one_runner(
    dsn: str, db: Any, client: Client, runner: Callable[..., RunnerProcess]
) -> None:
    runner("--poll-interval", "0.2", "--worker", "fail")
    client.enqueue(workers.Record, delay=600)
    done = cli(dsn, "jobs")
    assert "1 runner" in done.stdout.splitlines() and "warning" not in done.stdout


def test_an_option_of_another_command_is_ignored_in_the_environment_and_named_as_a_flag(
    dsn: str, client: Client
) -> None:
    done = cli(dsn, "jobs", BACKY_METRICS_PORT="abc", BACKY_POLL_INTERVAL="-1")
    assert done.returncode == 0, done.stderr
    assert one_error_line(cli(dsn, "jobs", "--metrics-port", "1")) == (
        "backy-gevent: error: jobs: --metrics-port is not an option of jobs (it is one of"
        " run) (see --help)")


def test_version_and_help_show_only_a_commands_own_options() -> None:
    version = subprocess.run([CONSOLE_SCRIPT, "--version"], capture_output=True, text=True)
    assert version.returncode == 0
    assert re.fullmatch(r"backy-gevent \d+\.\d+\.\d+\S*\n", version.stdout)
    jobs_help = subprocess.run([CONSOLE_SCRIPT, "jobs", "--help"], capture_output=True,
                               text=True).stdout
    assert "--dsn" in jobs_help and "--json" in jobs_help
    assert "--poll-interval" not in jobs_help and "--retry-count" not in jobs_help
    run_help = subprocess.run([CONSOLE_SCRIPT, "run", "--help"], capture_output=True,
                              text=True).stdout
    assert "--poll-interval" in run_help and "--metrics-port" in run_help


def test_a_one_shot_command_imports_neither_gevent_nor_the_runner(dsn: str, client: Client) -> None:
    probe = (
        "import sys, time\n"
        "started = time.monotonic()\n"
        "from backy_gevent.cli import main\n"
        "status = main(['jobs'])\n"
        "elapsed = time.monotonic() - started\n"
        "heavy = [m for m in ('gevent', 'pluggy', 'prometheus_client', 'backy_gevent.runner')"
        " if m in sys.modules]\n"
        "print(status, heavy, round(elapsed, 3), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=cli_env(dsn), timeout=60)
    status, heavy, elapsed = done.stderr.strip().splitlines()[-1].split(" ", 2)
    print(f"\nbacky-gevent jobs, in-process after the interpreter: {elapsed.split()[-1]} s")
    assert status == "0" and heavy == "[]", done.stderr


def test_retry_and_cancel_from_the_cli(
    dsn: str, db: Any, client: Client, runner: Callable[..., RunnerProcess]
) -> None:
    runner("--poll-interval", "0.2")
    failing = client.enqueue(workers.Fail)
    # The cancelled job is due before the sentinel: once the sentinel ran, the cancelled
    # job would have run too, had the cancel not held.
    doomed = client.enqueue(workers.Record, {"n": "cancelled"}, delay=1.5)
    sentinel = client.enqueue(workers.Record, {"n": "sentinel"}, delay=1.6)

    done = cli(dsn, "cancel", str(doomed.id))
    assert (done.returncode, done.stdout.strip()) == (0, f"job {doomed.id}: cancelled")
    again = cli(dsn, "cancel", str(doomed.id))
    assert again.returncode == 1
    assert "not changed (it is cancelled)" in again.stderr

    def state(job_id: int) -> Any:
        return query(db, "SELECT state FROM jobs WHERE id = %s", job_id)

    def attempts(job_id: int) -> list[int]:
        return [r[0] for r in query(db, "SELECT attempt FROM runs WHERE job_id = %s"
                                        " ORDER BY started_at", job_id)]

    wait_until(lambda: state(failing.id) == [("failed",)], timeout=10, what="first failure")
    wait_until(lambda: state(sentinel.id) == [], timeout=10, what="the sentinel to run")
    assert attempts(doomed.id) == []
    assert state(doomed.id) == [("cancelled",)]

    done = cli(dsn, "retry", str(failing.id))
    assert (done.returncode, done.stdout.strip()) == (0, f"job {failing.id}: available")
    wait_until(lambda: len(attempts(failing.id)) == 6 and state(failing.id) == [("failed",)],
               timeout=15, what="three fresh attempts")
    assert attempts(failing.id) == [1, 2, 3, 4, 5, 6]
    [(errors,)] = query(db, "SELECT errors FROM jobs WHERE id = %s", failing.id)
    assert [e["attempt"] for e in errors] == [1, 2, 3, 4, 5, 6]  # the history is kept

    done = cli(dsn, "retry", str(doomed.id))
    assert done.returncode == 0
    wait_until(lambda: attempts(doomed.id) == [1], timeout=10, what="the retried job to run")

    missing = cli(dsn, "retry", "987654321")
    assert missing.returncode == 1
    assert "not changed (no row: finished and deleted, or never existed)" in missing.stderr


def test_retry_refused_while_the_unique_key_is_taken(dsn: str, db: Any, client: Client) -> None:
    first = client.enqueue(workers.Record, unique_key="nightly")
    client.cancel(first.id)
    holder = client.enqueue(workers.Record, unique_key="nightly")
    done = cli(dsn, "retry", str(first.id), str(holder.id))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr  # one line per job, no traceback
    assert "unique_key 'nightly'" in lines[0]
    assert "not changed (it is available)" in lines[1]


def test_prune_from_the_cli(dsn: str, db: Any, client: Client) -> None:
    jobs = client.enqueue_many(workers.Record, [{"n": n} for n in range(5)])
    ids = [job.id for job in jobs]
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = ANY(%s)",
          ids[:2])
    query(db, "UPDATE jobs SET state = 'failed', finished_at = now() WHERE id = %s", ids[2])
    query(db, "UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = %s", ids[3])

    def prune(*args: str) -> str:
        done = cli(dsn, "prune", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # By default only what finished more than a week ago: nothing here.
    assert prune() == "deleted 0 jobs finished more than 604800s ago (completed)"
    assert prune("--older-than", "0", "--failed", "--cancelled", "--dry-run") == (
        "would delete 4 jobs finished more than 0s ago (2 completed, 1 failed, 1 cancelled);"
        " nothing deleted")
    assert count_jobs(db) == 5
    assert prune("--older-than", "0") == "deleted 2 jobs finished more than 0s ago (completed)"
    assert prune("--older-than", "0", "--failed", "--cancelled") == (
        "deleted 2 jobs finished more than 0s ago (completed, failed, cancelled)")
    assert query(db, "SELECT id FROM jobs") == [(ids[4],)]  # the waiting one stays


@pytest.mark.parametrize("age", ["-5", "nan", "inf", "1e300"])
def test_prune_refuses_a_bad_age(dsn: str, db: Any, client: Client, age: str) -> None:
    job = client.enqueue(workers.Record)
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = %s", job.id)
    done = cli(dsn, "prune", f"--older-than={age}")
    assert one_error_line(done) == (
        "backy-gevent: error: older_than must be a number of seconds from 0 to 10000000000,"
        f" not {float(age)!r}"
    )
    assert count_jobs(db) == 1


def test_prune_what_a_runner_kept(
    dsn: str, db: Any, client: Client, runner: Callable[..., RunnerProcess]
) -> None:
    runner("--poll-interval", "0.2", "--delete-finished-jobs", "off")
    client.enqueue_many(workers.Record, [{"n": n} for n in range(3)])
    wait_until(
        lambda: query(db, "SELECT count(*) FROM jobs WHERE state = 'completed'") == [(3,)],
        timeout=10, what="three completed rows",
    )
    assert cli(dsn, "prune", "--older-than", "0").stdout.strip() == (
        "deleted 3 jobs finished more than 0s ago (completed)")
    assert count_jobs(db) == 0


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [("--jobs", "-1", "must be a whole number of at least 1, not '-1'"),
     ("--clients", "0", "must be a whole number of at least 1, not '0'"),
     ("--runners", "1,0", "must be whole numbers of at least 1 separated by commas, not '1,0'"),
     ("--runners", "two", "must be whole numbers of at least 1 separated by commas,"
                          " not 'two'"),
     ("--seconds", "0", "must be a number above 0, not '0'"),
     ("--rate", "nan", "must be a number above 0, not 'nan'")],
)
def test_bench_sizes_are_checked_before_anything_starts(
    option: str, value: str, problem: str
) -> None:
    # No runner would wait for the jobs forever; refused by the parser, so the database
    # (here one that does not answer) is never reached.
    done = cli("postgresql://root@127.0.0.1:1/none", "bench", option, value)
    assert one_error_line(done) == (
        f"backy-gevent: error: bench: argument {option}: {problem} (see --help)"
    )


@pytest.mark.parametrize(
    ("data_dir", "problem"),
    [("/dev/null", "cannot use /dev/null for the embedded PostgreSQL server ([Errno 20] Not a"
                   " directory: '/dev/null/start.lock')"),
     (os.fsdecode(b"/tmp/caf\xe9"), "the data directory path '/tmp/caf\\udce9' is not valid"
                                    " UTF-8, which connection strings need")],
)
def test_an_unusable_embedded_data_dir_is_one_line(data_dir: str, problem: str) -> None:
    # No DSN anywhere: the embedded server, refused before anything is made or started.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKY_", "PG"))}
    env.update(PYTHONPATH=str(ROOT), BACKY_DATA_DIR=data_dir)
    line = one_error_line(run_cli("jobs", dsn="", env=env))
    assert line.startswith(f"backy-gevent: error: {problem}")
    assert line.endswith("or set --dsn or BACKY_DSN")
    assert not os.path.exists(os.fsencode(data_dir)) or data_dir == "/dev/null"


# -- how the script starts -----------------------------------------------------------------


def test_python_dash_m_backy_gevent(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "backy_gevent", "workers"],
        env=cli_env(dsn, BACKY_IMPORTS="tests.workers:Record"),
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split()[:3] for line in done.stdout.splitlines()]
    assert ["record", "tests.workers:Record", "imports"] in rows
    bad = subprocess.run(
        [sys.executable, "-m", "backy_gevent", "run", "--poll-interval", "-1"],
        env=cli_env(dsn), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert "poll_interval" in one_error_line(bad)


@pytest.mark.parametrize("command", ["run", "bench", "web"])
def test_the_gevent_commands_patch_gevent_and_psycopg2_first(command: str) -> None:
    """The commands that run on gevent's hub patch it before they import anything else
    of their own (psycopg2, the config, the runner), then make psycopg2 green; importing
    the console script's module patches nothing."""
    code = "\n".join([
        "import sys",
        "from gevent import monkey",
        "seen = []",
        "real_patch_all = monkey.patch_all",
        "def spy(*args, **kwargs):",
        "    seen.extend(sys.modules)",
        "    return real_patch_all(*args, **kwargs)",
        "monkey.patch_all = spy",
        "import backy_gevent.cli",
        "assert not seen, 'patched on import'",
        "try:",
        f"    backy_gevent.cli.main([{command!r}, '--help'])",
        "except SystemExit:",
        "    pass",
        "assert seen, 'patch_all was not called'",
        "early = sorted(m for m in seen if m.startswith(('psycopg2', 'psycogreen', 'pluggy'))",
        "               or (m.startswith('backy_gevent.') and m != 'backy_gevent.cli'))",
        "assert not early, f'imported before patch_all: {early}'",
        "import psycopg2.extensions",
        "from backy_gevent.db import green",
        "for name in ('socket', 'select', 'threading', 'time', 'ssl', 'subprocess'):",
        "    assert monkey.is_module_patched(name), name",
        "assert psycopg2.extensions.get_wait_callback() is green.cancelling_wait_callback",
        "print('ok')",
    ])
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (done.returncode, done.stdout.strip().splitlines()[-1]) == (0, "ok"), done.stderr


def test_the_installed_script_enters_through_the_patching_module() -> None:
    script = Path(sys.executable).with_name("backy-gevent").read_text()
    assert "from backy_gevent.cli import main" in script


def test_show_prints_a_job_with_its_error_history(dsn: str, db: Any, client: Client) -> None:
    job = client.enqueue(workers.Fail, {"n": 7}, queue="mail")
    error = {"attempt": 1, "error": "builtins.ValueError", "message": "boom"}
    query(db, "UPDATE jobs SET state = 'failed', attempt = 1, errors = %s::jsonb WHERE id = %s",
          json.dumps([error]), job.id)
    done = cli(dsn, "show", str(job.id))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["id"], shown["worker"], shown["queue"], shown["state"]) == (
        job.id, "fail", "mail", "failed")
    assert shown["args"] == {"n": 7} and shown["errors"] == [error]
    missing = cli(dsn, "show", str(job.id + 1000))
    assert (missing.returncode, missing.stderr) == (
        1, f"job {job.id + 1000}: no row (finished and deleted, or never existed)\n")


def test_an_unreachable_database_is_one_line_and_exit_1(dsn: str) -> None:
    unreachable = "postgresql://root@127.0.0.1:1/test?connect_timeout=2"
    for command in (["jobs"], ["setup"], ["enqueue", "record", "{}"], ["show", "1"]):
        done = cli(dsn, *command, "--dsn", unreachable)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.startswith("backy-gevent: error: database:"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_database_that_refuses_a_command_is_one_line_and_exit_1(
    dsn: str, db: Any, client: Client
) -> None:
    # As a standby, a revoked grant or a full disk would: the server refuses the write.
    query(db, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
              " $$BEGIN RAISE EXCEPTION 'writes are refused here'; END$$")
    query(db, "CREATE TRIGGER refuse BEFORE INSERT ON jobs EXECUTE FUNCTION refuse()")
    done = cli(dsn, "enqueue", "record", "{}")
    assert one_error_line(done, status=1) == (
        "backy-gevent: error: database: writes are refused here"
    )
    assert count_jobs(db) == 0
    debug = cli(dsn, "enqueue", "record", "{}", "--log-level", "debug")
    assert "Traceback" in debug.stderr  # asked for
    assert debug.stderr.splitlines()[-1] == "backy-gevent: error: database: writes are refused here"


def test_retry_failed_in_bulk_with_filters(dsn: str, db: Any, client: Client) -> None:
    fails = client.enqueue_many(workers.Fail, [{"n": n} for n in range(3)])
    record = client.enqueue(workers.Record, queue="mail")
    keyed = client.enqueue(workers.Fail, unique_key="k")
    failed = [job.id for job in [*fails, record, keyed]]
    query(db, "UPDATE jobs SET state = 'failed', attempt = 3, finished_at = now()"
              " WHERE id = ANY(%s)", failed)
    holder = client.enqueue(workers.Fail, unique_key="k")  # takes "k" while it waits

    def states() -> dict[int, tuple[str, int]]:
        rows = query(db, "SELECT id, state, max_attempts FROM jobs")
        return {row[0]: (row[1], row[2]) for row in rows}

    done = cli(dsn, "retry", "--failed", "--worker", "fail")
    assert (done.returncode, done.stdout.strip()) == (0, "retried 3 failed jobs"), done.stderr
    now = states()
    # Fail has retry_count 2: three fresh attempts on top of the three spent.
    assert [now[job.id] for job in fails] == [("available", 6)] * 3
    assert now[keyed.id][0] == "failed"  # its unique_key is held by a waiting job
    assert now[record.id][0] == "failed"  # another worker
    assert now[holder.id][0] == "available"

    done = cli(dsn, "retry", "--failed", "--queue", "mail")
    assert done.stdout.strip() == "retried 1 failed jobs"
    assert states()[record.id] == ("available", 3 + 4)  # Record: the default retry_count 3

    for args in (["retry"], ["retry", "--worker", "fail"]):
        refused = cli(dsn, *args)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr


def test_jobs_lists_live_and_silent_runners(
    dsn: str, db: Any, client: Client, runner: Callable[..., RunnerProcess]
) -> None:
    process = runner("--poll-interval", "0.2")
    query(db, "INSERT INTO jobs_runners (id, hostname, pid, workers, queues, heartbeat_at)"
              " VALUES ('gone:1:x', 'gone', 1, '{record}', '{}', now() - interval '60 s')")
    wait_until(lambda: query(db, "SELECT count(*) FROM jobs_runners")[0][0] == 2, 10,
               what="the runner's first heartbeat")
    done = cli(dsn, "jobs")
    assert "2 runners" in done.stdout
    lines = {line.split()[0]: line for line in done.stdout.splitlines()
             if line.startswith("  ")}
    live = next(line for key, line in lines.items() if f":{process.process.pid}:" in key)
    assert "last beat" in live and "SILENT" not in live
    assert "(SILENT)" in lines["gone:1:x"]


def test_ctrl_c_cancels_a_one_shot_commands_query_on_the_server(
    dsn: str, db: Any, client: Client
) -> None:
    # A prune stuck behind a lock (as one on a huge table would be busy): ^C stops it at
    # once, cancels its statement on the server (nothing deleted, the lock wait gone)
    # and exits 130 with one line.
    client.enqueue(workers.Record, {})
    query(db, "UPDATE jobs SET state = 'completed', finished_at = now() - interval '1 day'")
    holder = psycopg2.connect(dsn)
    try:
        holder.cursor().execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        prune = subprocess.Popen(
            [CONSOLE_SCRIPT, "prune", "--older-than", "0"], env=cli_env(dsn),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE"
                                     " wait_event_type = 'Lock' AND query LIKE '%%DELETE%%'")
                   == [(1,)], timeout=20, what="the prune to wait for the lock")
        prune.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, err = prune.communicate(timeout=10)
        assert time.monotonic() - interrupted < 2.0
        assert (prune.returncode, err.strip()) == (130, "backy-gevent: interrupted"), err
        wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE"
                                     " wait_event_type = 'Lock'") == [(0,)],
                   timeout=5, what="the cancelled DELETE to leave the server")
    finally:
        holder.close()
    assert count_jobs(db) == 1  # nothing was deleted
