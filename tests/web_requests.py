"""Requests to the dashboard's WSGI app in-process, the way a browser sends them: a
cookie jar, forms with the page's CSRF token."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
import urllib.parse
from typing import Any

from backy_gevent.web import csrf


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def cookies(self) -> dict[str, str]:
        found = {}
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                found[name] = rest.split(";")[0]
        return found


class Browser:
    """Sends requests to one WSGI app and keeps the cookies it sets."""

    def __init__(self, app: Any, script_name: str = "") -> None:
        self.app = app
        self.script_name = script_name
        self.cookies: dict[str, str] = {}
        self.headers: dict[str, str] = {}

    def request(self, method: str, url: str, form: dict[str, Any] | None = None) -> Reply:
        path, _, query = url.partition("?")
        if self.script_name and path.startswith(self.script_name):
            path = path[len(self.script_name):]
        body = urllib.parse.urlencode(form or {}, doseq=True).encode()
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "SCRIPT_NAME": self.script_name, "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http", "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "HTTP_COOKIE": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
        }
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in self.headers.items()})
        started: list[Any] = []
        chunks = self.app(environ, lambda status, headers: started.append((status, headers)))
        status, headers = started[0]
        reply = Reply(int(status.split()[0]), headers, b"".join(chunks).decode())
        self.cookies.update(reply.cookies())
        return reply

    def get(self, url: str) -> Reply:
        return self.request("GET", url)

    def post(self, url: str, form: dict[str, Any] | None = None, *, token: bool = True) -> Reply:
        """POST a form, with the CSRF token of the pages seen so far unless told not to."""
        fields = dict(form or {})
        if token:
            fields.setdefault(csrf.FIELD, self.cookies.get(csrf.COOKIE, ""))
        return self.request("POST", url, fields)

    def basic(self, user: str, password: str) -> None:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers["Authorization"] = f"Basic {encoded}"


def links(body: str) -> list[str]:
    """Every href of a page, unescaped."""
    return [html.unescape(h) for h in re.findall(r'href="([^"]+)"', body)]
