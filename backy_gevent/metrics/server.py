"""The runner's HTTP endpoint: ``/metrics`` and ``/healthz`` from the runner's own hub."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import make_wsgi_app

from backy_gevent.config import Settings
from backy_gevent.errors import ConfigError
from backy_gevent.metrics.plugin import Metrics

if TYPE_CHECKING:
    from backy_gevent.runner import Runner

log = logging.getLogger("backy_gevent.metrics")


class MetricsServer:
    """The runner's HTTP endpoint, a runner service: ``/metrics`` and ``/healthz``.

    The socket is bound when the server is built, so a taken port stops the runner at
    start-up with a one-line error; requests are served once the runner calls it, in
    greenlets of the runner's hub (at most ``MAX_REQUESTS`` at a time).
    """

    MAX_REQUESTS = 16

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        from gevent.pool import Pool
        from gevent.pywsgi import WSGIServer

        self.metrics = metrics
        self.runner: Runner | None = None
        self._metrics_app = make_wsgi_app(metrics.registry)
        self.server = WSGIServer(
            (host, port), self.application, log=None, error_log=log,
            spawn=Pool(self.MAX_REQUESTS),
        )
        try:
            self.server.init_socket()
        except OSError as exc:
            # gevent appends the address to strerror; the errno's own text reads better.
            code = exc.errno or 0
            reason = os.strerror(code) if code > 0 else exc.strerror or str(exc)
            taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
            option, value = ("metrics_port", port) if taken else ("metrics_host", host)
            raise ConfigError(
                f"option {option}: bad value {value!r}: can't listen on"
                f" {host}:{port} ({reason})"
            ) from None
        self.host, self.port = self.server.address[:2]

    def __call__(self, runner: Runner) -> None:
        """Serve until the runner kills this greenlet at its end."""
        self.runner = runner
        queue = self.metrics.watch(runner)
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)
        try:
            self.server.serve_forever(stop_timeout=1.0)
        finally:
            queue.close()

    def application(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The WSGI application: metrics, health, or 404."""
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            if self.runner is None:
                return _text(start_response, "503 Service Unavailable", "starting\n")
            healthy, reason = self.runner.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            return _text(start_response, status, reason + "\n")
        if path == "/":
            return _text(start_response, "200 OK", "backy-gevent: /metrics /healthz\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics or /healthz\n")


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def metrics_services(metrics: Metrics, settings: Settings) -> list[Callable[[Runner], None]]:
    """The runner services that serve ``metrics``: none when ``metrics_port`` is 0."""
    if not settings.metrics_port:
        return []
    return [MetricsServer(metrics, settings.metrics_host, settings.metrics_port)]
