"""The database a command uses: the configured server, or the embedded one started here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from backy_gevent.config import Settings
from backy_gevent.db.dsn import configured_dsn
from backy_gevent.errors import (
    DatabaseUnavailable,
    EmbeddedServerError,
    EmbeddedUnavailable,
    UsageError,
)


def embedded_connection_limit(settings: Settings, command: str) -> int:
    """The embedded server's max_connections, sized to fit a runner's concurrency.

    A runner holds 6 connections of its own (a pool of 4, the listener, the metrics
    query), and each running job may open one; unlimited
    workers count as 100 (most jobs open no connection; ``fetch_limit`` would ask for a
    thousand). Never below 100, so that several processes fit.
    """
    if command != "run":
        return 100
    from backy_gevent.worker import Registry

    registry = Registry.discover(settings.imports).restricted(settings.workers)
    jobs = sum(r.cls.max_concurrency or 100 for r in registry)
    return max(100, 20 + jobs)


@contextlib.contextmanager
def database(
    settings: Settings, environ: dict[str, str], *, max_connections: int = 100
) -> Iterator[Settings]:
    """Settings with a usable DSN: the configured one, libpq's PG* variables, or the
    embedded server (started here and stopped when the last user exits)."""
    dsn = configured_dsn(settings.dsn, environ)
    if dsn is not None:
        yield settings.replace(dsn=dsn)
        return
    from backy_gevent import embedded

    data_dir = Path(settings.data_dir) if settings.data_dir else embedded.default_data_dir(environ)
    with contextlib.ExitStack() as stack:
        try:
            dsn = stack.enter_context(
                embedded.embedded_server(data_dir, max_connections=max_connections)
            )
        except EmbeddedUnavailable as exc:
            raise UsageError(str(exc)) from None
        except EmbeddedServerError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        from backy_gevent.client import Client

        ready = settings.replace(dsn=dsn)
        client = Client(ready, registry=None)
        try:
            client.setup()
        finally:
            client.close()
        yield ready
