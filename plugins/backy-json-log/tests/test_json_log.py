"""The JSON-log plugin in-process: line format, destinations, and pluggy registration."""

from __future__ import annotations

import datetime
import json
import types
from pathlib import Path
from typing import Any

import pytest
from backy_json_log import MAX_RESULT_CHARS, JsonLog, error_type

from backy_gevent.job import Job, JobTimeout
from backy_gevent.plugins import Hooks, build_plugin_manager

NOW = datetime.datetime(2026, 1, 5, 10, 0, 0, tzinfo=datetime.timezone.utc)


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": 17, "worker": "send_email", "args": {"to": "secret@example.com"},
        "queue": "mail", "priority": 0, "state": "running", "attempt": 1,
        "max_attempts": 4, "run_at": NOW - datetime.timedelta(seconds=2),
        "enqueued_at": NOW, "runner_id": "host:1:abc",
    }
    values.update(fields)
    return Job(**values)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "jobs.jsonl"


@pytest.fixture
def hooks(log_file: Path) -> Hooks:
    """Hooks with only the plugin, as the runner would call them."""
    plugin = JsonLog(environ={"BACKY_JSON_LOG_FILE": str(log_file)}, now=lambda: NOW)
    return Hooks(build_plugin_manager([("json-log", plugin)], load_entry_points=False))


def test_job_events_are_one_json_line_each(hooks: Hooks, log_file: Path) -> None:
    job = make_job()
    hooks.call("backy_job_enqueued", jobs=[job])
    hooks.call("backy_before_job", job=job, worker=object())
    hooks.call("backy_after_job", job=job, worker=object(), result={"sent": 1}, duration=0.25)
    hooks.call("backy_on_failure", job=job, worker=None, error=ValueError("no"),
               will_retry=True, timed_out=False)
    hooks.call("backy_on_failure", job=make_job(attempt=4), worker=object(),
               error=JobTimeout(17, 1.0), will_retry=False, timed_out=True)
    enqueued, started, succeeded, retried, failed = lines(log_file)
    common = {"job_id": 17, "worker": "send_email", "queue": "mail"}
    assert enqueued == {"ts": "2026-01-05T10:00:00.000+00:00", "event": "job_enqueued",
                        "level": "info", "pid": enqueued["pid"], **common, "attempt": 1,
                        "priority": 0, "run_at": "2026-01-05 09:59:58+00:00",
                        "max_attempts": 4}
    assert started["event"] == "job_started" and started["wait"] == 2.0
    assert started["runner"] == "host:1:abc"
    assert succeeded["duration"] == 0.25 and succeeded["result"] == {"sent": 1}
    assert retried["level"] == "warning" and retried["will_retry"] is True
    assert retried["error_type"] == "ValueError" and retried["error"] == "no"
    assert retried["retries_left"] == 3
    assert failed["level"] == "error" and failed["timed_out"] is True
    assert failed["error_type"] == "backy_gevent.job.JobTimeout"
    assert failed["retries_left"] == 0
    assert all("args" not in line and "secret" not in json.dumps(line)
               for line in lines(log_file))


def test_runner_events(hooks: Hooks, log_file: Path) -> None:
    runner = types.SimpleNamespace(
        id="host:1:abc",
        registry=[types.SimpleNamespace(name="a"), types.SimpleNamespace(name="b")],
        settings=types.SimpleNamespace(queues=("mail",)),
    )
    hooks.call("backy_runner_started", runner=runner)
    hooks.call("backy_runner_stopping", runner=runner)
    started, stopping = lines(log_file)
    assert started["event"] == "runner_started" and started["workers"] == ["a", "b"]
    assert started["queues"] == ["mail"] and started["runner"] == "host:1:abc"
    assert stopping["event"] == "runner_stopping" and stopping["runner"] == "host:1:abc"


def test_large_or_unencodable_results_are_cut_reprs(hooks: Hooks, log_file: Path) -> None:
    job = make_job()
    hooks.call("backy_after_job", job=job, worker=None, result=object(), duration=0.0)
    hooks.call("backy_after_job", job=job, worker=None, result="x" * 5000, duration=0.0)
    small, big = (line["result"] for line in lines(log_file))
    assert small.startswith("<object object at")
    assert len(big) == MAX_RESULT_CHARS and big.endswith("...")


@pytest.mark.parametrize("value", ["", "-"])
def test_stderr_when_no_file(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    JsonLog(environ={"BACKY_JSON_LOG_FILE": value}).emit("runner_stopping", runner="r")
    assert json.loads(capsys.readouterr().err)["event"] == "runner_stopping"
    JsonLog(environ={}).emit("runner_stopping", runner="r")
    assert json.loads(capsys.readouterr().err)["runner"] == "r"


def test_appends_and_follows_the_variable(tmp_path: Path) -> None:
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    first.write_text('{"event":"earlier"}\n')
    environ = {"BACKY_JSON_LOG_FILE": str(first)}
    plugin = JsonLog(environ=environ)
    plugin.emit("a")
    environ["BACKY_JSON_LOG_FILE"] = str(second)
    plugin.emit("b")
    assert [line["event"] for line in lines(first)] == ["earlier", "a"]
    assert [line["event"] for line in lines(second)] == ["b"]


def test_an_unwritable_file_is_the_plugins_error_not_the_jobs(tmp_path: Path) -> None:
    errors: list[tuple[str, str]] = []
    plugin = JsonLog(environ={"BACKY_JSON_LOG_FILE": str(tmp_path / "missing" / "x")})
    hooks = Hooks(
        build_plugin_manager([("json-log", plugin)], load_entry_points=False),
        on_error=lambda plugin_name, hook: errors.append((plugin_name, hook)),
    )
    hooks.call("backy_before_job", job=make_job(), worker=None)
    assert errors == [("json-log", "backy_before_job")]


def test_error_type_names() -> None:
    assert error_type(KeyError("k")) == "KeyError"
    assert error_type(JobTimeout(1, 1.0)) == "backy_gevent.job.JobTimeout"
