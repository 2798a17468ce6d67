"""Run jobs in your own test suite: ``perform`` one job in this process, or ``drain`` the table.

``perform(worker, args)`` runs one attempt of a worker the way a runner would, with no
database: a fresh worker instance, a ``Job`` (attempt 1 unless told otherwise), args that
went through JSON as they would through the jobs table, ``touch`` working and
``max_runtime`` applied. It returns what ``perform`` returned and raises what it raised.

``drain(client)`` runs every due job of a jobs table in this process, one after another,
through the runner's own claim statement, executor and completer, until none is due;
it returns how many attempts ended which way.

Neither patches gevent: both work in a test suite that is not monkey-patched (most are),
and in one that is. What that means for timeouts is in ``perform``'s docstring.
"""

from __future__ import annotations

import collections
import datetime
import functools
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

from backy_gevent.args import decode_args_list, encode_args
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.errors import BadJobArgs, WorkerError
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import RUNNING, Job, JobTimeout
from backy_gevent.runner.completer import Completer
from backy_gevent.runner.executor import Executor
from backy_gevent.runner.fetcher import claim_jobs
from backy_gevent.worker import (
    ENTRY_POINT_GROUP,
    Registration,
    Worker,
    check_worker_class,
    retry_count_of,
)

__all__ = ["MAX_ROUNDS", "OUTCOMES", "TooManyRounds", "drain", "perform"]

#: The keys of the dict ``drain`` returns, one count per attempt that ended that way.
OUTCOMES = ("completed", "retried", "failed", "cancelled", "snoozed")
#: How many rounds ``drain`` runs at most, by default (see ``drain``).
MAX_ROUNDS = 100
#: The ``runner_id`` of the jobs ``perform`` makes.
PERFORM_RUNNER_ID = "backy_gevent.testing"

_SETTINGS = Settings()


class TooManyRounds(RuntimeError):
    """``drain`` ran ``max_rounds`` rounds and jobs were still due.

    A job that enqueues another of its kind, due at once, every time, or that snoozes
    for 0 seconds, keeps a table from ever draining. ``counts`` holds the outcomes of the
    rounds that ran (written to the table, as always); the due jobs the last claim took
    were handed back unspent.
    """

    def __init__(self, rounds: int, counts: dict[str, int]) -> None:
        super().__init__(
            f"drain: jobs were still due after {rounds} rounds (so far {counts}): does a"
            " job enqueue itself or snooze for 0 s each time? Pass max_rounds= for more"
        )
        self.rounds = rounds
        self.counts = counts


# -- perform --------------------------------------------------------------------------


def perform(
    worker: type[Worker] | str,
    args: Mapping[str, Any] | None = None,
    *,
    job_id: int = 1,
    attempt: int = 1,
    max_attempts: int | None = None,
    queue: str | None = None,
    priority: int | None = None,
    hooks: Hooks | None = None,
    **kwargs: Any,
) -> Any:
    """Run one attempt of ``worker`` in this process, as a runner would; return its result.

    ``worker`` is a Worker subclass, or a registered name (looked up like
    ``backy_gevent.enqueue`` does, in the default client's registry). ``args`` and
    ``kwargs`` merge into the job's args, as in ``enqueue``: a job arg named like an
    option below goes in ``args``. The args go through JSON as ``enqueue`` and the claim
    would take them through the jobs table: ``perform`` receives lists for tuples, string
    keys in ``jsonb``'s order, and args JSON can't hold raise ``BadJobArgs`` (a
    ``TypeError``) naming the key, before anything runs.

    The ``Job`` has ``id`` ``job_id`` (1), ``attempt`` (1), ``max_attempts`` (the
    worker's ``retry_count`` + 1, else the default ``retry_count``'s 3 + 1 = 4),
    ``queue`` and ``priority`` (the worker's), ``state`` "running". A fresh worker
    instance runs it (``__init__`` included); a worker class with bad settings raises
    ``WorkerError``, as a runner would refuse it.

    - ``job.touch()`` restarts the ``max_runtime`` clock (there is no lease to extend).
    - What ``perform`` raises is raised here, the same exception object: a failure,
      ``backy_gevent.Snooze`` (its ``seconds``) and ``backy_gevent.Cancel`` (its
      ``reason``) alike, so ``pytest.raises`` sees what a runner would act on.
    - Past ``max_runtime`` (since the start or the last ``touch``) the attempt is
      stopped with ``backy_gevent.JobTimeout``, raised here. That timeout is a gevent
      timer, which can only interrupt code that yields to the gevent hub:
      ``gevent.sleep``, gevent's sockets, and, once the process is monkey-patched,
      ``time.sleep`` and blocking I/O. In a test suite that is not patched, a job that
      blocks (``time.sleep``, ``requests``, a psycopg2 query) or computes past its
      ``max_runtime`` can't be interrupted: it runs to its end, and ``perform`` then
      raises ``JobTimeout`` all the same if it returned late, since a runner would have
      stopped it (an exception it raised is raised as it is).
    - Hooks are not called, unless ``hooks`` is given (a ``backy_gevent.plugins.Hooks``):
      then ``backy_before_job``, ``backy_after_job`` and ``backy_on_failure`` fire as a
      runner fires them (a late return that ``perform`` turns into ``JobTimeout`` has
      already been reported to ``backy_after_job``).
    """
    registration = _registration_of(worker)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be a whole number from 1, not {attempt!r}")
    if args is not None and not isinstance(args, Mapping):
        raise BadJobArgs(f"job args must be a dict, not {type(args).__name__}")
    job = _job_for(
        registration, {**(args or {}), **kwargs}, job_id=job_id, attempt=attempt,
        max_attempts=max_attempts, queue=queue, priority=priority,
    )
    executor = Executor(_SETTINGS, hooks or _no_hooks(), _NoDatabase())
    outcome = executor.run(job, registration)
    if outcome.kind == "returned":
        if outcome.overran:
            raise JobTimeout(job.id, float(registration.cls.max_runtime))
        return outcome.result
    if outcome.error is None:  # handed back or revoked: only a database can ask for that
        raise RuntimeError(f"perform: unexpected outcome {outcome.kind!r}")
    raise outcome.error


def _job_for(
    registration: Registration,
    args: Mapping[str, Any],
    *,
    job_id: int,
    attempt: int,
    max_attempts: int | None,
    queue: str | None,
    priority: int | None,
) -> Job:
    """The Job a runner would hand to ``perform``: claimed just now by this process."""
    cls = registration.cls
    if max_attempts is None:
        max_attempts = retry_count_of(cls, _SETTINGS.retry_count) + 1
    now = datetime.datetime.now(datetime.timezone.utc)
    return Job(
        id=job_id,
        worker=registration.name,
        args=_through_the_table(args),
        queue=cls.queue if queue is None else queue,
        priority=cls.priority if priority is None else priority,
        state=RUNNING,
        attempt=attempt,
        max_attempts=max_attempts,
        run_at=now,
        enqueued_at=now,
        attempted_at=now,
        runner_id=PERFORM_RUNNER_ID,
    )


def _through_the_table(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` as a job receives them from the jobs table: written by ``enqueue``
    (``BadJobArgs`` for args ``jsonb`` can't hold), stored as ``jsonb``, read back.

    ``jsonb`` keeps an object's keys shortest first, then in byte order, and a number
    written with an exponent and no fraction left (``1e+16``, as ``json`` writes floats
    from 1e16 up) comes back as an integer.
    """
    return decode_args_list(f"[{encode_args(args)}]")[0]


def _registration_of(worker: type[Worker] | str) -> Registration:
    if isinstance(worker, str):
        return _default_client().registry.get(worker)
    cls = check_worker_class(worker, getattr(worker, "__qualname__", repr(worker)))
    name = cls.name or _entry_point_name(f"{cls.__module__}:{cls.__qualname__}")
    return Registration(name or cls.__qualname__, cls, "backy_gevent.testing")


@functools.cache
def _entry_point_name(path: str) -> str | None:
    """The name of the ``backy.workers`` entry point that points at ``module:Class``
    (found without importing anything), if one does."""
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value.replace(" ", "") == path:
            return entry_point.name
    return None


@functools.cache
def _no_hooks() -> Hooks:
    return Hooks(build_plugin_manager(load_entry_points=False))


def _default_client() -> Client:
    import backy_gevent

    return backy_gevent._default().get()


class _NoDatabase:
    """``perform``'s outcome sink: outcomes come back from the executor itself, and
    ``touch`` has no lease to extend (the job is never taken from it)."""

    def completed(self, job: Job, result: Any = None) -> None:
        pass

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None:
        pass

    def snoozed(self, job: Job, seconds: float) -> None:
        pass

    def cancelled(self, job: Job, error: dict[str, Any]) -> None:
        pass

    def handed_back(self, job: Job) -> None:
        pass

    def touch(self, job: Job, lease: float) -> bool | None:
        return True


# -- drain ----------------------------------------------------------------------------


def drain(
    client: Client | None = None,
    workers: Iterable[str | type[Worker]] | str | type[Worker] | None = None,
    *,
    hooks: Hooks | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, int]:
    """Run every due job of the table in this process until none is due; return counts.

    ``client`` is the ``Client`` of the table (default: the one ``backy_gevent.enqueue``
    uses); ``workers`` are the worker names or classes whose jobs to run (default: every
    worker the client has registered); the jobs of other workers are left alone. The
    result has one count per attempt run, by outcome: ``completed``, ``retried`` (failed,
    a retry scheduled), ``failed`` (failed with no retries left), ``cancelled`` (raised
    ``Cancel``) and ``snoozed`` (raised ``Snooze``).

    It runs what a runner runs, the same way: the runner's claim statement, in rounds,
    under a runner id of its own; each job through the runner's executor (a fresh worker,
    ``max_runtime``, ``touch`` extending the lease) in the order a runner starts them
    (priority, ``run_at``, id), one at a time in the calling greenlet; outcomes written by
    the runner's completer. Jobs that run elsewhere (quarantined ones) run here too.
    A round claims every due job (up to ``fetch_limit`` per worker); the next round takes
    what became due meanwhile, such as jobs that jobs enqueued, and retries or snoozes of
    0 seconds. A job that is retried or snoozed for longer is not run again by this
    drain, even if its delay passes meanwhile: that outcome is written when the drain
    ends, so its delay counts from then. Jobs due later (``delay``, ``run_at``) stay.

    Hooks are not called unless ``hooks`` is given. After ``max_rounds`` rounds (100)
    with jobs still due it raises ``TooManyRounds``: a job that enqueues itself, due at
    once, or snoozes for 0 s would keep it going for ever. Every outcome is written
    before ``drain`` returns or raises, and jobs claimed but not run are handed back.
    A timeout interrupts only code that yields to gevent, as in a runner (see
    ``perform``); ``drain`` does not raise for a job that returned late.
    """
    client = client or _default_client()
    registrations = _registrations(client, workers)
    runner_id = f"testing:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    completer = Completer(
        client.pool, client.queries, runner_id,
        delete_finished_jobs=client.settings.delete_finished_jobs,
    )
    tally = _Tally(completer)
    executor = Executor(client.settings, hooks or _no_hooks(), tally)
    wanted = {registration: client.settings.fetch_limit for registration in registrations.values()}
    unstarted: list[Job] = []
    rounds = 0
    try:
        while True:
            unstarted = claim_jobs(client.pool, client.queries, runner_id, wanted, queues=())
            if not unstarted:
                return tally.counts()
            if rounds == max_rounds:
                raise TooManyRounds(max_rounds, tally.counts())
            rounds += 1
            while unstarted:
                job = unstarted.pop(0)
                job.quarantined = False  # run here, not in a child process
                outcome = executor.run(job, registrations[job.worker])
                if isinstance(outcome.error, KeyboardInterrupt):
                    raise outcome.error  # recorded as the attempt's failure; stop here
            completer.flush()
    finally:
        for job in unstarted:
            completer.handed_back(job)
        tally.write_held()
        completer.flush()


def _registrations(
    client: Client, workers: Iterable[str | type[Worker]] | str | type[Worker] | None
) -> dict[str, Registration]:
    """The registrations of the workers ``drain`` runs, by name."""
    if workers is None:
        found = {registration.name: registration for registration in client.registry}
        if not found:
            raise WorkerError("drain: the client has no workers registered; name some")
        return found
    if isinstance(workers, (str, type)):
        workers = [workers]
    found = {}
    for worker in workers:
        name = client.registry.name_of(worker)
        if name in client.registry:
            found[name] = client.registry.get(name)
        else:  # a class with a name attribute, not registered: enqueue takes it too
            assert isinstance(worker, type)
            found[name] = Registration(name, check_worker_class(worker, name), "testing")
    return found


class _Tally:
    """``drain``'s outcome sink: counts each outcome and hands it to the completer.

    An outcome that schedules the job for later (a retry or a snooze of more than 0 s)
    is held until the drain ends: written now, its delay could pass during the drain and
    the job would run again, or not, depending on how fast the other jobs ran.
    """

    def __init__(self, completer: Completer) -> None:
        self.completer = completer
        self._counts: collections.Counter[str] = collections.Counter()
        self._held: list[Callable[[], None]] = []

    def counts(self) -> dict[str, int]:
        return {outcome: self._counts[outcome] for outcome in OUTCOMES}

    def completed(self, job: Job, result: Any = None) -> None:
        self._counts["completed"] += 1
        self.completer.completed(job, result)

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None:
        self._counts["failed" if retry_in is None else "retried"] += 1
        self._write(retry_in or 0.0, functools.partial(self.completer.failed, job, error,
                                                        retry_in))

    def snoozed(self, job: Job, seconds: float) -> None:
        self._counts["snoozed"] += 1
        self._write(seconds, functools.partial(self.completer.snoozed, job, seconds))

    def cancelled(self, job: Job, error: dict[str, Any]) -> None:
        self._counts["cancelled"] += 1
        self.completer.cancelled(job, error)

    def handed_back(self, job: Job) -> None:
        # Not an outcome: its lease ran out before it started; a later round runs it.
        self.completer.handed_back(job)

    def touch(self, job: Job, lease: float) -> bool | None:
        return self.completer.touch(job, lease)

    def _write(self, delay: float, write: Callable[[], None]) -> None:
        if delay > 0:
            self._held.append(write)
        else:
            write()

    def write_held(self) -> None:
        """Pass the held outcomes to the completer (the caller flushes)."""
        held, self._held = self._held, []
        for write in held:
            write()
