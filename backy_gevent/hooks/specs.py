"""The hooks a backy-gevent plugin may implement. Declarations and documentation only.

A plugin is a module or object with functions marked ``@backy_gevent.hookimpl`` and named
after the specs below; it is found through a ``backy.plugins`` entry point (see
``backy_gevent.hooks.manager``). The rules that hold for every hook:

- Hooks are called with keyword arguments; an implementation may accept any subset of
  them, in any order. A name that is not an argument of the spec, or a hook name that is
  not declared here, stops ``backy-gevent run`` at start-up with a one-line message.
- Every implementation is called on its own, most recently registered first (so an
  installed plugin runs before a built-in one); ``tryfirst``/``trylast`` are honoured.
  Hook wrappers (``hookwrapper=True`` or ``wrapper=True``) are refused at start-up.
- An implementation that raises an ``Exception`` is logged with the plugin's name and
  counted (``on_error`` of ``backy_gevent.hooks.Hooks``, the ``backy_hook_errors_total``
  metric); the other implementations still run, and the job's outcome (completed,
  retried or failed) and the runner carry on exactly as without the plugin.
- Hooks run in the greenlet named in each docstring. A hook that blocks holds up that
  greenlet, and one that never yields to the gevent hub holds up the whole runner: do
  slow I/O in a greenlet of the plugin's own.
- The ``job`` passed to job hooks is the ``backy_gevent.Job`` as claimed: ``state`` is
  ``"running"``, ``attempt`` is this attempt's number (1 the first time) and ``errors``
  holds the earlier attempts' errors. Treat it as read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from backy_gevent.config import Settings
    from backy_gevent.job import Job
    from backy_gevent.worker import Registry, Worker

PROJECT_NAME = "backy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RunnerView(Protocol):
    """What the runner hooks promise a plugin about the runner they pass.

    The object is a ``backy_gevent.runner.Runner``; a plugin should rely on these
    names only.
    """

    @property
    def id(self) -> str:
        """``host:pid:random``, the id in the runners table and in the job rows it claims."""

    @property
    def settings(self) -> Settings:
        """The runner's options, parsed."""

    @property
    def registry(self) -> Registry:
        """The workers this runner runs."""

    def running_counts(self) -> dict[str, int]:
        """Jobs in flight per worker in this process, right now."""


@hookspec
def backy_runner_started(runner: RunnerView) -> None:
    """A runner has started: it is connected, the schema is current, and it is about to
    claim its first jobs.

    Called once per ``backy-gevent run`` process, in the runner's main greenlet, after
    the runner's loops were spawned; they, and so the first jobs, start as soon as the
    hook returns or yields. ``runner`` is the ``backy_gevent.runner.Runner``: ``id``,
    ``settings``, ``registry`` (the workers it runs) and ``running_counts()``.

    Returns: ignored. Raises: logged and counted; the runner starts anyway.
    """


@hookspec
def backy_runner_stopping(runner: RunnerView) -> None:
    """A runner has been asked to stop (SIGTERM, SIGINT) and claims no more jobs.

    Called once, in the runner's main greenlet, after the first signal and before the
    running jobs are drained (so job hooks may still fire after it, until the drain
    ends). Not called when the process is killed outright or fails to start.

    Returns: ignored. Raises: logged and counted; the shutdown goes on as usual.
    """


@hookspec
def backy_job_enqueued(jobs: list[Job]) -> None:
    """Jobs were written by ``Client.enqueue`` or ``Client.enqueue_many``, or by the
    runner that enqueued a tick of a periodic job (one job per call, in its periodic-jobs
    greenlet, after the statement committed).

    Called once per call that wrote rows, with the new jobs in input order, in the
    greenlet (or thread) that enqueued them, right after the INSERT and before
    ``enqueue`` returns; only by a ``Client`` built with ``hooks=``. A ``unique_key``
    that was already taken writes nothing and is not passed. With ``connection=``, the
    caller's transaction is still open and may yet roll back.

    Returns: ignored. Raises: logged and counted; ``enqueue`` returns normally.
    """


@hookspec
def backy_before_job(job: Job, worker: Worker) -> None:
    """An attempt of ``job`` is about to run: once per attempt, before ``perform``.

    Called in the job's own greenlet, with the fresh ``worker`` instance that will run
    it. The ``max_runtime`` clock has not started, but the job's lease has: a hook that
    blocks for longer than ``max_runtime + requeue_delay`` may see the job rescued and run
    elsewhere. Not called when the worker class can't be instantiated (then only
    ``backy_on_failure`` fires, with ``worker=None``).

    Returns: ignored. Raises: logged and counted; the attempt runs anyway.
    """


@hookspec
def backy_after_job(job: Job, worker: Worker, result: Any, duration: float) -> None:
    """The attempt succeeded: ``perform`` returned ``result`` after ``duration`` seconds.

    Called in the job's own greenlet, after ``perform`` returned and after the completion
    was handed to the completer (so a shutdown that interrupts the hook can't lose it),
    normally before it is written (if the runner dies in between, the job runs again
    once its lease runs out). ``duration`` is the wall time of ``perform`` alone, from a
    monotonic clock. For a quarantined job, ``perform`` ran in a child process and
    ``result`` is what JSON made of its return value.

    Returns: ignored. Raises: logged and counted; the job is still completed.
    """


@hookspec
def backy_on_failure(
    job: Job, worker: Worker | None, error: BaseException, will_retry: bool, timed_out: bool
) -> None:
    """The attempt failed: ``perform`` raised ``error``, ran past ``max_runtime``, the
    worker class could not even be instantiated, or (a quarantined job) its process died:
    ``error`` is then a ``backy_gevent.JobCrashed``.

    ``timed_out`` is true when the attempt was stopped at ``max_runtime``; ``error`` is
    then a ``backy_gevent.JobTimeout``. ``worker`` is None when instantiating the worker
    class raised (``backy_before_job`` did not fire for that attempt). ``will_retry``
    says whether the job is scheduled to run again; when false it ends ``failed``.

    Called in the job's own greenlet, after ``backy_retry_delay`` chose the delay and
    after the failure was handed to the completer, normally before it is written. Not
    called for a job handed back at shutdown (that
    spends no attempt), for a job cancelled while it ran, nor for an attempt lost with
    its runner (no process is left to see it; the rescued job's next attempt fires hooks
    as usual).

    Returns: ignored. Raises: logged and counted; the job is still retried or failed
    exactly as ``will_retry`` says.
    """


@hookspec(firstresult=True)
def backy_retry_delay(job: Job, worker: Worker | None, error: BaseException) -> float | None:
    """Choose how many seconds a failed job waits before its next attempt.

    Called only when the job will be retried, in the job's own greenlet, just before
    ``backy_on_failure``; ``worker`` is None when the worker class could not be
    instantiated. Implementations are asked in turn until one returns a number; that
    number wins.

    Returns: a finite number of seconds >= 0 to choose the delay, or None to defer to
    the next plugin and in the end to the worker's ``retry_delay`` (or the configured
    one). Any other value is logged and counted as that plugin's error and skipped.
    Raises: logged and counted, and treated as None.
    """
