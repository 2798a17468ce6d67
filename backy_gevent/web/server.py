"""``backy-gevent web``: the dashboard on gevent's WSGI server, until SIGTERM or SIGINT.

The console script has patched gevent before this runs, so each request is a greenlet
and the database calls yield to the others.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import signal
import sys

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.db import schema
from backy_gevent.errors import ConfigError, SchemaMissing
from backy_gevent.web.auth import Auth
from backy_gevent.web.wsgi import Dashboard
from backy_gevent.worker import Registry

log = logging.getLogger("backy_gevent.web")

#: Requests served at once; more wait for the listen backlog.
MAX_REQUESTS = 32
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine. Any other name may
    resolve to a public address, and "" or 0.0.0.0 mean every interface."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse (``ConfigError``, exit status 2) to serve beyond loopback with no auth:
    anyone who can reach the port could read every job's args."""
    if is_loopback(settings.web_host) or settings.web_token or settings.web_basic_auth:
        return
    raise ConfigError(
        f"option web_host: bad value {settings.web_host!r}: binding beyond loopback needs"
        " auth: set web_token or web_basic_auth (BACKY_WEB_TOKEN, BACKY_WEB_BASIC_AUTH),"
        " or bind 127.0.0.1"
    )


def command_web(arguments: argparse.Namespace, settings: Settings) -> int:
    """Serve the dashboard until SIGTERM or SIGINT; 0 then."""
    import gevent
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    check_exposure(settings)
    client = Client(settings, registry=Registry.discover(settings.imports))
    _check_schema(client)
    auth = Auth(token=settings.web_token, basic_auth=settings.web_basic_auth)
    dashboard = Dashboard(client, allow_actions=arguments.allow_actions, auth=auth)
    server = WSGIServer((settings.web_host, settings.web_port), dashboard, log=None,
                        error_log=log, spawn=Pool(MAX_REQUESTS))
    _bind(server, settings)
    host, port = server.address[:2]
    shown = f"[{host}]" if ":" in host else host
    how = "actions allowed" if arguments.allow_actions else "read-only"
    who = "token" if auth.token else ""
    who += (" or " if who and auth.basic_auth else "") + ("basic auth" if auth.basic_auth else "")
    print(f"backy-gevent web: serving http://{shown}:{port}/ ({how}; auth: {who or 'none'})",
          file=sys.stderr, flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, lambda: gevent.spawn(server.stop, timeout=2))
    try:
        server.serve_forever()
    finally:
        client.close()
    return 0


def _check_schema(client: Client) -> None:
    """``SchemaMissing`` (one line, exit status 1) unless every migration is applied: the
    pages read tables and indexes of the latest ones."""
    with client.pool.borrow() as conn:
        missing = schema.pending(conn, client.settings.table_name)
    if missing:
        how = "missing" if len(missing) == len(schema.migrations()) else (
            f"behind ({len(missing)} migrations pending)")
        raise SchemaMissing(
            f"the jobs table {client.settings.table_name!r} is {how}: run `backy-gevent setup`"
        )


def _bind(server: object, settings: Settings) -> None:
    """Bind now, so that a taken port or a bad address is one line (exit status 2)."""
    try:
        server.init_socket()  # type: ignore[attr-defined]
    except OSError as exc:
        code = exc.errno or 0
        reason = os.strerror(code) if code > 0 else exc.strerror or str(exc)
        taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
        option, value = ("web_port", settings.web_port) if taken else (
            "web_host", settings.web_host)
        raise ConfigError(
            f"option {option}: bad value {value!r}: can't listen on"
            f" {settings.web_host}:{settings.web_port} ({reason})"
        ) from None
