"""The hooks a backy-gevent plugin may implement. Declarations and documentation only.

Every hook is called with keyword arguments; an implementation may accept any subset
of them. A hook implementation that raises is logged with the plugin's name and counted
in ``backy_hook_errors_total``; it never loses a job, changes a job's outcome or stops the
runner, and the other implementations of that hook still run. Hooks are called in the
greenlet named in each docstring, so a slow hook slows that greenlet: do I/O that may
block for long in a greenlet or queue of the plugin's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from backy_gevent.job import Job
    from backy_gevent.runner import Runner
    from backy_gevent.worker import Worker

PROJECT_NAME = "backy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def backy_runner_started(runner: Runner) -> None:
    """The runner has registered its workers and is about to claim its first jobs.

    Called once, in the runner's main greenlet, after the plugin manager is built and
    the database answered. The return value is ignored.
    """


@hookspec
def backy_runner_stopping(runner: Runner) -> None:
    """The runner has been asked to stop (SIGTERM, SIGINT) and claims no more jobs.

    Called once, in the runner's main greenlet, before running jobs are drained. The
    return value is ignored.
    """


@hookspec
def backy_job_enqueued(jobs: list[Job]) -> None:
    """Jobs were written by ``enqueue`` or ``enqueue_many`` in this process.

    Called in the enqueuing greenlet (or thread) right after the INSERT, with the new
    jobs only (a ``unique_key`` that was already taken writes nothing and calls nothing).
    With ``connection=`` the caller's transaction may still roll back. The return value
    is ignored.
    """


@hookspec
def backy_before_job(job: Job, worker: Worker) -> None:
    """An attempt of ``job`` is about to run (once per attempt; ``job.attempt`` is 1 first).

    Called in the job's own greenlet, before ``perform``; the ``max_runtime`` clock is
    not running yet. The return value is ignored.
    """


@hookspec
def backy_after_job(job: Job, worker: Worker, result: Any, duration: float) -> None:
    """The attempt succeeded: ``perform`` returned ``result`` after ``duration`` seconds.

    Called in the job's own greenlet, before the completion is written to the database.
    The return value is ignored.
    """


@hookspec
def backy_on_failure(
    job: Job, worker: Worker, error: BaseException, will_retry: bool, timed_out: bool
) -> None:
    """The attempt raised ``error``, or ran past ``max_runtime`` (then ``timed_out`` is
    true and ``error`` is a ``backy_gevent.JobTimeout``).

    ``will_retry`` says whether the job is scheduled to run again; when false the job is
    now ``failed``. Called in the job's own greenlet, after ``backy_retry_delay`` chose the
    delay and before the failure is written. The return value is ignored.
    """


@hookspec(firstresult=True)
def backy_retry_delay(job: Job, worker: Worker, error: BaseException) -> float | None:
    """Choose the seconds to wait before the next attempt of a failed job.

    Called only when the job will be retried, in the job's own greenlet. The first
    implementation that returns a number (>= 0) wins; None defers to the next plugin
    and finally to the worker's ``retry_delay``. A bad value (negative, not a number)
    is logged as that plugin's error and ignored.
    """
