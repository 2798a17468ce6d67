"""Hook plugins installed with pip and run through the real ``backy-gevent`` script.

Three distributions are installed with pip into temporary ``--target`` directories (see
``distributions.py``): the two real plugins in ``plugins/`` (``backy-json-log``,
``backy-failure-webhook``) and ``tests/plugin_dist`` (``backy-test-plugins``: one plugin
that raises in every hook, and three that must stop a runner at start-up). The JSON-log
plugin's own output is how the tests watch hooks fire.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import socket
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backy_gevent.client import Client
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import Job
from tests.acceptance.distributions import ROOT, pip_install, python_path
from tests.conftest import RunnerProcess, cli_env, query, run_cli, wait_until

Runner = Callable[..., RunnerProcess]
FAST = ("--poll-interval", "0.5")
#: The plugins of backy-test-plugins that fail at start-up, with what they must say.
BROKEN = {
    "misspelt": "plugin misspelt implements unknown hook backy_befor_job"
    " (did you mean backy_before_job?)",
    "badargs": "plugin badargs (backy_test_plugins.badargs): backy_after_job takes elapsed,"
    " which the hook does not pass (it passes job, worker, result, duration)",
    "broken": "plugin broken (backy_test_plugins.no_such_module) failed to load:"
    " ModuleNotFoundError: No module named 'backy_test_plugins.no_such_module'",
}
ALL_HOOKS = (
    "backy_after_job", "backy_before_job", "backy_job_enqueued", "backy_on_failure",
    "backy_retry_delay", "backy_runner_started", "backy_runner_stopping",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """``real``: the plugins/ distributions; ``test``: tests/plugin_dist."""
    scratch = tmp_path_factory.mktemp("plugin-build")
    real = pip_install(
        [ROOT / "plugins" / "backy-json-log", ROOT / "plugins" / "backy-failure-webhook"],
        tmp_path_factory.mktemp("real-plugins"),
        scratch,
    )
    test = pip_install(
        [ROOT / "tests" / "plugin_dist"], tmp_path_factory.mktemp("test-plugins"), scratch
    )
    return types.SimpleNamespace(real=real, test=test)


def events(path: Path) -> list[dict[str, Any]]:
    """The JSON-log lines written so far (a line still being written is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


@contextlib.contextmanager
def hooked_client(
    client: Client, monkeypatch: pytest.MonkeyPatch, target: Path, **options: Any
) -> Iterator[Client]:
    """A client of the test schema whose hooks are the entry points installed in
    ``target``, loaded in this process as an application would load them."""
    monkeypatch.syspath_prepend(str(target))
    hooks = Hooks(build_plugin_manager(**options.pop("manager", {})), **options)
    hooked = Client(client.settings, registry=client.registry, hooks=hooks)
    try:
        yield hooked
    finally:
        hooked.close()


def job_state(db: Any, job_id: int) -> str | None:
    rows = query(db, "SELECT state FROM jobs WHERE id = %s", job_id)
    return rows[0][0] if rows else None


def finished_runs(db: Any, job_id: int) -> list[int]:
    rows = query(
        db, "SELECT attempt FROM runs WHERE job_id = %s AND finished_at IS NOT NULL", job_id
    )
    return sorted(row[0] for row in rows)


def test_hooks_fire_in_order_with_their_arguments(
    dsn: str, client: Client, runner: Runner, installed: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("BACKY_JSON_LOG_FILE", str(log))
    with hooked_client(
        client, monkeypatch, installed.real, manager={"disabled": ["failure-webhook"]}
    ) as hooked:
        ok = hooked.enqueue("record", {"secret": "hunter2"})
        retried = hooked.enqueue("fail_once")
        failed = hooked.enqueue("fail")
        timed_out = hooked.enqueue("sleep", seconds=5)
    env = cli_env(dsn, PYTHONPATH=python_path(installed.real), BACKY_JSON_LOG_FILE=str(log))
    process = runner(*FAST, env=env)

    def final(job: Job, event: str, attempt: int) -> Callable[[], bool]:
        return lambda: any(
            e["event"] == event and e.get("job_id") == job.id and e["attempt"] == attempt
            for e in events(log)
        )

    for job, event, attempt in [
        (ok, "job_succeeded", 1), (retried, "job_succeeded", 2), (failed, "job_failed", 3),
        (timed_out, "job_failed", 1),
    ]:
        wait_until(final(job, event, attempt), timeout=20, what=f"{event} of job {job.id}")
    process.signal(signal.SIGTERM)
    assert process.wait(30) == 0, process.output
    seen = events(log)

    # The runner's events frame the job events; enqueues came before the runner started.
    kinds = [e["event"] for e in seen]
    assert kinds.count("runner_started") == 1 and kinds[-1] == "runner_stopping"
    start = kinds.index("runner_started")
    assert set(kinds[:start]) == {"job_enqueued"} and "job_enqueued" not in kinds[start:]
    runner_event = seen[start]
    assert runner_event["pid"] == process.process.pid
    assert {"record", "fail_once", "fail", "sleep"} <= set(runner_event["workers"])
    assert seen[-1]["runner"] == runner_event["runner"]

    def story(job: Job) -> list[tuple[Any, ...]]:
        lines = [e for e in seen if e.get("job_id") == job.id]
        assert all(e["worker"] == job.worker and e["queue"] == job.queue for e in lines)
        assert all(e["runner"] == runner_event["runner"]
                   for e in lines if e["event"] == "job_started")
        assert all("secret" not in json.dumps(e) for e in lines)
        return [
            (e["event"], e["attempt"])
            + ((e["will_retry"], e["timed_out"], e["error_type"], e["error"])
               if e["event"] == "job_failed" else ())
            + ((e["result"],) if e["event"] == "job_succeeded" else ())
            for e in lines
        ]

    assert story(ok) == [("job_enqueued", 0), ("job_started", 1), ("job_succeeded", 1, None)]
    assert story(retried) == [
        ("job_enqueued", 0),
        ("job_started", 1),
        ("job_failed", 1, True, False, "ValueError", "first attempt fails"),
        ("job_started", 2),
        ("job_succeeded", 2, {"attempt": 2}),
    ]
    assert story(failed) == [
        ("job_enqueued", 0),
        ("job_started", 1),
        ("job_failed", 1, True, False, "ValueError", "boom on attempt 1"),
        ("job_started", 2),
        ("job_failed", 2, True, False, "ValueError", "boom on attempt 2"),
        ("job_started", 3),
        ("job_failed", 3, False, False, "ValueError", "boom on attempt 3"),
    ]
    assert story(timed_out) == [
        ("job_enqueued", 0),
        ("job_started", 1),
        ("job_failed", 1, False, True, "backy_gevent.job.JobTimeout",
         f"job {timed_out.id} ran past max_runtime (1s)"),
    ]
    # Each event's own fields: the duration of a success, the enqueuing process.
    by_event = {(e["event"], e.get("job_id"), e.get("attempt")): e for e in seen}
    assert 0 <= by_event["job_succeeded", ok.id, 1]["duration"] < 10
    assert by_event["job_enqueued", ok.id, 0]["max_attempts"] == ok.max_attempts
    assert by_event["job_enqueued", ok.id, 0]["pid"] != process.process.pid
    assert by_event["job_failed", failed.id, 1]["level"] == "warning"
    assert by_event["job_failed", failed.id, 3]["level"] == "error"


def test_a_plugin_raising_in_every_hook_changes_no_outcome(
    dsn: str, db: Any, client: Client, runner: Runner, installed: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    errors: list[tuple[str, str]] = []
    with hooked_client(
        client, monkeypatch, installed.test, manager={"disabled": list(BROKEN)},
        on_error=lambda plugin, hook: errors.append((plugin, hook)),
    ) as hooked:
        ok = hooked.enqueue("record")
        retried = hooked.enqueue("fail_once")
        failed = hooked.enqueue("fail")
        timed_out = hooked.enqueue("sleep", seconds=5)
    # enqueue returned normally; the error was reported once per call, by name.
    assert errors == [("raising", "backy_job_enqueued")] * 4
    # The disable list from the environment this time (the flag is tested below).
    env = cli_env(dsn, PYTHONPATH=python_path(installed.test),
                  BACKY_DISABLE_PLUGINS=",".join(BROKEN))
    process = runner(*FAST, env=env)

    wait_until(lambda: finished_runs(db, ok.id) == [1], timeout=20, what="the success")
    wait_until(lambda: finished_runs(db, retried.id) == [2], timeout=20, what="the retry")
    wait_until(lambda: job_state(db, failed.id) == "failed", timeout=20, what="the failure")
    wait_until(lambda: job_state(db, timed_out.id) == "failed", timeout=20, what="the timeout")
    # Finished jobs are deleted (delete_finished_jobs); the others have their history.
    wait_until(lambda: job_state(db, ok.id) is None and job_state(db, retried.id) is None,
               what="completed rows to be deleted")
    [(attempt, history)] = query(db, "SELECT attempt, errors FROM jobs WHERE id = %s", failed.id)
    assert attempt == 3 and [e["message"] for e in history] == [
        f"boom on attempt {n}" for n in (1, 2, 3)
    ]
    [(history,)] = query(db, "SELECT errors FROM jobs WHERE id = %s", timed_out.id)
    assert [e["error"] for e in history] == ["backy_gevent.job.JobTimeout"]
    # Every hook's error is in the log with the plugin's name, and the runner goes on.
    for hook in ALL_HOOKS:
        if hook in ("backy_job_enqueued", "backy_runner_stopping"):
            continue
        assert f"plugin raising raised in {hook}: raising plugin fails in {hook}" in (
            process.output
        ), hook
    assert process.process.poll() is None
    again = client.enqueue("record")
    wait_until(lambda: finished_runs(db, again.id) == [1], timeout=20, what="a later job")
    process.signal(signal.SIGTERM)
    assert process.wait(30) == 0, process.output
    assert "plugin raising raised in backy_runner_stopping" in process.output


@pytest.mark.parametrize("plugin", sorted(BROKEN))
def test_a_plugin_that_cannot_load_stops_run_at_start_up(
    dsn: str, installed: Any, plugin: str
) -> None:
    others = [arg for name in BROKEN if name != plugin for arg in ("--disable-plugin", name)]
    done = run_cli(
        "run", "--import", "tests.workers:Record", *others,
        dsn=dsn, env=cli_env(dsn, PYTHONPATH=python_path(installed.test)), timeout=30,
    )
    assert done.returncode == 2, done
    assert done.stderr == f"backy-gevent: error: {BROKEN[plugin]}\n"


def test_disabling_a_plugin_that_does_not_exist_is_an_error(dsn: str) -> None:
    done = run_cli("run", "--import", "tests.workers:Record", "--disable-plugin", "jsonlog",
                   dsn=dsn, timeout=30)
    assert done.returncode == 2, done
    assert done.stderr.startswith(
        "backy-gevent: error: disable_plugins names no such plugin: jsonlog (plugins: "
    )


def test_plugins_lists_name_distribution_version_and_hooks(dsn: str, installed: Any) -> None:
    env = cli_env(dsn, PYTHONPATH=python_path(installed.real, installed.test))
    done = run_cli("plugins", *(f"--disable-plugin={name}" for name in BROKEN), dsn=dsn,
                   env=env)
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS"]
    hooks_column = lines[0].index("HOOKS")
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert rows["json-log"].split()[1:3] == ["backy-json-log", "0.1.0"]
    assert rows["json-log"][hooks_column:] == ", ".join(
        h for h in ALL_HOOKS if h != "backy_retry_delay"
    )
    assert rows["failure-webhook"].split()[1:3] == ["backy-failure-webhook", "0.1.0"]
    assert rows["failure-webhook"][hooks_column:] == "backy_on_failure, backy_runner_started"
    assert rows["raising"].split()[1:3] == ["backy-test-plugins", "1.2.3"]
    assert rows["raising"][hooks_column:] == ", ".join(ALL_HOOKS)
    assert not set(BROKEN) & set(rows)
    # Built-in plugins (metrics) are listed as the runner registers them.
    assert rows["metrics"].split()[1:3] == ["(built-in)", "-"]
    assert lines[-1] == "disabled: badargs, broken, misspelt"
    # A broken plugin breaks the listing too, with the same one line.
    done = run_cli("plugins", "--disable-plugin", "badargs", "--disable-plugin", "broken",
                   dsn=dsn, env=env)
    assert (done.returncode, done.stderr) == (2, f"backy-gevent: error: {BROKEN['misspelt']}\n")


class WebhookServer:
    """An HTTP server on 127.0.0.1 that records the JSON documents POSTed to it."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []
        documents = self.documents

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                documents.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_failure_webhook_posts_each_final_failure_once(
    dsn: str, db: Any, client: Client, runner: Runner, installed: Any, tmp_path: Path
) -> None:
    server = WebhookServer()
    try:
        failed = client.enqueue("fail")
        timed_out = client.enqueue("sleep", seconds=5)
        retried = client.enqueue("fail_once")
        env = cli_env(
            dsn, PYTHONPATH=python_path(installed.real), BACKY_FAILURE_WEBHOOK_URL=server.url,
            BACKY_JSON_LOG_FILE=str(tmp_path / "events.jsonl"),
        )
        process = runner(*FAST, env=env)
        wait_until(lambda: len(server.documents) >= 2, timeout=20, what="two posts")
        wait_until(lambda: finished_runs(db, retried.id) == [2], timeout=20, what="the retry")
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.output
    finally:
        server.close()
    # One post per job that failed for good; none for the attempt that was retried.
    by_job = {doc["job_id"]: doc for doc in server.documents}
    assert len(server.documents) == 2 and set(by_job) == {failed.id, timed_out.id}
    assert by_job[failed.id]["attempt"] == 3 and by_job[failed.id]["timed_out"] is False
    assert by_job[failed.id]["error"] == "boom on attempt 3"
    assert by_job[timed_out.id]["timed_out"] is True
    assert by_job[timed_out.id]["error_type"] == "backy_gevent.job.JobTimeout"
    assert "failed jobs will be posted to http://127.0.0.1:" in process.output
    assert "/hook/token" not in process.output


def test_failure_webhook_does_not_hold_up_the_job(
    dsn: str, db: Any, client: Client, runner: Runner, installed: Any, tmp_path: Path
) -> None:
    # An endpoint that accepts connections (the kernel's backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = cli_env(
            dsn, PYTHONPATH=python_path(installed.real),
            BACKY_FAILURE_WEBHOOK_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/",
            BACKY_FAILURE_WEBHOOK_TIMEOUT="60",
            BACKY_JSON_LOG_FILE=str(tmp_path / "events.jsonl"),
        )
        runner(*FAST, env=env)
        failed = client.enqueue("fail")
        # Had the post run in the job's greenlet, the failure would be written only
        # after the 60 s timeout; it is written at once.
        wait_until(lambda: job_state(db, failed.id) == "failed", timeout=15, what="failed")
        later = client.enqueue("record")
        wait_until(lambda: finished_runs(db, later.id) == [1], timeout=15, what="a later job")
