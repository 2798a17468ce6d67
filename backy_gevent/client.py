"""Enqueue, cancel and retry jobs, and read the queue: the API an application calls.

``Client`` holds a configured connection source and a worker registry. The module-level
functions in ``backy_gevent`` use a default Client built from the configuration on first
use; nothing connects or registers at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from backy_gevent import cron

# encode_args: where it lived before backy_gevent.args, importable from here too.
from backy_gevent.args import decode_args, decode_args_list, encode_args_list, text_problem
from backy_gevent.args import encode_args as encode_args
from backy_gevent.config import Settings, load_settings
from backy_gevent.db import schema
from backy_gevent.db.connections import ConnectionPool, connect
from backy_gevent.db.dsn import configured_dsn
from backy_gevent.db.queries import Queries, Statement
from backy_gevent.errors import BadJobArgs, BadOption
from backy_gevent.job import (
    AVAILABLE,
    BIGINT_MAX,
    BIGINT_MIN,
    CANCELLED,
    COMPLETED,
    FAILED,
    INTEGER_MAX,
    INTEGER_MIN,
    MAX_NAME_LENGTH,
    MAX_SECONDS,
    Job,
)
from backy_gevent.worker import Registry, Worker, retry_count_of

if TYPE_CHECKING:  # pluggy is imported by whoever builds the hooks, not by every client
    from backy_gevent.hooks import Hooks

#: Option names of ``enqueue``; a job arg of the same name must be passed in ``args``.
ENQUEUE_OPTIONS = (
    "run_at", "delay", "priority", "queue", "unique_key", "unique_for", "connection",
)
#: After an enqueue on the client's own connection found no runner following a stream of
#: its worker and queue (``insert_job_now_quiet`` notified), the next ones notify without
#: asking for this long (``insert_job_now``: the question costs a single enqueue about 8 %
#: of its rate). Notifying is never wrong: it only wakes a runner that may not need it.
QUIET_CHECK_EVERY = 0.1
#: How many workers' default options a client keeps made (``Client._defaults_of``); past
#: it, it forgets them all and starts again.
KNOWN_WORKERS = 256
#: Tries at writing a job whose unique_key holder finished while it was read.
_UNIQUE_ROUNDS = 3


def _seconds_in_range(value: Any) -> bool:
    """A number of seconds from 0 to MAX_SECONDS (NaN and infinities are not)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_SECONDS
    )


def check_text_option(name: str, value: Any) -> None:
    """``BadOption`` when ``value``, an indexed string option (``queue``, ``unique_key``),
    is one PostgreSQL can't store or index."""
    if not isinstance(value, str):
        return
    if len(value) > MAX_NAME_LENGTH:
        # Written, such a job could be neither cancelled nor failed: its index entry in
        # another state would not fit.
        raise BadOption(
            f"{name} must be at most {MAX_NAME_LENGTH} characters, not {len(value)}"
        )
    problem = text_problem(value)
    if problem:
        raise BadOption(f"{name} {value!r} can't be stored: {problem}")


def check_enqueue_options(
    *,
    run_at: datetime.datetime | None,
    delay: float | None,
    queue: str | None,
    priority: int | None,
) -> None:
    """``BadOption`` (a ValueError) saying what is wrong with ``enqueue``'s options, if
    anything is."""
    if run_at is not None and delay is not None:
        raise BadOption("give run_at or delay, not both")
    if run_at is not None and run_at.tzinfo is None:
        raise BadOption("run_at must be timezone-aware (for example datetime.UTC)")
    if delay is not None and not _seconds_in_range(delay):
        raise BadOption(
            f"delay must be a number of seconds from 0 to {MAX_SECONDS}, not {delay!r}"
        )
    if queue is not None and not (isinstance(queue, str) and queue):
        raise BadOption(f"queue must be a non-empty string, not {queue!r}")
    if priority is not None and (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not INTEGER_MIN <= priority <= INTEGER_MAX
    ):
        raise BadOption(
            f"priority must be an integer from {INTEGER_MIN} to {INTEGER_MAX}, not {priority!r}"
        )
    check_text_option("queue", queue)


class Client:
    """Talks to one jobs table: enqueue, cancel, retry, inspect.

    ``Client(dsn=..., table_name=..., retry_count=...)`` takes any option of
    ``backy_gevent.config.Settings`` as a keyword; options not given come from the
    environment (``BACKY_*``) and the defaults. ``registry`` defaults to the workers
    registered through entry points (loaded on first use).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        hooks: Hooks | None = None,
        pool: ConnectionPool | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = load_settings(flags=options)
        elif options:
            settings = settings.replace(**options)
        self.settings = settings
        self.queries = Queries(settings.table_name)
        self.hooks = hooks
        self._registry = registry
        self._pool = pool
        #: (worker, queue) -> time.monotonic() until which its due-now enqueues notify
        #: without asking whether a runner follows them (``QUIET_CHECK_EVERY``).
        self._loud_until: dict[tuple[str, str], float] = {}
        #: What ``_defaults_of`` made, by the worker given to ``enqueue``.
        self._defaults: dict[Any, tuple[str, dict[str, Any], type[Worker], tuple[Any, ...]]] = {}

    @property
    def registry(self) -> Registry:
        """The workers this client knows, discovered from entry points on first use."""
        if self._registry is None:
            self._registry = Registry.discover(self.settings.imports)
        return self._registry

    @property
    def pool(self) -> ConnectionPool:
        """The client's own connections, opened on first use."""
        if self._pool is None:
            self._pool = ConnectionPool(
                self._dsn(), size=4, prepare=self.settings.prepare_statements,
                timeout=self.settings.database_timeout,
            )
        return self._pool

    def _dsn(self) -> str:
        dsn = configured_dsn(self.settings.dsn, os.environ)
        if dsn is None:
            raise RuntimeError(
                "no database configured: pass dsn=..., set BACKY_DSN or libpq's PG*"
                " variables, or run through the backy-gevent command, which starts"
                " the embedded server"
            )
        return dsn

    def close(self) -> None:
        """Close the client's connections (not a caller's)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running statements -------------------------------------------------------------

    def _fetch(
        self, name: Statement, params: Mapping[str, Any], connection: Any = None
    ) -> list[Any]:
        """Run statement ``name`` on the caller's connection, or a pooled autocommit one."""
        if connection is not None:
            with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                self.queries.execute(cur, name, params)
                return cur.fetchall() if cur.description else []
        with self.pool.borrow() as conn, conn.cursor() as cur:
            self.queries.execute(cur, name, params)
            return cur.fetchall() if cur.description else []

    def setup(self) -> list[schema.Migration]:
        """Apply missing migrations (idempotent); return those applied.

        On a connection of its own without ``database_timeout``: building an index on a
        big table may take longer than any statement of the queue.
        """
        with contextlib.closing(self._long_connection()) as conn:
            try:
                return schema.migrate(conn, self.settings.table_name)
            finally:
                conn.rollback()

    def _long_connection(self) -> Any:
        """A connection for statements that may take long (migrations, pruning)."""
        return connect(self._dsn(), autocommit=False, application_name="backy-gevent")

    # -- enqueueing ---------------------------------------------------------------------

    def worker_class(self, name: str) -> type[Worker]:
        """The class registered under ``name``."""
        return self.registry.get(name).cls

    def enqueue(
        self,
        worker: str | type[Worker],
        args: Mapping[str, Any] | None = None,
        *,
        run_at: datetime.datetime | None = None,
        delay: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> Job:
        """Write one job and return it.

        ``args`` and ``kwargs`` merge into the job's args. With ``connection`` (the
        caller's psycopg2 connection) the job commits or rolls back with the caller's
        transaction. ``delay`` (seconds) counts from this call. With ``unique_key``,
        while a job holding that key waits or runs, that job is returned (its
        ``inserted`` false) and nothing is written; with ``unique_for`` (seconds; default
        the worker's), so is the newest job of that key enqueued within that long,
        finished or not (while its row is kept: see the README). Args that jsonb
        can't hold raise ``BadJobArgs`` (a TypeError) naming the key, options out of
        range ``BadOption`` (a ValueError), and an unknown worker ``WorkerError``;
        nothing is written in any case.
        """
        if args is not None and type(args) is not dict and not isinstance(args, Mapping):
            raise BadJobArgs(f"job args must be a dict, not {type(args).__name__}")
        merged = {**args, **kwargs} if args else kwargs
        if unique_key is not None:
            return self.enqueue_many(
                worker, [merged], run_at=run_at, delay=delay, priority=priority,
                queue=queue, unique_keys=[unique_key], unique_for=unique_for,
                connection=connection,
            )[0]
        # The commonest call has a path of its own: no list to build, encode and take
        # apart (a third of a single enqueue's client instructions went to that).
        if (run_at is None and delay is None and priority is None and queue is None
                and unique_for is None):
            name, per_job = self._defaults_of(worker)
        else:
            name, worker_class = self._worker_of(worker)
            per_job, _ = self._job_options(worker_class, run_at, delay, priority, queue,
                                           unique_for)
        job = self._insert_one(name, encode_args(merged), None, per_job, connection)
        if self.hooks is not None:
            self.hooks.call("backy_job_enqueued", jobs=[job])
        return job

    def enqueue_many(
        self,
        worker: str | type[Worker],
        list_of_args: Iterable[Mapping[str, Any]],
        *,
        run_at: datetime.datetime | None = None,
        delay: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        unique_keys: Sequence[str | None] | None = None,
        unique_for: float | None = None,
        connection: Any = None,
    ) -> list[Job]:
        """Write many jobs of one worker in one round trip; return them in input order.

        ``unique_keys``, when given, holds one key (or None) per job; a job whose key was
        held (by another job, or an earlier one of the same list) comes back as the job
        that holds it, with ``inserted`` false.
        """
        name, worker_class = self._worker_of(worker)
        count, args_text = encode_args_list(list_of_args)
        if not count:
            return []
        if unique_keys is not None and len(unique_keys) != count:
            raise BadOption("unique_keys must hold one key (or None) per job")
        per_job, window = self._job_options(worker_class, run_at, delay, priority, queue,
                                            unique_for)
        for key in unique_keys or ():
            check_text_option("unique_key", key)
        # Each Job's args as the row holds them, read from the JSON sent, not back from it.
        decoded = decode_args_list(args_text)
        if unique_keys is None or not any(key is not None for key in unique_keys):
            # Every job is written, in input order: one statement, nothing more to read.
            if count == 1:
                jobs = [self._insert_one(name, args_text[1:-1], decoded[0], per_job,
                                         connection)]
            else:
                jobs = self._insert(name, args_text, decoded, [None] * count, per_job, 0.0,
                                    connection)
            if self.hooks is not None:
                self.hooks.call("backy_job_enqueued", jobs=jobs)
            return jobs
        # The job holding a key may finish (and its row go) between the insert that
        # found it and the read of it; those jobs are written again, a few times at most.
        written: list[Job] = []
        holders: dict[str, Job] = {}
        pending = list(range(count))
        for _ in range(_UNIQUE_ROUNDS):
            if len(pending) < count:
                args_text = json.dumps([decoded[i] for i in pending])
            rows = self._insert(name, args_text, [decoded[i] for i in pending],
                                [unique_keys[i] for i in pending], per_job, window, connection)
            written.extend(rows)
            holders.update((job.unique_key, job) for job in rows if job.unique_key is not None)
            missing = sorted({key for i in pending if (key := unique_keys[i]) is not None}
                             - set(holders))
            if missing:
                params = {"unique_keys": missing, "unique_for": window}
                for row in self._fetch("get_unique", params, connection):
                    holders[row["unique_key"]] = dataclasses.replace(Job.from_row(row),
                                                                     inserted=False)
            pending = [i for i in pending if unique_keys[i] is not None
                       and unique_keys[i] not in holders]
            if not pending:
                break
        else:
            keys = [unique_keys[i] for i in pending]
            raise RuntimeError(f"unique keys {keys!r} changed hands on every try;"
                               " nothing more was written")
        if written and self.hooks is not None:
            self.hooks.call("backy_job_enqueued", jobs=written)
        return _in_input_order(written, unique_keys, holders)

    def _defaults_of(self, worker: str | type[Worker]) -> tuple[str, dict[str, Any]]:
        """``_worker_of``'s name and ``_job_options``' options for an enqueue of
        ``worker`` that gives no option of its own: the worker's defaults. Made once per
        worker and kept while the class's defaults stay what they were: made again for
        every call, they cost an idle client 0.015 ms before its INSERT left, a sixth of
        its Python there (timed after a 20 ms sleep, as at 50 enqueues a second)."""
        kept = self._defaults.get(worker)
        if kept is not None:
            name, per_job, worker_class, seen = kept
            if seen == _defaults_seen(worker_class, self.settings):
                return name, per_job
        name, worker_class = self._worker_of(worker)
        per_job, _ = self._job_options(worker_class, None, None, None, None, None)
        if len(self._defaults) >= KNOWN_WORKERS:
            self._defaults.clear()
        self._defaults[worker] = (name, per_job, worker_class,
                                  _defaults_seen(worker_class, self.settings))
        return name, per_job

    def _worker_of(self, worker: str | type[Worker]) -> tuple[str, type[Worker]]:
        """The registered name and the class of ``worker`` (a name or a class)."""
        name = self.registry.name_of(worker)
        # A class with a name attribute may be enqueued without an entry point here (the
        # runner that runs it must still register it).
        return name, worker if isinstance(worker, type) else self.registry.get(name).cls

    def _job_options(
        self, worker_class: type[Worker], run_at: datetime.datetime | None,
        delay: float | None, priority: int | None, queue: str | None,
        unique_for: float | None,
    ) -> tuple[dict[str, Any], float]:
        """The options every job of one enqueue call shares, checked (``BadOption``), with
        the worker's defaults filled in; and the ``unique_for`` window in seconds."""
        check_enqueue_options(run_at=run_at, delay=delay, queue=queue, priority=priority)
        if unique_for is None:
            unique_for = worker_class.unique_for
        if unique_for is not None and not _seconds_in_range(unique_for):
            raise BadOption(f"unique_for must be a number of seconds from 0 to {MAX_SECONDS},"
                            f" not {unique_for!r}")
        per_job = {
            "queue": queue or worker_class.queue,
            "priority": worker_class.priority if priority is None else priority,
            "max_attempts": retry_count_of(worker_class, self.settings.retry_count) + 1,
            "run_at": run_at,
            "delay": float(delay or 0),
        }
        return per_job, float(unique_for or 0)

    def _insert_one(
        self, name: str, args_text: str, args: dict[str, Any] | None,
        per_job: Mapping[str, Any], connection: Any,
    ) -> Job:
        """Write one job (``args_text``: its ``args`` as one JSON object) with no unique
        key; the Job written. A job due now (no ``run_at``, no delay) is written by the
        cheaper ``insert_job_now``, whose run_at is its enqueued_at. ``args`` None: read
        from ``args_text`` once the INSERT has been answered, not before it is sent
        (0.012 ms of an idle client's enqueue-to-perform latency)."""
        queue = per_job["queue"]
        params = {
            "worker": name,
            "args": args_text,
            "queue": queue,
            "priority": per_job["priority"],
            "max_attempts": per_job["max_attempts"],
        }
        if per_job["run_at"] is None and not per_job["delay"]:
            params["payload"] = _due_now_payload(name, queue)
            job_id, enqueued_at = self._insert_due_now(params, connection)
            run_at = enqueued_at
        else:
            params.update(run_at=per_job["run_at"], delay=per_job["delay"])
            [(job_id, run_at, enqueued_at, _)] = self._fetch_tuples("insert_job", params,
                                                                    connection)
        if args is None:
            args = decode_args(args_text)
        return Job(id=job_id, worker=name, args=args, queue=queue,
                   priority=params["priority"], state=AVAILABLE, attempt=0,
                   max_attempts=params["max_attempts"], run_at=run_at,
                   enqueued_at=enqueued_at)

    def _insert_due_now(self, params: dict[str, Any], connection: Any) -> tuple[int, Any]:
        """Write one job due now; its id and enqueued_at. Quiet (no NOTIFY while a
        runner follows a stream of its worker and queue) only on the client's own
        autocommit connection: what the statement decides must still hold at its
        commit, and a caller's transaction may commit much later. Once a quiet enqueue
        found no such runner, the next ones of that worker and queue notify without
        asking, for ``QUIET_CHECK_EVERY``."""
        key = (params["worker"], params["queue"])
        if connection is not None or time.monotonic() < self._loud_until.get(key, 0.0):
            [(job_id, enqueued_at, _)] = self._fetch_tuples("insert_job_now", params, connection)
            return job_id, enqueued_at
        [(job_id, enqueued_at, quiet, _)] = self._fetch_tuples("insert_job_now_quiet", params)
        if not quiet:
            self._loud_until[key] = time.monotonic() + QUIET_CHECK_EVERY
        return job_id, enqueued_at

    def _insert(
        self,
        name: str,
        args_text: str,
        args: list[dict[str, Any]],
        unique_keys: list[str | None],
        per_job: dict[str, Any],
        unique_for: float,
        connection: Any,
    ) -> list[Job]:
        """Write these jobs (``args_text``: their ``args`` as one JSON array) in one
        statement; the Jobs written, in id order.

        The statement returns only what the server decides (id, run_at, enqueued_at and,
        with keys, the key of each row written); the rest of each Job is what was sent,
        and the column defaults of a new row.
        """
        params = {
            "worker": name,
            "args": args_text,
            "queue": per_job["queue"],
            "priority": per_job["priority"],
            "max_attempts": per_job["max_attempts"],
            "run_at": per_job["run_at"],
            "delay": per_job["delay"],
        }
        keyed = any(key is not None for key in unique_keys)
        statement: Statement = "insert_jobs"
        if keyed:
            statement = "insert_unique_jobs"
            params.update(unique_keys=unique_keys, unique_for=unique_for)
        rows = self._fetch_tuples(statement, params, connection)
        if keyed:
            # Rows written, in input order (ids are drawn in that order); each row's key
            # (or None) tells which input it is, the keyless ones coming in order.
            by_key: dict[str, int] = {}
            for i, key in enumerate(unique_keys):
                if key is not None:
                    by_key.setdefault(key, i)  # a key given twice: the first is written
            keyless = (i for i, key in enumerate(unique_keys) if key is None)
            inputs = [next(keyless) if row[3] is None else by_key[row[3]] for row in rows]
        else:
            inputs = list(range(len(rows)))
        queue, priority = per_job["queue"], per_job["priority"]
        max_attempts = per_job["max_attempts"]
        return [
            Job(id=row[0], worker=name, args=args[i], queue=queue, priority=priority,
                state=AVAILABLE, attempt=0, max_attempts=max_attempts, run_at=row[1],
                enqueued_at=row[2], unique_key=unique_keys[i])
            for row, i in zip(rows, inputs, strict=True)
        ]

    def _fetch_tuples(
        self, name: Statement, params: Mapping[str, Any], connection: Any = None
    ) -> list[tuple[Any, ...]]:
        """``_fetch`` with rows as plain tuples: no dict built per row."""
        if connection is not None:
            with connection.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
                self.queries.execute(cur, name, params)
                return cur.fetchall()
        with self.pool.borrow() as conn:
            cur = conn.tuple_cursor()
            self.queries.execute(cur, name, params)
            return cur.fetchall()

    # -- managing jobs ------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None when there is no such row."""
        if not _may_be_an_id(job_id):
            return None
        rows = self._fetch("get_job", {"id": job_id})
        return Job.from_row(rows[0]) if rows else None

    def cancel(self, job_id: int) -> Job | None:
        """Cancel a waiting or running job; None when it is not waiting or running.

        The runner of a running job is told at commit (NOTIFY) and stops the attempt at
        once, as it would at ``max_runtime``; nothing of it is recorded.
        """
        if not _may_be_an_id(job_id):
            return None
        rows = self._fetch("cancel", {"id": job_id})
        return Job.from_row(rows[0]) if rows else None

    def retry(self, job_id: int) -> Job | None:
        """Make a failed or cancelled job available now, with its history and a fresh
        set of retries; None when it is not failed or cancelled.

        Raises ValueError when another job holding the same ``unique_key`` is waiting
        or running (the key allows one at a time).
        """
        job = self.get_job(job_id)
        if job is None or job.state not in (FAILED, CANCELLED):
            return None
        retry_count = self.settings.retry_count
        if job.worker in self.registry:
            retry_count = retry_count_of(self.worker_class(job.worker), retry_count)
        try:
            rows = self._fetch(
                "retry",
                {"id": job_id, "attempts": retry_count + 1},
            )
        except psycopg2.errors.UniqueViolation:
            raise ValueError(
                f"job {job_id} can't run again while another job with its unique_key"
                f" {job.unique_key!r} is waiting or running"
            ) from None
        return Job.from_row(rows[0]) if rows else None

    def retry_failed(
        self, workers: Sequence[str] = (), queues: Sequence[str] = ()
    ) -> list[int]:
        """Run every failed job again (of these workers and queues; all when empty), each
        with its history and a fresh set of retries. Returns the ids retried.

        A job whose ``unique_key`` is held by a waiting or running job stays failed.
        """
        known = [
            (r.name, retry_count_of(r.cls, self.settings.retry_count) + 1)
            for r in self.registry
        ]
        rows = self._fetch(
            "retry_failed",
            {
                "workers": list(workers),
                "queues": list(queues),
                "known_workers": [name for name, _ in known],
                "known_attempts": [attempts for _, attempts in known],
                "default_attempts": self.settings.retry_count + 1,
            },
        )
        return [row["id"] for row in rows]

    def prune(self, older_than: float = 0.0, states: Sequence[str] = (COMPLETED,)) -> int:
        """Delete finished rows in ``states`` older than ``older_than`` seconds (from 0 to
        ``MAX_SECONDS``; anything else raises ``BadOption``, a ValueError)."""
        _check_age(older_than)
        with contextlib.closing(self._long_connection()) as conn, conn, conn.cursor() as cur:
            cur.execute(
                self.queries.composed("prune"), {"states": list(states), "older_than": older_than}
            )
            return int(cur.rowcount)

    def prunable(
        self, older_than: float = 0.0, states: Sequence[str] = (COMPLETED,)
    ) -> dict[str, int]:
        """What ``prune`` would delete now, by state; deletes nothing."""
        _check_age(older_than)
        params = {"states": list(states), "older_than": older_than}
        return {row["state"]: row["jobs"] for row in self._fetch("count_prunable", params)}

    def delete(self, job_ids: Sequence[int]) -> list[int]:
        """Delete these jobs, unless running (cancel a running job first); returns the ids
        deleted. Their history goes with them."""
        ids = [job_id for job_id in job_ids if _may_be_an_id(job_id)]
        if not ids:
            return []
        return sorted(row["id"] for row in self._fetch("delete_jobs", {"ids": ids}))

    # -- queues -------------------------------------------------------------------------

    def pause(self, queue: str) -> None:
        """Pause ``queue``: runners stop claiming its jobs, without a restart (running
        jobs finish). Runners are told at commit (NOTIFY ``pause:<queue>`` on the table's
        channel). Pausing a paused queue changes nothing; a queue with no jobs yet may be
        paused. A queue name that can't be stored raises ``BadOption``."""
        self._queue_command("pause_queue", queue)

    def resume(self, queue: str) -> bool:
        """Resume a paused ``queue`` (NOTIFY ``resume:<queue>`` at commit); False when it
        was not paused."""
        return bool(self._queue_command("resume_queue", queue))

    def paused_queues(self) -> list[dict[str, Any]]:
        """The paused queues: ``queue``, ``paused_at`` and ``paused_seconds`` each."""
        return [dict(row) for row in self._fetch("paused_queues", {})]

    def _queue_command(self, name: Statement, queue: str) -> list[Any]:
        if not (isinstance(queue, str) and queue):
            raise BadOption(f"queue must be a non-empty string, not {queue!r}")
        check_text_option("queue", queue)
        return self._fetch(name, {"queue": queue, "table": self.queries.quoted_table})

    def runners(self) -> list[dict[str, Any]]:
        """Runners that beat within the last hour, with how long each has been silent."""
        return [dict(row) for row in self._fetch("list_runners", {})]

    def stats(self) -> list[dict[str, Any]]:
        """Job counts by worker, queue and state, with the oldest due job's wait."""
        return [dict(row) for row in self._fetch("stats", {})]

    # -- periodic jobs ------------------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        """Every periodic job's schedule, by worker: ``worker``, ``expression``,
        ``timezone``, ``queue``, ``last_tick`` (the last tick enqueued; before the first,
        when the schedule was first written), ``next_run`` (an aware UTC datetime; in the
        past when a tick is due and waits for the leader; None when the stored expression
        can't be parsed) and ``active`` (whether a runner that beat within a minute has
        the worker: only then are its ticks enqueued)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        schedules = []
        for row in self._fetch("cron_schedules", {"alive": cron.ALIVE_SECONDS}):
            try:
                schedule = cron.Schedule.parse(row["expression"], row["timezone"])
                upcoming: datetime.datetime | None = cron.next_run(
                    schedule, row["last_tick"], now)
            except cron.CronError:
                upcoming = None
            schedules.append({
                "worker": row["worker"], "expression": row["expression"],
                "timezone": row["timezone"], "queue": row["queue"],
                "last_tick": row["last_tick"], "next_run": upcoming, "active": row["served"],
            })
        return schedules


def _check_age(older_than: Any) -> None:
    if not _seconds_in_range(older_than):
        raise BadOption(
            f"older_than must be a number of seconds from 0 to {MAX_SECONDS},"
            f" not {older_than!r}"
        )


def _may_be_an_id(job_id: Any) -> bool:
    """False for an integer no bigint id can be (the query would fail, not find nothing)."""
    return not isinstance(job_id, int) or BIGINT_MIN <= job_id <= BIGINT_MAX


class DefaultClient:
    """Holds the client that the module-level functions use, built on first use.

    The one instance lives in ``backy_gevent`` itself; ``configure`` replaces its client.
    """

    def __init__(self) -> None:
        self._client: Client | None = None
        self._options: dict[str, Any] = {}

    def configure(self, **options: Any) -> None:
        """Set options (as ``Client`` takes them) for the default client; rebuild it."""
        if self._client is not None:
            self._client.close()
        self._client = None
        self._options = options

    def get(self) -> Client:
        if self._client is None:
            self._client = Client(**self._options)
        return self._client


def _defaults_seen(worker_class: type[Worker], settings: Settings) -> tuple[Any, ...]:
    """What a worker's default options for its jobs are made of (``_defaults_of``)."""
    return (worker_class.queue, worker_class.priority, worker_class.retry_count,
            worker_class.unique_for, settings.retry_count)


@functools.lru_cache(maxsize=256)
def _due_now_payload(worker: str, queue: str) -> str:
    """The notification of a job of ``worker`` in ``queue`` due now, as the listener
    reads it (``runner.listener``): what insert_job's says, built here once."""
    return json.dumps({"worker": worker, "queue": queue, "in": 0})


def _in_input_order(
    written: list[Job], unique_keys: Sequence[str | None], holders: dict[str, Job]
) -> list[Job]:
    """One job per input: the one written, or the job that holds its ``unique_key``
    (``inserted`` false; a key given twice in one list: the second is the first's)."""
    # Rows come back in id order, which is input order for the keyless ones.
    keyless = iter(job for job in written if job.unique_key is None)
    result: list[Job] = []
    seen: set[str] = set()
    for key in unique_keys:
        if key is None:
            result.append(next(keyless))
            continue
        job = holders[key]
        result.append(dataclasses.replace(job, inserted=False) if key in seen else job)
        seen.add(key)
    return result
