"""The web dashboard: ``backy-gevent web``, or ``app(...)`` mounted in your own site.

The room: ``wsgi`` (the WSGI app and its routes), ``views`` (what each page reads),
``pages`` and ``templates`` (HTML, escaped by ``markup``), ``auth``, ``csrf``, ``actions``
(what the buttons do), ``http`` (request and response), ``server`` (the command, on
gevent's WSGI server), and ``static/`` (one stylesheet, one small script).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.web.auth import Auth
from backy_gevent.web.wsgi import Dashboard

__all__ = ["Auth", "Dashboard", "app"]


def app(
    client: Client | Settings | None = None,
    *,
    allow_actions: bool = False,
    token: str | None = None,
    basic_auth: str | None = None,
    auth: Callable[[dict[str, Any]], bool] | None = None,
) -> Dashboard:
    """The dashboard as a WSGI application, to mount in a Flask or Django site.

    - ``client``: a ``backy_gevent.Client``, or ``Settings`` to build one from, or None
      for a Client configured from the environment (``BACKY_DSN``...), as
      ``Client()`` is. Its ``table_name`` is the table shown.
    - ``allow_actions``: False (the default) makes the dashboard read-only: every POST
      (retry, cancel, delete, pause, resume) is refused with 403 and no button is shown.
    - ``token`` and ``basic_auth`` (``"user:password"``): the dashboard's own
      credentials, as the ``web_token`` and ``web_basic_auth`` options; when both are
      None they are taken from the client's settings.
    - ``auth``: a callable given the WSGI environ that returns whether to let the request
      in, for a site that authenticates on its own (it may read ``REMOTE_USER`` or a
      header its middleware sets).

    A request is let in by any one of those that is configured; with none of them, by
    anyone. Every POST also needs the CSRF token of a page the dashboard rendered (403
    otherwise). Links follow ``SCRIPT_NAME``, so the app works under any path prefix.
    """
    if client is None:
        client = Client()
    elif isinstance(client, Settings):
        client = Client(client)
    settings = client.settings
    if token is None and basic_auth is None:
        token, basic_auth = settings.web_token, settings.web_basic_auth
    credentials = Auth(token=token, basic_auth=basic_auth, check=auth)
    return Dashboard(client, allow_actions=allow_actions, auth=credentials)
