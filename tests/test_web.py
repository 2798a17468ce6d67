"""The dashboard's WSGI app in-process against a real database: pages, escaping, keyset
pages and filters, actions behind CSRF and --allow-actions, auth, mounting."""

from __future__ import annotations

import re
from typing import Any

import psycopg2.extras
import pytest

from backy_gevent.client import Client
from backy_gevent.web import app, views
from tests.conftest import query
from tests.web_requests import Browser, links

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def fail_job(db: Any, job_id: int, message: str = "boom", traceback: str = "Traceback") -> None:
    """Make a job failed with one error in its history, as a runner would leave it."""
    error = {"attempt": 1, "at": "2024-01-01T00:00:00+00:00", "error": "builtins.ValueError",
             "message": message, "traceback": traceback}
    query(db, "UPDATE jobs SET state = 'failed', attempt = 1, finished_at = now(),"
              " errors = jsonb_build_array(%s::jsonb) WHERE id = %s",
          psycopg2.extras.Json(error), job_id)


@pytest.fixture
def browser(client: Client) -> Browser:
    return Browser(app(client, allow_actions=True))


def test_the_pages_render_the_rows_in_the_table(client: Client, db: Any, browser: Browser) -> None:
    kept = client.enqueue("record", {"n": 1}, queue="mail")
    failed = client.enqueue("fail", {"n": 2})
    fail_job(db, failed.id, "it broke", "Traceback (most recent call last):\nValueError: it broke")
    overview = browser.get("/")
    assert overview.status == 200
    assert "mail" in overview.body and "default" in overview.body
    listing = browser.get("/jobs")
    assert f"/jobs/{kept.id}" in links(listing.body) and f"/jobs/{failed.id}" in links(listing.body)
    page = browser.get(f"/jobs/{failed.id}")
    assert "it broke" in page.body and "Traceback (most recent call last):" in page.body
    assert "&quot;n&quot;: 2" in page.body
    assert browser.get("/jobs/999999").status == 404


def test_job_args_and_tracebacks_are_escaped(client: Client, db: Any, browser: Browser) -> None:
    job = client.enqueue("record", {"name": HOSTILE}, queue="q<b>")
    fail_job(db, job.id, HOSTILE, "Traceback\n" + HOSTILE)
    for url in ("/", "/jobs", f"/jobs/{job.id}", "/jobs?q=" + "%3Cscript%3E"):
        body = browser.get(url).body
        assert "<script>alert" not in body and "<img src=x" not in body, url
        assert "q<b>" not in body, url
    assert "&lt;script&gt;alert(" in browser.get(f"/jobs/{job.id}").body
    assert "q&lt;b&gt;" in browser.get("/").body


def test_the_list_pages_by_keyset_newest_first(client: Client, browser: Browser) -> None:
    ids = [job.id for job in client.enqueue_many("record", [{"n": n} for n in range(120)])]
    seen: list[int] = []
    url = "/jobs"
    for _ in range(5):
        body = browser.get(url).body
        seen += [int(i) for i in re.findall(r'name="id" value="(\d+)"', body)]
        older = [link for link in links(body) if "before=" in link and "older" in body]
        nexts = re.findall(r'<a href="([^"]+)" rel="next">', body)
        if not nexts:
            break
        url = nexts[0].replace("&amp;", "&")
        assert older
    assert seen == sorted(ids, reverse=True)


def test_filters_by_state_worker_queue_and_text(client: Client, db: Any, browser: Browser) -> None:
    a = client.enqueue("record", {"city": "Lisbon"}, queue="mail")
    b = client.enqueue("sleep", {"city": "Oslo"})
    c = client.enqueue("fail", {})
    fail_job(db, c.id, "connection refused by smtp.example")

    def shown(url: str) -> set[int]:
        return {int(i) for i in re.findall(r'name="id" value="(\d+)"', browser.get(url).body)}

    assert shown("/jobs") == {a.id, b.id, c.id}
    assert shown("/jobs?state=failed") == {c.id}
    assert shown("/jobs?state=available") == {a.id, b.id}
    assert shown("/jobs?worker=sleep") == {b.id}
    assert shown("/jobs?queue=mail") == {a.id}
    assert shown("/jobs?q=lisbon") == {a.id}
    assert shown("/jobs?q=SMTP.example") == {c.id}
    assert shown("/jobs?state=failed&q=lisbon") == set()
    assert shown("/jobs?state=nonsense&before=abc") == {a.id, b.id, c.id}


def test_a_narrow_filter_reads_a_bounded_number_of_rows_then_offers_to_search_on(
    client: Client,
) -> None:
    ids = [job.id for job in client.enqueue_many("record", [{"n": n} for n in range(30)])]
    target = client.enqueue("sleep", {}).id
    rest = [job.id for job in client.enqueue_many("record", [{"n": n} for n in range(30)])]
    chosen = views.filters("", "sleep", "", "", "")
    first = views.job_list(client, chosen, page_size=5, examine=10)
    assert first.jobs == [] and first.examined == 10 and first.next_before == rest[-10]
    found, pages = [], 0
    cursor = views.filters("", "sleep", "", "", "")
    while True:
        page = views.job_list(client, cursor, page_size=5, examine=10)
        found += [job["id"] for job in page.jobs]
        pages += 1
        if page.next_before is None:
            break
        cursor = views.filters("", "sleep", "", "", str(page.next_before))
    assert found == [target] and pages == 7 and ids


def test_no_statement_of_the_dashboard_pages_by_offset() -> None:
    from backy_gevent.db.queries import _read_blocks

    for name, body in _read_blocks().items():
        code = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        if name.startswith("web_"):
            assert "OFFSET" not in code.upper(), name


def test_a_post_without_the_csrf_token_is_refused(
    client: Client, db: Any, browser: Browser
) -> None:
    job = client.enqueue("fail", {})
    fail_job(db, job.id)
    browser.get("/jobs")
    refused = browser.post(f"/jobs/{job.id}/retry", token=False)
    assert refused.status == 403 and "CSRF" in refused.body
    wrong = browser.post(f"/jobs/{job.id}/retry", {"csrf": "x" * 43})
    assert wrong.status == 403
    assert query(db, "SELECT state FROM jobs WHERE id = %s", job.id) == [("failed",)]
    done = browser.post(f"/jobs/{job.id}/retry")
    assert done.status == 303 and done.header("Location") == f"/jobs/{job.id}?notice=retried"
    assert query(db, "SELECT state FROM jobs WHERE id = %s", job.id) == [("available",)]
    assert "Retried" in browser.get(done.header("Location")).body


def test_actions_are_refused_unless_allowed(client: Client, db: Any) -> None:
    job = client.enqueue("record", {})
    browser = Browser(app(client))
    page = browser.get(f"/jobs/{job.id}")
    assert "<form method=\"post\"" not in page.body and "read-only" in page.body
    for url in (f"/jobs/{job.id}/cancel", f"/jobs/{job.id}/delete", "/queues/default/pause",
                "/jobs/bulk"):
        refused = browser.post(url, {"action": "cancel", "id": job.id})
        assert refused.status == 403 and "--allow-actions" in refused.body, url
    assert query(db, "SELECT state FROM jobs") == [("available",)]
    assert client.paused_queues() == []


def test_cancel_delete_and_bulk_actions(client: Client, db: Any, browser: Browser) -> None:
    one, two, three, four = (j.id for j in client.enqueue_many("record", [{}] * 4))
    browser.get("/jobs")
    assert browser.post(f"/jobs/{one}/cancel").header("Location") == f"/jobs/{one}?notice=cancelled"
    assert browser.post(f"/jobs/{one}/delete").header("Location") == "/jobs?notice=deleted"
    assert browser.post(f"/jobs/{one}/delete").header("Location") == f"/jobs/{one}?notice=unchanged"
    back = "/jobs?queue=default"
    moved = browser.post("/jobs/bulk", {"action": "cancel", "id": [two, three], "back": back})
    assert moved.header("Location") == "/jobs?queue=default&notice=cancelled&n=2"
    browser.post("/jobs/bulk", {"action": "retry", "id": [two], "back": back})
    gone = browser.post("/jobs/bulk", {"action": "delete", "id": [three, four],
                                       "back": "https://evil.example/jobs"})
    assert gone.header("Location") == "/jobs?notice=deleted&n=2"
    assert query(db, "SELECT id, state FROM jobs ORDER BY id") == [(two, "available")]


def test_pause_and_resume_a_queue(client: Client, browser: Browser) -> None:
    client.enqueue("record", {}, queue="mail/eu")
    body = browser.get("/").body
    assert "/queues/mail%2Feu/pause" in body
    assert browser.post("/queues/mail/eu/pause").header("Location") == "/?notice=paused"
    assert [q["queue"] for q in client.paused_queues()] == ["mail/eu"]
    body = browser.get("/").body
    assert "paused</span>" in body and "/queues/mail%2Feu/resume" in body
    browser.post("/queues/mail/eu/resume")
    assert client.paused_queues() == []


def test_a_token_then_a_cookie(client: Client) -> None:
    browser = Browser(app(client, token="s3cret"))
    refused = browser.get("/jobs")
    assert refused.status == 401 and "?token=" in refused.body
    assert browser.get("/jobs?token=wrong").status == 401
    signed_in = browser.get("/jobs?state=failed&token=s3cret")
    assert signed_in.status == 303 and signed_in.header("Location") == "/jobs?state=failed"
    cookie = signed_in.header("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "s3cret" not in cookie
    assert browser.get("/jobs").status == 200
    bearer = Browser(app(client, token="s3cret"))
    bearer.headers["Authorization"] = "Bearer s3cret"
    assert bearer.get("/").status == 200
    assert bearer.get("/static/dashboard.css").status == 200


def test_basic_auth_and_a_check_of_the_host_site(client: Client) -> None:
    browser = Browser(app(client, basic_auth="ops:pa:ss"))
    refused = browser.get("/")
    assert refused.status == 401 and refused.header("WWW-Authenticate").startswith("Basic")
    browser.basic("ops", "wrong")
    assert browser.get("/").status == 401
    browser.basic("ops", "pa:ss")
    assert browser.get("/").status == 200
    hosted = Browser(app(client, auth=lambda environ: environ.get("HTTP_X_USER") == "ann"))
    assert hosted.get("/").status == 401
    hosted.headers["X-User"] = "ann"
    assert hosted.get("/").status == 200


def test_mounted_under_a_prefix_every_link_keeps_it(client: Client, db: Any) -> None:
    job = client.enqueue("fail", {})
    fail_job(db, job.id)
    browser = Browser(app(client, allow_actions=True), script_name="/ops/backy")
    body = browser.get("/ops/backy/jobs").body
    assert all(link.startswith("/ops/backy/") for link in links(body)), links(body)
    assert 'action="/ops/backy/jobs/bulk"' in body
    done = browser.post(f"/ops/backy/jobs/{job.id}/retry")
    assert done.header("Location") == f"/ops/backy/jobs/{job.id}?notice=retried"


def test_the_job_page_shows_its_result(client: Client, db: Any) -> None:
    job = client.enqueue("record", {})
    browser = Browser(app(client))
    assert "<h2>Result</h2><pre>none</pre>" in browser.get(f"/jobs/{job.id}").body
    query(db, """UPDATE jobs SET result = '{"sent": 3}' WHERE id = %s""", job.id)
    body = browser.get(f"/jobs/{job.id}").body
    assert "<h2>Result</h2>" in body and "&quot;sent&quot;: 3" in body


def test_the_overview_counts_and_runners(client: Client, db: Any, browser: Browser) -> None:
    client.enqueue_many("record", [{}] * 3, queue="mail")
    done = client.enqueue("record", {})
    query(db, "UPDATE jobs SET state = 'completed', attempt = 1, finished_at = now()"
              " WHERE id = %s", done.id)
    query(db, "INSERT INTO jobs_runners (id, hostname, pid, workers, queues)"
              " VALUES ('r-1', 'host-a', 42, '{record}', '{}')")
    body = browser.get("/fragments/overview").body
    assert "<html" not in body
    row = re.search(r'<tr><td data-label="queue"><a href="/jobs\?queue=mail">mail</a>.*?</tr>',
                    body)
    assert row and '<td data-label="waiting">3</td>' in row[0]
    default = re.search(r'queue=default">default</a>.*?</tr>', body)
    assert default and '<td data-label="completed 1h">1</td>' in default[0]
    assert "host-a" in body and "r-1" in body
    assert "<b>4</b><span>rows in the table</span>" in body


def test_a_missing_schema_is_one_line(settings: Any) -> None:
    browser = Browser(app(Client(settings)))
    reply = browser.get("/jobs")
    assert reply.status == 503 and "backy-gevent setup" in reply.body
