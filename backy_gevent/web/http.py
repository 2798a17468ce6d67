"""The little HTTP the dashboard needs on top of WSGI: a parsed request, a response.

No framework: the dashboard must mount inside any WSGI site (Flask, Django) and run on
gevent's server alone, so it takes nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses
import http.cookies
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

#: The largest form body read (a bulk action's ids fit many times over).
MAX_FORM_BYTES = 64 * 1024


@dataclasses.dataclass
class Request:
    """One WSGI request, read once: method, path (within the app), query, form, cookies."""

    environ: dict[str, Any]
    method: str
    path: str
    query: dict[str, list[str]]
    cookies: dict[str, str]
    form: dict[str, list[str]]

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Request:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        return cls(
            environ=environ,
            method=method,
            path=_text(environ.get("PATH_INFO") or "/"),
            query=urllib.parse.parse_qs(_text(environ.get("QUERY_STRING", ""))),
            cookies=_cookies(environ.get("HTTP_COOKIE", "")),
            form=_form(environ) if method == "POST" else {},
        )

    @property
    def script_name(self) -> str:
        """Where the app is mounted ("" at the root): every link starts with it."""
        return _text(self.environ.get("SCRIPT_NAME", "")).rstrip("/")

    @property
    def secure(self) -> bool:
        return self.environ.get("wsgi.url_scheme") == "https"

    def arg(self, name: str) -> str:
        """The first value of a query parameter, stripped; "" when absent."""
        return (self.query.get(name) or [""])[0].strip()

    def field(self, name: str) -> str:
        """The first value of a form field; "" when absent."""
        return (self.form.get(name) or [""])[0]

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    def url(self, path: str, **query: Any) -> str:
        """A link to ``path`` of this app, with the query parameters that are not empty."""
        params = {k: v for k, v in query.items() if v not in (None, "")}
        suffix = "?" + urllib.parse.urlencode(params) if params else ""
        return self.script_name + path + suffix


def _text(value: str) -> str:
    """WSGI hands over bytes as latin-1 text; URLs are UTF-8."""
    return value.encode("latin-1").decode("utf-8", "replace")


def _cookies(header: str) -> dict[str, str]:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    try:
        jar.load(header)
    except http.cookies.CookieError:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def _form(environ: dict[str, Any]) -> dict[str, list[str]]:
    content_type = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_FORM_BYTES)
    except ValueError:
        return {}
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    return urllib.parse.parse_qs(body.decode("utf-8", "replace"))


@dataclasses.dataclass
class Response:
    """What a handler returns: status, body and headers."""

    body: str | bytes = ""
    status: str = "200 OK"
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    cache: str = "no-store"

    def set_cookie(self, name: str, value: str, *, path: str, secure: bool,
                   max_age: int | None = None, same_site: str = "Strict") -> None:
        """A cookie scripts can't read and other sites' requests don't carry (Strict: not
        even a link from elsewhere; Lax: such a link does, a form posted from elsewhere
        doesn't)."""
        parts = [f"{name}={value}", f"Path={path or '/'}", "HttpOnly", f"SameSite={same_site}"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if secure:
            parts.append("Secure")
        self.headers.append(("Set-Cookie", "; ".join(parts)))

    def __call__(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        data = self.body.encode("utf-8") if isinstance(self.body, str) else self.body
        headers = [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(data))),
            # Nothing of the dashboard loads from elsewhere, and no other site frames it.
            ("Content-Security-Policy",
             "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
             "form-action 'self'; base-uri 'none'"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("Cache-Control", self.cache),
            *self.headers,
        ]
        start_response(self.status, headers)
        return [data]


def redirect(location: str, status: str = "303 See Other") -> Response:
    """Go to ``location`` (after a POST: a GET, so a reload does not post again)."""
    return Response("", status, "text/plain; charset=utf-8", [("Location", location)])


def text(status: str, message: str) -> Response:
    return Response(message + "\n", status, "text/plain; charset=utf-8")
