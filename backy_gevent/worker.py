"""The Worker base class, and the registry of workers found through entry points.

A worker's name is the name of the ``backy.workers`` entry point that points at it (or
its ``name`` attribute; the two must agree). That name is what a job row stores; a runner
only runs workers it has registered and never imports a path read from the database.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from backy_gevent.cron import CronError, Schedule
from backy_gevent.errors import WorkerError
from backy_gevent.job import INTEGER_MAX, INTEGER_MIN, MAX_RETRY_COUNT, MAX_SECONDS, Job

ENTRY_POINT_GROUP = "backy.workers"


class Worker:
    """Base class of job workers: subclass it and write ``perform(self, job, args)``.

    Class attributes (all optional):

    - ``name``: the worker's name, when no entry point names it;
    - ``max_runtime`` (seconds, default 1.0): an attempt running longer is stopped with
      ``backy_gevent.JobTimeout`` and counts as failed; ``touch(job)`` restarts the clock.
      A greenlet timeout can only interrupt code that yields to the gevent hub (I/O,
      ``gevent.sleep``); pure CPU work that never yields can't be stopped, but its lease
      still runs out, so the job is not lost;
    - ``max_concurrency`` (default None, unlimited): attempts running at once per runner;
    - ``requeue_delay`` (seconds, default 10.0): how long past ``max_runtime`` a job whose
      runner died waits before it runs again;
    - ``queue`` (default "default") and ``priority`` (default 0, lower runs first);
    - ``retry_count`` (default: the configured ``retry_count``): retries after the first
      attempt;
    - ``unique_for`` (seconds, default None): enqueues with a ``unique_key`` also treat a
      job of that key enqueued within that long as a duplicate, finished or not;
    - ``global_concurrency`` (default None): attempts running at once across all runners;
    - ``rate_limit`` (default None): ``(N, seconds)``, at most N attempts started in any
      window of that many seconds, across all runners;
    - ``cron`` (default None): a five-field cron expression such as ``"*/5 * * * *"``;
      the worker is then enqueued (with empty args) once per tick, exactly once across
      all runners, the job's ``run_at`` being its tick; ``cron_timezone`` (default
      ``"UTC"``) is the IANA time zone its wall times are in (see ``backy_gevent.cron``).

    ``retry_delay`` chooses the seconds before retry number ``retry`` (1 for the first
    retry): a method ``retry_delay(self, retry)``, or a ready backoff such as
    ``retry_delay = backy_gevent.backoff.exponential(base=5.0, cap=600.0)``; the default
    is the configured ``retry_delay``.
    A new instance is made for every attempt, so ``self`` holds no state between jobs.
    """

    name: ClassVar[str | None] = None
    max_runtime: ClassVar[float] = 1.0
    max_concurrency: ClassVar[int | None] = None
    requeue_delay: ClassVar[float] = 10.0
    queue: ClassVar[str] = "default"
    priority: ClassVar[int] = 0
    retry_count: ClassVar[int | None] = None
    unique_for: ClassVar[float | None] = None
    global_concurrency: ClassVar[int | None] = None
    rate_limit: ClassVar[tuple[int, float] | None] = None
    cron: ClassVar[str | None] = None
    cron_timezone: ClassVar[str] = "UTC"

    def perform(self, job: Job, args: dict[str, Any]) -> Any:
        """Do the work of one attempt; raise to fail it."""
        raise NotImplementedError(f"{type(self).__name__} must define perform(self, job, args)")


def retry_count_of(worker_class: type[Worker], default: int) -> int:
    """The worker's own ``retry_count``, or the configured ``default`` when it has none."""
    return default if worker_class.retry_count is None else worker_class.retry_count


def check_worker_class(cls: Any, where: str) -> type[Worker]:
    """Check that ``cls`` is a usable Worker subclass; raise WorkerError saying why not."""
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        raise WorkerError(f"{where}: {cls!r} is not a backy_gevent.Worker subclass")
    if cls.perform is Worker.perform:
        raise WorkerError(f"{where}: {cls.__name__} does not define perform(self, job, args)")
    problems = []
    if not (isinstance(cls.max_runtime, (int, float)) and cls.max_runtime > 0):
        problems.append(f"max_runtime={cls.max_runtime!r} (must be > 0)")
    if not (isinstance(cls.requeue_delay, (int, float)) and cls.requeue_delay >= 0):
        problems.append(f"requeue_delay={cls.requeue_delay!r} (must be >= 0)")
    if cls.max_concurrency is not None and not (
        isinstance(cls.max_concurrency, int) and cls.max_concurrency >= 1
    ):
        problems.append(f"max_concurrency={cls.max_concurrency!r} (must be None or >= 1)")
    if cls.unique_for is not None and not (
        isinstance(cls.unique_for, (int, float)) and not isinstance(cls.unique_for, bool)
        and 0 <= cls.unique_for <= MAX_SECONDS
    ):
        problems.append(f"unique_for={cls.unique_for!r} (must be None or seconds from 0"
                        f" to {MAX_SECONDS})")
    if cls.global_concurrency is not None and not (
        _is_int(cls.global_concurrency) and 1 <= cls.global_concurrency <= INTEGER_MAX
    ):
        problems.append(f"global_concurrency={cls.global_concurrency!r} (must be None or"
                        " an integer >= 1)")
    if cls.rate_limit is not None and not _is_rate(cls.rate_limit):
        problems.append(f"rate_limit={cls.rate_limit!r} (must be None or (N, seconds):"
                        f" N an integer >= 1, seconds from 0.001 to {MAX_SECONDS})")
    if cls.retry_count is not None and not (
        isinstance(cls.retry_count, int) and 0 <= cls.retry_count <= MAX_RETRY_COUNT
    ):
        problems.append(
            f"retry_count={cls.retry_count!r} (must be None or from 0 to {MAX_RETRY_COUNT})"
        )
    if not (isinstance(cls.queue, str) and cls.queue):
        problems.append(f"queue={cls.queue!r} (must be a non-empty string)")
    if not (isinstance(cls.priority, int) and INTEGER_MIN <= cls.priority <= INTEGER_MAX):
        problems.append(
            f"priority={cls.priority!r} (must be an integer from {INTEGER_MIN} to {INTEGER_MAX})"
        )
    cron = cron_problem(cls)
    if cron:
        problems.append(cron)
    if problems:
        raise WorkerError(f"{where}: {cls.__name__} has bad settings: " + ", ".join(problems))
    return cls


def schedule_of(worker_class: type[Worker]) -> Schedule | None:
    """The worker's parsed ``cron`` schedule, or None when it has none."""
    if worker_class.cron is None:
        return None
    return Schedule.parse(worker_class.cron, worker_class.cron_timezone)


def cron_problem(cls: type[Worker]) -> str | None:
    """What is wrong with the worker's ``cron`` and ``cron_timezone``, if anything."""
    if cls.cron is None and cls.cron_timezone == "UTC":
        return None
    try:
        if cls.cron is None:
            Schedule.parse("* * * * *", cls.cron_timezone)  # checks the zone alone
        else:
            schedule_of(cls)
    except CronError as exc:
        return f"cron={cls.cron!r} cron_timezone={cls.cron_timezone!r} ({exc})"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rate(value: Any) -> bool:
    """``(N, seconds)``: N starts at most in any window of that many seconds."""
    if not (isinstance(value, tuple) and len(value) == 2):
        return False
    count, seconds = value
    return (
        _is_int(count) and 1 <= count <= INTEGER_MAX
        and isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        and 0.001 <= seconds <= MAX_SECONDS
    )


def is_limited(worker_class: type[Worker]) -> bool:
    """True when the worker's claims must take turns across runners."""
    return worker_class.global_concurrency is not None or worker_class.rate_limit is not None


@dataclasses.dataclass(frozen=True)
class Registration:
    """One registered worker: its name, class and where it came from."""

    name: str
    cls: type[Worker]
    source: str  # "dist-name version" for an entry point, "imports" for the config option

    @property
    def path(self) -> str:
        return f"{self.cls.__module__}:{self.cls.__qualname__}"


class Registry:
    """Workers by name. Build it with ``Registry.discover`` or from classes in tests."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._by_name: dict[str, Registration] = {}
        self._by_class: dict[type[Worker], str] = {}
        for registration in registrations:
            self.add(registration)

    def add(self, registration: Registration) -> None:
        """Register one worker; a second worker under a taken name is an error."""
        taken = self._by_name.get(registration.name)
        if taken is not None and taken.cls is not registration.cls:
            raise WorkerError(
                f"two workers named {registration.name!r}: {taken.path} ({taken.source})"
                f" and {registration.path} ({registration.source})"
            )
        self._by_name[registration.name] = registration
        self._by_class[registration.cls] = registration.name

    @classmethod
    def from_classes(cls, *classes: type[Worker]) -> Registry:
        """A registry of classes that carry their own ``name`` attribute."""
        registry = cls()
        for worker_class in classes:
            check_worker_class(worker_class, worker_class.__qualname__)
            if not worker_class.name:
                raise WorkerError(f"{worker_class.__qualname__} has no name attribute")
            registry.add(Registration(worker_class.name, worker_class, "code"))
        return registry

    @classmethod
    def discover(cls, imports: Iterable[str] = ()) -> Registry:
        """Workers from ``backy.workers`` entry points plus ``module:Class`` import paths."""
        from importlib import metadata  # here: the commands that don't discover skip it

        registry = cls()
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            source = f"{dist.metadata['Name']} {dist.version}" if dist else "unknown"
            where = f"entry point {entry_point.name} = {entry_point.value} ({source})"
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise WorkerError(f"{where}: failed to import: {exc!r}") from exc
            worker_class = check_worker_class(loaded, where)
            if worker_class.name and worker_class.name != entry_point.name:
                raise WorkerError(
                    f"{where}: the class says name = {worker_class.name!r}; the two must agree"
                )
            registry.add(Registration(entry_point.name, worker_class, source))
        for path in imports:
            worker_class = check_worker_class(import_path(path), f"imports {path}")
            if not worker_class.name:
                raise WorkerError(f"imports {path}: a worker imported by path needs a name")
            registry.add(Registration(worker_class.name, worker_class, "imports"))
        return registry

    def restricted(self, names: Iterable[str]) -> Registry:
        """Only the named workers; an unknown name is an error."""
        wanted = list(names)
        if not wanted:
            return self
        return Registry(self.get(name) for name in wanted)

    def get(self, name: str) -> Registration:
        """The registration for a worker name; WorkerError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise WorkerError(f"unknown worker {name!r} (registered: {known})") from None

    def name_of(self, worker: str | type[Worker]) -> str:
        """The registered name of a worker class or name; WorkerError if unknown."""
        if isinstance(worker, str):
            return self.get(worker).name
        name = self._by_class.get(worker)
        if name is not None:
            return name
        if isinstance(worker, type) and issubclass(worker, Worker) and worker.name:
            return worker.name
        raise WorkerError(
            f"{getattr(worker, '__qualname__', worker)!r} is not a registered worker: register"
            " it as a backy.workers entry point or give it a name attribute"
        )

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._by_name.values(), key=lambda r: r.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def import_path(path: str) -> Any:
    """Import ``package.module:Attribute`` (the entry-point notation)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise WorkerError(f"{path!r} is not of the form package.module:Class")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise WorkerError(f"can't import {path!r}: {exc}") from exc
    return target
