"""CSRF: every POST carries a token that only the dashboard's own pages can know.

Double submit: the first page a browser gets sets a random ``backy_csrf`` cookie
(HttpOnly, SameSite=Strict), and every form the dashboard renders holds the same value
in a hidden ``csrf`` field. A POST whose field is missing or differs from the cookie is
refused with 403. Another site can make a browser post, but can neither read the
cookie nor, SameSite=Strict, have it sent along. Nothing is kept on the server, so
several processes serving one dashboard agree.
"""

from __future__ import annotations

import hmac
import secrets

from backy_gevent.web.http import Request, Response

COOKIE = "backy_csrf"
FIELD = "csrf"


def token_for(request: Request) -> tuple[str, bool]:
    """The request's CSRF token, and whether it is new (then ``set_cookie`` must send it)."""
    current = request.cookies.get(COOKIE, "")
    if len(current) >= 32:
        return current, False
    return secrets.token_urlsafe(32), True


def set_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, path=request.script_name or "/", secure=request.secure)


def verify(request: Request) -> bool:
    """Whether a POST's form field matches its cookie."""
    cookie = request.cookies.get(COOKIE, "")
    field = request.field(FIELD)
    return len(cookie) >= 32 and hmac.compare_digest(cookie.encode(), field.encode())
