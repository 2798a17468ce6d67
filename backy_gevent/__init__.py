"""backy-gevent: background jobs for Python, backed by PostgreSQL and run on gevent.

Only public names live here, loaded lazily, so importing the package connects to
nothing, registers nothing and imports neither gevent nor psycopg2 (the console script
must patch them before they are imported).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backy_gevent import backoff
    from backy_gevent.client import Client, DefaultClient
    from backy_gevent.hooks import hookimpl
    from backy_gevent.job import Cancel, Job, JobCrashed, JobTimeout, Snooze, touch
    from backy_gevent.worker import Worker, WorkerError

__all__ = [
    "Cancel",
    "Client",
    "Job",
    "JobCrashed",
    "JobTimeout",
    "Snooze",
    "Worker",
    "WorkerError",
    "backoff",
    "cancel",
    "configure",
    "enqueue",
    "enqueue_many",
    "hookimpl",
    "retry",
    "touch",
]

_LAZY = {
    "Client": "backy_gevent.client",
    "Job": "backy_gevent.job",
    "JobTimeout": "backy_gevent.job",
    "JobCrashed": "backy_gevent.job",
    "Snooze": "backy_gevent.job",
    "Cancel": "backy_gevent.job",
    "touch": "backy_gevent.job",
    "Worker": "backy_gevent.worker",
    "WorkerError": "backy_gevent.worker",
    "hookimpl": "backy_gevent.hooks.specs",
}


#: Submodules that are public nouns themselves: ``backy.backoff.exponential(...)``.
_LAZY_MODULES = ("backoff",)


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"backy_gevent.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'backy_gevent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


_default_client: DefaultClient | None = None


def _default() -> DefaultClient:
    """The holder of the default client, made on first use (nothing happens at import)."""
    global _default_client
    if _default_client is None:
        from backy_gevent.client import DefaultClient

        _default_client = DefaultClient()
    return _default_client


def configure(**options: Any) -> None:
    """Configure the default client that ``enqueue`` and friends use (``dsn=...``...)."""
    _default().configure(**options)


def enqueue(worker: Any, args: Any = None, **options: Any) -> Job:
    """Enqueue one job with the default client; see ``Client.enqueue``."""
    return _default().get().enqueue(worker, args, **options)


def enqueue_many(worker: Any, list_of_args: Any, **options: Any) -> list[Job]:
    """Enqueue many jobs in one round trip with the default client."""
    return _default().get().enqueue_many(worker, list_of_args, **options)


def cancel(job_id: int) -> Job | None:
    """Cancel a waiting or running job; see ``Client.cancel``."""
    return _default().get().cancel(job_id)


def retry(job_id: int) -> Job | None:
    """Run a failed or cancelled job again with fresh retries; see ``Client.retry``."""
    return _default().get().retry(job_id)
