"""Raises in every hook: backy must log it with this plugin's name and carry on."""

from __future__ import annotations

from typing import Any

import backy_gevent as backy


class PluginFailure(RuntimeError):
    """What every hook here raises."""


def _fail(hook: str, **details: Any) -> None:
    raise PluginFailure(f"raising plugin fails in {hook} " + repr(sorted(details)))


@backy.hookimpl
def backy_runner_started(runner: Any) -> None:
    _fail("backy_runner_started")


@backy.hookimpl
def backy_runner_stopping(runner: Any) -> None:
    _fail("backy_runner_stopping")


@backy.hookimpl
def backy_job_enqueued(jobs: Any) -> None:
    _fail("backy_job_enqueued")


@backy.hookimpl
def backy_before_job(job: Any, worker: Any) -> None:
    _fail("backy_before_job", job=job, worker=worker)


@backy.hookimpl
def backy_after_job(job: Any, worker: Any, result: Any, duration: float) -> None:
    _fail("backy_after_job")


@backy.hookimpl
def backy_on_failure(job: Any, worker: Any, error: Any, will_retry: bool, timed_out: bool) -> None:
    _fail("backy_on_failure")


@backy.hookimpl
def backy_retry_delay(job: Any, worker: Any, error: Any) -> float:
    _fail("backy_retry_delay")
    return 0.0
