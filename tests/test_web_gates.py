"""The dashboard's gates and escaping without a database: markup, auth, CSRF, the
exposure check, and the web options."""

from __future__ import annotations

import io
from typing import Any

import pytest

from backy_gevent.cli.parser import build_parser, settings_from
from backy_gevent.config import Settings, load_settings
from backy_gevent.errors import ConfigError
from backy_gevent.web import auth, csrf
from backy_gevent.web.http import Request
from backy_gevent.web.markup import Markup, attributes, escape, render
from backy_gevent.web.server import check_exposure, is_loopback


def request(method: str = "GET", query: str = "", cookie: str = "", body: str = "",
            **headers: str) -> Request:
    data = body.encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": "/jobs", "QUERY_STRING": query,
        "HTTP_COOKIE": cookie, "wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data)),
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
    }
    environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return Request.from_environ(environ)


def test_render_escapes_every_value_but_markup() -> None:
    page = render("<p title=\"$t\">$body</p>$raw", t='"><script>', body="<b>&",
                  raw=Markup("<i>ok</i>"))
    assert page == '<p title="&quot;&gt;&lt;script&gt;">&lt;b&gt;&amp;</p><i>ok</i>'
    assert escape(None) == "" and escape(5) == "5"
    assert attributes(href="/a?b=1&c=2", checked=True, hidden=False, class_="x") == (
        'href="/a?b=1&amp;c=2" checked class="x"')
    with pytest.raises(KeyError):
        render("$missing")


def test_token_auth() -> None:
    gate = auth.Auth(token="t0ken")
    assert not gate.admits(request())
    assert gate.admits(request(AUTHORIZATION="Bearer t0ken"))
    assert not gate.admits(request(AUTHORIZATION="Bearer t0ke"))
    assert gate.admits(request(cookie=f"{auth.SESSION_COOKIE}={gate.session_value()}"))
    assert not gate.admits(request(cookie=f"{auth.SESSION_COOKIE}=t0ken"))
    signed = gate.sign_in(request(query="token=t0ken&state=failed"))
    assert signed is not None and ("Location", "/jobs?state=failed") in signed.headers
    assert gate.sign_in(request(query="token=nope")) is None
    assert gate.sign_in(request("POST", query="token=t0ken")) is None


def test_basic_auth_and_no_auth() -> None:
    gate = auth.Auth(basic_auth="ops:secret")
    assert not gate.admits(request())
    assert gate.admits(request(AUTHORIZATION="Basic b3BzOnNlY3JldA=="))
    assert not gate.admits(request(AUTHORIZATION="Basic !!notbase64"))
    assert "WWW-Authenticate" in dict(gate.refusal().headers)
    assert auth.Auth().admits(request())


def test_csrf_double_submit() -> None:
    token, new = csrf.token_for(request())
    assert new and len(token) >= 32
    assert csrf.token_for(request(cookie=f"{csrf.COOKIE}={token}")) == (token, False)
    assert csrf.verify(request("POST", cookie=f"{csrf.COOKIE}={token}", body=f"csrf={token}"))
    assert not csrf.verify(request("POST", cookie=f"{csrf.COOKIE}={token}", body="csrf=x"))
    assert not csrf.verify(request("POST", body=f"csrf={token}"))
    assert not csrf.verify(request("POST", cookie=f"{csrf.COOKIE}=", body="csrf="))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
    ("192.168.1.4", False), ("dashboard.example", False),
])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_beyond_loopback_needs_auth() -> None:
    with pytest.raises(ConfigError, match="binding beyond loopback needs auth"):
        check_exposure(Settings(web_host="0.0.0.0"))
    check_exposure(Settings(web_host="0.0.0.0", web_token="x"))
    check_exposure(Settings(web_host="0.0.0.0", web_basic_auth="a:b"))
    check_exposure(Settings())


def test_web_options_from_flags_environment_and_file(tmp_path: Any) -> None:
    parser = build_parser()
    arguments = parser.parse_args(["web", "--host", "::1", "--port", "8000", "--allow-actions"])
    settings = settings_from(arguments, {"BACKY_WEB_TOKEN": "tok"})
    assert (settings.web_host, settings.web_port, settings.web_token) == ("::1", 8000, "tok")
    assert arguments.allow_actions
    config = tmp_path / "conf.py"
    config.write_text("web_port = 9000\nweb_basic_auth = 'u:p'\n")
    loaded = load_settings(config_file=config, environ={"BACKY_WEB_HOST": "0.0.0.0"})
    assert (loaded.web_host, loaded.web_port, loaded.web_basic_auth) == ("0.0.0.0", 9000, "u:p")
    assert Settings().web_host == "127.0.0.1" and Settings().web_port == 9722


def test_a_bad_basic_auth_value_is_named_but_not_printed() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"BACKY_WEB_BASIC_AUTH": "nocolonsecret"})
    assert "web_basic_auth" in str(raised.value) and "nocolonsecret" not in str(raised.value)
