"""Who may see the dashboard: a bearer token, HTTP basic auth, or the host site's check.

- ``token``: ``Authorization: Bearer <token>`` on each request, or ``?token=<token>``
  once in a browser: the dashboard then sets a session cookie (HttpOnly, SameSite=Lax,
  holding an HMAC of the token, not the token) and redirects to the same address
  without the token, so it stays out of the address bar and the history.
- ``basic_auth`` (``"user:password"``): HTTP basic auth; the browser asks for it.
- ``check``: a callable given the WSGI environ, for a dashboard mounted in a site that
  authenticates on its own (``lambda environ: environ.get("REMOTE_USER") == "ops"``).

Any one of those that is configured admits a request. With none configured the
dashboard is open: the server command allows that on a loopback address only.
Comparisons take constant time.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import urllib.parse
from collections.abc import Callable
from typing import Any

from backy_gevent.web.http import Request, Response, redirect

SESSION_COOKIE = "backy_session"
#: How long a browser stays signed in after ?token= (seconds).
SESSION_SECONDS = 7 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class Auth:
    """The dashboard's credentials; ``Auth()`` admits everyone."""

    token: str | None = None
    basic_auth: str | None = None
    check: Callable[[dict[str, Any]], bool] | None = None

    @property
    def configured(self) -> bool:
        return bool(self.token or self.basic_auth or self.check)

    def session_value(self) -> str:
        """What the session cookie holds: an HMAC of the token, which it does not reveal."""
        assert self.token
        mac = hmac.new(self.token.encode(), b"backy-gevent web session", hashlib.sha256)
        return mac.hexdigest()

    def admits(self, request: Request) -> bool:
        """Whether this request carries valid credentials (a token in the query aside)."""
        if not self.configured:
            return True
        scheme, _, value = request.header("Authorization").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if self.token:
            if scheme == "bearer" and _same(value, self.token):
                return True
            cookie = request.cookies.get(SESSION_COOKIE, "")
            if cookie and _same(cookie, self.session_value()):
                return True
        if self.basic_auth and scheme == "basic" and _same(_decoded(value), self.basic_auth):
            return True
        return bool(self.check and self.check(request.environ))

    def sign_in(self, request: Request) -> Response | None:
        """For a GET holding ``?token=`` with the right token: the redirect that sets the
        session cookie and drops the token from the address. None otherwise."""
        given = request.query.get("token")
        if not (self.token and given and request.method == "GET"):
            return None
        if not _same(given[0], self.token):
            return None
        rest = {k: v for k, v in request.query.items() if k != "token"}
        query = urllib.parse.urlencode(rest, doseq=True)
        response = redirect(request.script_name + request.path + ("?" + query if query else ""))
        response.set_cookie(
            SESSION_COOKIE, self.session_value(), path=request.script_name or "/",
            secure=request.secure, max_age=SESSION_SECONDS, same_site="Lax",
        )
        return response

    def refusal(self) -> Response:
        """401, saying which credentials would do."""
        ways = []
        if self.token:
            ways.append("send 'Authorization: Bearer <web_token>', or open the page once"
                        " with ?token=<web_token>")
        if self.basic_auth:
            ways.append("sign in with the web_basic_auth user and password")
        if self.check:
            ways.append("sign in to the site that hosts the dashboard")
        response = Response(
            "401 Unauthorized: authentication required: " + "; or ".join(ways) + "\n",
            "401 Unauthorized", "text/plain; charset=utf-8",
        )
        if self.basic_auth:
            response.headers.append(
                ("WWW-Authenticate", 'Basic realm="backy-gevent", charset="UTF-8"'))
        return response


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _decoded(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
