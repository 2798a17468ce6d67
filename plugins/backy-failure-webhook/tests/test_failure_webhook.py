"""The failure-webhook plugin in-process, against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from backy_failure_webhook import FailureWebhook, failure_document

from backy_gevent.job import Job, JobTimeout
from backy_gevent.plugins import Hooks, build_plugin_manager


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": 17, "worker": "send_email", "args": {"to": "secret@example.com"},
        "queue": "mail", "priority": 0, "state": "running", "attempt": 4,
        "max_attempts": 4, "run_at": datetime.datetime.now(datetime.timezone.utc),
        "enqueued_at": datetime.datetime.now(datetime.timezone.utc), "runner_id": "h:1:a",
    }
    values.update(fields)
    return Job(**values)


class Server:
    """A local HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self, status: int = 204) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.headers.append(dict(self.headers))
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hooks/secret-token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def hooks_with(plugin: FailureWebhook) -> Hooks:
    return Hooks(build_plugin_manager([("failure-webhook", plugin)], load_entry_points=False))


def fail(hooks: Hooks, job: Job, will_retry: bool, error: BaseException | None = None) -> None:
    if error is None:
        try:
            raise ValueError("smtp refused")
        except ValueError as exc:
            error = exc
    hooks.call("backy_on_failure", job=job, worker=None, error=error,
               will_retry=will_retry, timed_out=isinstance(error, JobTimeout))


def test_posts_only_a_final_failure_from_its_own_greenlet(server: Server) -> None:
    plugin = FailureWebhook(environ={"BACKY_FAILURE_WEBHOOK_URL": server.url})
    hooks = hooks_with(plugin)
    fail(hooks, make_job(attempt=1), will_retry=True)
    fail(hooks, make_job(attempt=4), will_retry=False)
    # The hook returned without posting: the post waits in the plugin's own greenlet.
    assert server.bodies == [] and len(plugin.pending) == 1
    assert plugin.drain(timeout=10)
    [body] = server.bodies
    assert body["event"] == "job_failed" and body["job_id"] == 17
    assert body["attempt"] == 4 and body["max_attempts"] == 4
    assert body["error_type"] == "ValueError" and body["error"] == "smtp refused"
    assert body["timed_out"] is False and "raise ValueError" in body["traceback"]
    assert body["text"].startswith("backy-gevent job 17 (send_email) failed for good")
    assert "secret@example.com" not in json.dumps(body)
    assert server.headers[0]["Content-Type"] == "application/json"


def test_a_timeout_is_named(server: Server) -> None:
    document = failure_document(make_job(), JobTimeout(17, 1.0), timed_out=True)
    assert document["timed_out"] is True
    assert document["error_type"] == "backy_gevent.job.JobTimeout"
    assert " timed out for good" in document["text"]


def test_nothing_without_a_url() -> None:
    sent: list[Any] = []
    plugin = FailureWebhook(environ={}, post=lambda *a: sent.append(a) or 200)
    fail(hooks_with(plugin), make_job(), will_retry=False)
    assert plugin.drain(timeout=1) and sent == []


def test_a_dead_endpoint_is_logged_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    # Accepts connections (the kernel's backlog) but never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/secret-path"
    plugin = FailureWebhook(environ={"BACKY_FAILURE_WEBHOOK_URL": url,
                                     "BACKY_FAILURE_WEBHOOK_TIMEOUT": "0.3"})
    with caplog.at_level(logging.WARNING, logger="backy_failure_webhook"):
        fail(hooks_with(plugin), make_job(), will_retry=False)
        assert plugin.drain(timeout=10)
    silent.close()
    [record] = caplog.records
    assert "could not post the failure of job 17 to http://127.0.0.1:" in record.getMessage()
    assert "secret-path" not in record.getMessage()


def test_an_error_status_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(status=500)
    try:
        plugin = FailureWebhook(environ={"BACKY_FAILURE_WEBHOOK_URL": server.url})
        with caplog.at_level(logging.WARNING, logger="backy_failure_webhook"):
            fail(hooks_with(plugin), make_job(), will_retry=False)
            assert plugin.drain(timeout=10)
    finally:
        server.close()
    assert len(server.bodies) == 1
    assert "HTTP Error 500" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BACKY_FAILURE_WEBHOOK_URL": "ftp://example.com/x"}, "http:// or https://"),
        ({"BACKY_FAILURE_WEBHOOK_URL": "http://example.com",
          "BACKY_FAILURE_WEBHOOK_TIMEOUT": "soon"}, "number of seconds"),
    ],
)
def test_bad_settings_are_the_plugins_error(environ: dict[str, str], message: str) -> None:
    errors: list[tuple[str, str]] = []
    plugin = FailureWebhook(environ=environ)
    hooks = Hooks(
        build_plugin_manager([("failure-webhook", plugin)], load_entry_points=False),
        on_error=lambda name, hook: errors.append((name, hook)),
    )
    hooks.call("backy_runner_started", runner=object())
    assert errors == [("failure-webhook", "backy_runner_started")]
    with pytest.raises(ValueError, match=message):
        plugin.settings()
