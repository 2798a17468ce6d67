"""``backy-gevent web`` for real: the console script serving a real database with a real
runner, and headless Chromium pressing its buttons.

Screenshots of every page, on a phone and on a desktop, go to tmp_path, and to
docs/screenshots too when BACKY_SCREENSHOTS names that folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backy_gevent.client import Client
from tests.acceptance.browser import DESKTOP, PHONE, screenshot, start_chromium
from tests.acceptance.scraping import free_port
from tests.acceptance.test_cli import IMPORTS, one_error_line
from tests.conftest import CONSOLE_SCRIPT, ROOT, RunnerProcess, cli_env, query, run_cli, wait_until

TOKEN = "correct-horse-battery"


class WebServer:
    """A ``backy-gevent web`` subprocess."""

    def __init__(self, dsn: str, log_path: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        self.process = subprocess.Popen(
            [CONSOLE_SCRIPT, "web", "--port", str(self.port), *args],
            env=cli_env(dsn, BACKY_IMPORTS=IMPORTS, **env), stdout=self._log,
            stderr=subprocess.STDOUT, cwd=ROOT,
        )
        wait_until(lambda: "serving http://" in self.output or self.process.poll() is not None,
                   20, what="the dashboard to start")
        assert self.process.poll() is None, self.output

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(10)
        self._log.close()
        return status


@pytest.fixture
def web(dsn: str, tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(*args: str, **env: str) -> WebServer:
        server = WebServer(dsn, tmp_path / f"web-{len(started)}.log", *args, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        assert server.stop() == 0, server.output


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    driver = start_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def shots_dir(tmp_path: Path) -> list[Path]:
    folders = [tmp_path]
    if os.environ.get("BACKY_SCREENSHOTS"):
        folder = ROOT / os.environ["BACKY_SCREENSHOTS"]
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder)
    return folders


def take_screenshots(chrome: Any, name: str, tmp_path: Path) -> None:
    for folder in shots_dir(tmp_path):
        for size, label in ((PHONE, "phone"), (DESKTOP, "desktop")):
            screenshot(chrome, folder / f"{name}-{label}.png", size)


def http(method: str, url: str, data: bytes | None = None, **headers: str) -> tuple[int, str]:
    """Status and body of one request, error statuses included."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def page_text(chrome: Any, element_id: str = "") -> str:
    """The text of the page (or of one element); "" while a page is being replaced."""
    from selenium.common.exceptions import WebDriverException

    try:
        if element_id:
            return str(chrome.find_element("id", element_id).text)
        return str(chrome.find_element("tag name", "body").text)
    except WebDriverException:
        return ""


def click(chrome: Any, css: str) -> None:
    chrome.find_element("css selector", css).click()


def state_of(db: Any, job_id: int) -> str:
    return str(query(db, "SELECT state FROM jobs WHERE id = %s", job_id)[0][0])


def seed(client: Client, db: Any) -> dict[str, int]:
    """Jobs of several kinds, as a dashboard would find them."""
    client.enqueue_many("record", [{"to": f"user{n}@example.com"} for n in range(3)],
                        queue="mail")
    later = client.enqueue("record", {"report": "weekly <b>digest</b>"}, queue="reports",
                           delay=3600)
    failing = client.enqueue("fail", {"order": 1042, "note": "<script>alert(1)</script>"})
    return {"later": later.id, "failing": failing.id}


def test_the_dashboard_in_a_browser_shows_the_table_and_its_retry_runs_the_job(
    client: Client, db: Any, runner: Callable[..., RunnerProcess], web: Callable[..., WebServer],
    chrome: Any, tmp_path: Path, dsn: str,
) -> None:
    jobs = seed(client, db)
    worker = runner("--poll-interval", "0.2", env=cli_env(dsn, BACKY_DELETE_FINISHED_JOBS="false"))
    failing = jobs["failing"]
    wait_until(lambda: state_of(db, failing) == "failed", 20, what="the failing job to fail")
    wait_until(lambda: query(db, "SELECT count(*) FROM jobs WHERE state = 'completed'")[0][0] == 3,
               20, what="the mail jobs to complete")
    server = web("--allow-actions", BACKY_WEB_TOKEN=TOKEN)

    # ?token= once: the cookie keeps the browser signed in, the address loses the token.
    chrome.get(f"{server.url}/?token={TOKEN}")
    assert chrome.current_url == f"{server.url}/"
    body = page_text(chrome)
    for text in ("mail", "reports", "default", "backy-gevent", "Runners"):
        assert text in body, text
    runner_id = query(db, "SELECT id FROM jobs_runners")[0][0]
    assert runner_id in body
    take_screenshots(chrome, "overview", tmp_path)

    # The overview refreshes itself: a queue that appears shows up without a reload.
    client.enqueue("record", {}, queue="late-arrivals", delay=3600)
    wait_until(lambda: "late-arrivals" in page_text(chrome, "live"), 15,
               what="the overview to refresh itself")

    chrome.get(f"{server.url}/jobs")
    listed = {int(cell.text) for cell in chrome.find_elements(
        "css selector", "table.jobs td[data-label='id'] a")}
    assert listed == {row[0] for row in query(db, "SELECT id FROM jobs")}
    assert "<script>alert(1)</script>" in page_text(chrome)
    take_screenshots(chrome, "jobs", tmp_path)

    chrome.get(f"{server.url}/jobs/{failing}")
    body = page_text(chrome)
    assert "boom on attempt 3" in body and "ValueError" in body and "Traceback" in body
    take_screenshots(chrome, "job", tmp_path)

    # Retry, pressed in the browser: the runner runs the job again.
    click(chrome, f"form[action='/jobs/{failing}/retry'] button")
    wait_until(lambda: "Retried" in page_text(chrome), 10)
    wait_until(lambda: query(db, "SELECT count(*) FROM runs WHERE job_id = %s AND attempt = 4",
                             failing)[0][0] == 1, 20, what="the runner to run attempt 4")
    wait_until(lambda: state_of(db, failing) == "failed", 20, what="the retried job to end")
    assert query(db, "SELECT jsonb_array_length(errors) FROM jobs WHERE id = %s",
                 failing) == [(6,)]

    # Bulk: select a job on the list and cancel it.
    chrome.get(f"{server.url}/jobs?queue=reports")
    click(chrome, f"input[name='id'][value='{jobs['later']}']")
    click(chrome, "button[value='cancel']")
    wait_until(lambda: state_of(db, jobs["later"]) == "cancelled", 10)

    # Pause a queue from the overview.
    chrome.get(f"{server.url}/")
    click(chrome, "form[action='/queues/mail/pause'] button")
    wait_until(lambda: [q["queue"] for q in client.paused_queues()] == ["mail"], 10)
    assert "paused" in page_text(chrome, "live")
    worker.stop()


def test_forged_and_unauthenticated_requests_are_refused(
    client: Client, db: Any, web: Callable[..., WebServer], chrome: Any, tmp_path: Path,
) -> None:
    job = client.enqueue("record", {})
    server = web("--allow-actions", BACKY_WEB_TOKEN=TOKEN)

    # No credentials: 401, in the browser and without one.
    chrome.get(f"{server.url}/jobs")
    assert "authentication required" in page_text(chrome)
    assert http("GET", f"{server.url}/")[0] == 401
    assert http("GET", f"{server.url}/", Authorization="Bearer wrong")[0] == 401
    assert http("GET", f"{server.url}/", Authorization=f"Bearer {TOKEN}")[0] == 200

    # Signed in, a POST from the page's own origin without the CSRF token: 403.
    chrome.get(f"{server.url}/jobs?token={TOKEN}")
    status = chrome.execute_async_script(
        "var done = arguments[0];"
        f"fetch('/jobs/{job.id}/cancel', {{method: 'POST', credentials: 'same-origin',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'x=1'})"
        ".then(function (r) { done(r.status); });"
    )
    assert status == 403
    assert http("POST", f"{server.url}/jobs/{job.id}/cancel", b"csrf=",
                Authorization=f"Bearer {TOKEN}")[0] == 403
    assert state_of(db, job.id) == "available"


def test_without_allow_actions_every_action_is_refused(
    client: Client, db: Any, web: Callable[..., WebServer], chrome: Any,
) -> None:
    job = client.enqueue("record", {})
    server = web()
    chrome.get(f"{server.url}/jobs/{job.id}")
    assert chrome.find_elements("css selector", "form[method='post']") == []
    assert "read-only" in page_text(chrome)
    # A POST with a valid CSRF token (the browser's cookie) is refused all the same.
    token = chrome.get_cookie("backy_csrf")["value"]
    status, body = http("POST", f"{server.url}/jobs/{job.id}/cancel", f"csrf={token}".encode(),
                        Cookie=f"backy_csrf={token}",
                        **{"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "--allow-actions" in body
    assert state_of(db, job.id) == "available"


def test_binding_beyond_loopback_without_auth_exits_2(client: Client, dsn: str) -> None:
    done = run_cli("web", "--host", "0.0.0.0", "--port", str(free_port()), dsn=dsn)
    line = one_error_line(done)
    assert "web_host" in line and "'0.0.0.0'" in line and "needs auth" in line
    env = cli_env(dsn, BACKY_WEB_HOST="::")
    assert "needs auth" in one_error_line(run_cli("web", dsn=dsn, env=env))


def test_web_before_setup_says_what_to_do(dsn: str, db: Any) -> None:
    line = one_error_line(run_cli("web", "--port", str(free_port()), dsn=dsn), status=1)
    assert line == "backy-gevent: error: the jobs table 'jobs' is missing: run `backy-gevent setup`"
    Client(settings=None, dsn=dsn).setup()
    query(db, "DELETE FROM jobs_migrations WHERE version = 5")
    line = one_error_line(run_cli("web", "--port", str(free_port()), dsn=dsn), status=1)
    assert "is behind (1 migrations pending): run `backy-gevent setup`" in line


def test_a_taken_port_is_one_line(client: Client, dsn: str, web: Callable[..., WebServer]) -> None:
    server = web()
    line = one_error_line(run_cli("web", "--port", str(server.port), dsn=dsn))
    assert "web_port" in line and "can't listen" in line


def test_pause_resume_and_jobs_on_the_command_line(client: Client, dsn: str) -> None:
    client.enqueue("record", {}, queue="mail")
    paused = run_cli("pause", "mail", dsn=dsn)
    assert paused.returncode == 0 and paused.stdout == "queue 'mail': paused\n", paused.stderr
    listing = run_cli("jobs", dsn=dsn).stdout
    assert re.search(r"^queue 'mail': paused since \S+ \(\d+s ago\)$", listing, re.M), listing
    resumed = run_cli("resume", "mail", dsn=dsn)
    assert resumed.stdout == "queue 'mail': resumed\n"
    assert "paused" not in run_cli("jobs", dsn=dsn).stdout
    assert run_cli("resume", "mail", dsn=dsn).stdout == "queue 'mail': was not paused\n"
    assert "queue" in one_error_line(run_cli("pause", "", dsn=dsn))
