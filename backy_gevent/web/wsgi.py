"""The dashboard's WSGI application: routing, and the gates every request passes (auth
for all, then for a POST: actions allowed, a valid CSRF token).

Routes (all under the mount point, ``SCRIPT_NAME``):

    GET  /                       the overview
    GET  /fragments/overview     the overview's live part, which the page polls
    GET  /jobs                   the list: ?state=&worker=&queue=&q=&before=
    GET  /jobs/<id>              one job
    GET  /static/<file>          the stylesheet and the script, served from the package
    POST /jobs/<id>/retry|cancel|delete
    POST /jobs/bulk              action=retry|cancel|delete, id=... (the list's selection)
    POST /queues/<name>/pause|resume
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.errors

from backy_gevent.client import Client
from backy_gevent.errors import BadOption
from backy_gevent.job import BIGINT_MAX
from backy_gevent.web import actions, csrf, pages, views
from backy_gevent.web.auth import Auth
from backy_gevent.web.http import Request, Response, redirect, text
from backy_gevent.web.templates import Context

log = logging.getLogger("backy_gevent.web")

#: The overview is read at most once a second, or once per 10 times as long as reading
#: it took if that is longer: the page refreshes itself every 3 s in each open tab.
OVERVIEW_FRESH_FOR, OVERVIEW_FRESH_FACTOR = 1.0, 10
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
Handler = Callable[..., Response]


class Dashboard:
    """The WSGI app; build it with ``backy_gevent.web.app(...)``."""

    def __init__(self, client: Client, *, allow_actions: bool = False, auth: Auth | None = None):
        self.client = client
        self.allow_actions = allow_actions
        self.auth = auth or Auth()
        self._overview: tuple[float, views.Overview] | None = None  # (good until, data)
        self._get: list[tuple[re.Pattern[str], Handler]] = [
            (re.compile(r"/"), self.overview),
            (re.compile(r"/fragments/overview"), self.overview_fragment),
            (re.compile(r"/jobs"), self.jobs),
            (re.compile(r"/jobs/(\d{1,19})"), self.job),
            (re.compile(r"/static/([a-z]+\.(?:css|js))"), self.static),
        ]
        self._post: list[tuple[re.Pattern[str], Handler]] = [
            (re.compile(r"/jobs/(\d{1,19})/(retry|cancel|delete)"), self.job_action),
            (re.compile(r"/jobs/bulk"), self.bulk_action),
            (re.compile(r"/queues/(.+)/(pause|resume)"), self.queue_action),
        ]

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        return self.handle(Request.from_environ(environ))(start_response)

    def handle(self, request: Request) -> Response:
        """The response to one request, the gates first."""
        signed_in = self.auth.sign_in(request)
        if signed_in is not None:
            return signed_in
        if not self.auth.admits(request):
            return self.auth.refusal()
        routes = self._post if request.method == "POST" else self._get
        handler, groups = _match(routes, request.path)
        if handler is None:
            other = self._get if request.method == "POST" else self._post
            if _match(other, request.path)[0] is not None:
                return text("405 Method Not Allowed", "405 Method Not Allowed")
            return text("404 Not Found", "404 Not Found: no such page")
        if request.method == "POST":
            if not self.allow_actions:
                return text("403 Forbidden", "403 Forbidden: actions are off: start the"
                            " dashboard with --allow-actions (app(allow_actions=True))")
            if not csrf.verify(request):
                return text("403 Forbidden", "403 Forbidden: missing or wrong CSRF token:"
                            " reload the page and try again")
            self.forget()  # the next overview shows what the action changed
        try:
            return handler(request, *groups)
        except psycopg2.errors.UndefinedTable:
            return text("503 Service Unavailable", "503 Service Unavailable: the jobs table"
                        f" {self.client.settings.table_name!r} is missing or behind:"
                        " run `backy-gevent setup`")
        except psycopg2.Error as exc:
            log.exception("database error on %s %s", request.method, request.path)
            return text("503 Service Unavailable",
                        "503 Service Unavailable: database: " + " ".join(str(exc).split()))

    # -- pages ---------------------------------------------------------------------------

    def _html(self, request: Request, build: Callable[[Context], str]) -> Response:
        token, new = csrf.token_for(request)
        ctx = Context(request, token, self.allow_actions, self.client.settings.table_name)
        response = Response(build(ctx))
        if new:
            csrf.set_cookie(response, request, token)
        return response

    def overview(self, request: Request) -> Response:
        data = self._read_overview()
        return self._html(request, lambda ctx: pages.overview_page(ctx, data))

    def overview_fragment(self, request: Request) -> Response:
        data = self._read_overview()
        return self._html(request, lambda ctx: pages.overview_fragment(ctx, data))

    def forget(self) -> None:
        """Read the overview afresh on the next request."""
        self._overview = None

    def _read_overview(self) -> views.Overview:
        """The overview, read again once the last reading is stale (see above)."""
        started = time.monotonic()
        if self._overview is not None and started < self._overview[0]:
            return self._overview[1]
        data = views.overview(self.client)
        took = time.monotonic() - started
        self._overview = (started + max(OVERVIEW_FRESH_FOR, OVERVIEW_FRESH_FACTOR * took), data)
        return data

    def jobs(self, request: Request) -> Response:
        chosen = views.filters(request.arg("state"), request.arg("worker"),
                               request.arg("queue"), request.arg("q"), request.arg("before"))
        data = views.job_list(self.client, chosen)
        workers, queues = self._names()
        return self._html(request, lambda ctx: pages.jobs_page(ctx, data, workers, queues))

    def _names(self) -> tuple[list[str], list[str]]:
        """Worker and queue names to suggest in the list's filters (no table scan)."""
        try:
            registered = list(self.client.registry)
        except Exception:  # a broken worker package must not take the dashboard down
            log.warning("can't list the registered workers", exc_info=True)
            registered = []
        queues = {r.cls.queue for r in registered}
        queues.update(row["queue"] for row in self.client.paused_queues())
        return sorted(r.name for r in registered), sorted(queues)

    def job(self, request: Request, job_id: str) -> Response:
        data = self.client.get_job(int(job_id))
        if data is None:
            return text("404 Not Found", f"404 Not Found: no job {job_id}")
        return self._html(request, lambda ctx: pages.job_page(ctx, data))

    def static(self, request: Request, name: str) -> Response:
        suffix = name[name.rindex("."):]
        try:
            folder = resources.files("backy_gevent.web").joinpath("static")
            body = folder.joinpath(name).read_bytes()
        except FileNotFoundError:
            return text("404 Not Found", "404 Not Found: no such file")
        return Response(body, content_type=STATIC_TYPES[suffix], cache="max-age=300")

    # -- actions -------------------------------------------------------------------------

    def job_action(self, request: Request, job_id: str, action: str) -> Response:
        number = int(job_id)
        if not 0 < number <= BIGINT_MAX:
            return text("404 Not Found", f"404 Not Found: no job {job_id}")
        code = actions.on_job(self.client, action, number)
        if action == "delete" and code == "deleted":
            return redirect(request.url("/jobs", notice=code))
        return redirect(request.url(f"/jobs/{number}", notice=code))

    def bulk_action(self, request: Request) -> Response:
        action = request.field("action")
        if action not in actions.JOB_ACTIONS:
            return text("400 Bad Request", "400 Bad Request: action must be one of "
                        + ", ".join(actions.JOB_ACTIONS))
        ids = sorted({int(i) for i in request.form.get("id", [])
                      if i.isdigit() and 0 < int(i) <= BIGINT_MAX})
        back = _back_to_list(request, request.field("back"))
        if not ids:
            return redirect(_with_query(back, notice="none"))
        changed = actions.on_jobs(self.client, action, ids)
        return redirect(_with_query(back, notice=actions.done(action), n=str(changed)))

    def queue_action(self, request: Request, queue: str, action: str) -> Response:
        try:
            code = actions.on_queue(self.client, action, queue)
        except BadOption as exc:
            return text("400 Bad Request", f"400 Bad Request: {exc}")
        return redirect(request.url("/", notice=code))


def _match(
    routes: list[tuple[re.Pattern[str], Handler]], path: str
) -> tuple[Handler | None, tuple[str, ...]]:
    for pattern, handler in routes:
        found = pattern.fullmatch(path)
        if found:
            return handler, found.groups()
    return None, ()


def _back_to_list(request: Request, back: str) -> str:
    """Where a bulk action returns: the list page it came from, never another site."""
    parts = urllib.parse.urlsplit(back)
    if parts.scheme or parts.netloc or parts.path != request.script_name + "/jobs":
        return request.url("/jobs")
    return urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))


def _with_query(url: str, **extra: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in extra]
    query.extend(extra.items())
    return urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode(query), ""))
