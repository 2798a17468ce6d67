"""backy-failure-webhook: POST a JSON document to a URL when a job fails for good.

Installed, it is found through its ``backy.plugins`` entry point (``failure-webhook``).
It does nothing until ``BACKY_FAILURE_WEBHOOK_URL`` is set. Only a job that ran out of
retries (``will_retry`` false) is posted, from a greenlet of the plugin's own, so a slow
or dead endpoint never holds up a job or the runner; each post is bounded by
``BACKY_FAILURE_WEBHOOK_TIMEOUT`` seconds (default 5). A post that fails is logged, not
retried. Posts still in flight when the process exits get up to that timeout to finish.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import socket
import traceback
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import gevent
import gevent.pool

import backy_gevent as backy

__version__ = "0.1.0"

URL_VARIABLE = "BACKY_FAILURE_WEBHOOK_URL"
TIMEOUT_VARIABLE = "BACKY_FAILURE_WEBHOOK_TIMEOUT"
DEFAULT_TIMEOUT = 5.0
#: The document carries at most the last this many characters of the traceback.
MAX_TRACEBACK_CHARS = 4000

log = logging.getLogger("backy_failure_webhook")

Post = Callable[[str, Mapping[str, Any], float], int]


def post_json(url: str, document: Mapping[str, Any], timeout: float) -> int:
    """POST ``document`` as JSON to ``url``; return the HTTP status (2xx, else raises).

    ``timeout`` bounds the whole exchange, not only each socket operation.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps(document, default=str).encode(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"backy-failure-webhook/{__version__}",
        },
        method="POST",
    )
    with (
        gevent.Timeout(timeout, TimeoutError(f"no answer within {timeout:g}s")),
        urllib.request.urlopen(request, timeout=timeout) as response,
    ):
        return int(response.status)


def failure_document(job: backy.Job, error: BaseException, timed_out: bool) -> dict[str, Any]:
    """The JSON document posted for a job that failed for good (its args left out)."""
    cls = type(error)
    kind = cls.__qualname__
    if cls.__module__ != "builtins":
        kind = f"{cls.__module__}.{kind}"
    trace = "".join(traceback.format_exception(error))[-MAX_TRACEBACK_CHARS:]
    how = "timed out" if timed_out else "failed"
    return {
        "event": "job_failed",
        # Chat webhooks (Slack, Mattermost, Teams connectors) show "text" as the message.
        "text": (
            f"backy-gevent job {job.id} ({job.worker}) {how} for good after"
            f" {job.attempt} attempts: {kind}: {error}"
        ),
        "job_id": job.id,
        "worker": job.worker,
        "queue": job.queue,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "timed_out": timed_out,
        "error_type": kind,
        "error": str(error),
        "traceback": trace,
        "enqueued_at": job.enqueued_at,
        "failed_at": datetime.datetime.now(datetime.timezone.utc),
        "runner": job.runner_id,
        "host": socket.gethostname(),
    }


def _where(url: str) -> str:
    """The URL without its path or query, which often hold a secret token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class FailureWebhook:
    """The plugin. ``environ`` is read at each failure; ``post`` sends one document."""

    def __init__(self, environ: Mapping[str, str] = os.environ, post: Post = post_json) -> None:
        self.environ = environ
        self.post = post
        #: Posts in flight; ``drain`` waits for them.
        self.pending = gevent.pool.Group()
        self._drain_at_exit = False

    def settings(self) -> tuple[str, float] | None:
        """The URL and timeout, or None when no URL is set; ValueError when bad."""
        url = self.environ.get(URL_VARIABLE, "").strip()
        if not url:
            return None
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not _where(url):
            raise ValueError(f"{URL_VARIABLE} must be an http:// or https:// URL")
        text = self.environ.get(TIMEOUT_VARIABLE, "").strip()
        try:
            timeout = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):
            raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0, not {text!r}")
        return url, timeout

    @backy.hookimpl
    def backy_runner_started(self) -> None:
        # Check the settings at start-up, so a typo shows before the first failure.
        configured = self.settings()
        if configured:
            log.info("failed jobs will be posted to %s", _where(configured[0]))

    @backy.hookimpl
    def backy_on_failure(
        self, job: backy.Job, error: BaseException, will_retry: bool, timed_out: bool
    ) -> None:
        if will_retry:
            return
        configured = self.settings()
        if configured is None:
            return
        url, timeout = configured
        document = failure_document(job, error, timed_out)
        self.pending.spawn(self._send, url, document, timeout)
        if not self._drain_at_exit:
            self._drain_at_exit = True
            atexit.register(self.drain, timeout)

    def _send(self, url: str, document: Mapping[str, Any], timeout: float) -> None:
        try:
            status = self.post(url, document, timeout)
        except Exception as exc:
            log.warning(
                "could not post the failure of job %s to %s: %s",
                document["job_id"], _where(url), exc,
            )
        else:
            log.info("posted the failure of job %s to %s (%s)", document["job_id"],
                     _where(url), status)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for posts in flight; True when none is left."""
        self.pending.join(timeout=timeout)
        return not len(self.pending)


#: What the ``failure-webhook`` entry point registers.
plugin = FailureWebhook()
