"""Writes the outcomes of attempts to the database, in batches, until they are written.

Successes and hand-backs are written many per statement: while one batch is in flight the
next one gathers, and two writes start at least ``WRITE_GAP`` apart (``runner.pacing``),
so the batch size follows the load, with no delay when it is light. Failures are written
one per statement (each carries its own error and delay). A write that fails
because the database is away is retried with backoff; an outcome is never dropped while
the runner lives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from gevent.event import Event

from backy_gevent.db.connections import CONNECTION_ERRORS, ConnectionPool
from backy_gevent.db.queries import Queries, Statement
from backy_gevent.job import Job
from backy_gevent.runner.pacing import WRITE_GAP, Spacing

log = logging.getLogger("backy_gevent.completer")


class Completer:
    """The runner's outcome sink (see ``executor.OutcomeSink``)."""

    def __init__(
        self,
        pool: ConnectionPool,
        queries: Queries,
        runner_id: str,
        *,
        delete_finished_jobs: bool,
        on_retry_scheduled: Callable[[float], None] = lambda delay: None,
    ) -> None:
        self.pool = pool
        self.queries = queries
        self.runner_id = runner_id
        self.delete_finished_jobs = delete_finished_jobs
        self.on_retry_scheduled = on_retry_scheduled
        self._completed: list[tuple[int, int, str | None]] = []  # id, attempt, result
        self._handed_back: list[tuple[int, int]] = []
        #: Outcomes written one statement each: the statement, its parameters, and what
        #: to do with the row it returns (None: the job is no longer this attempt's).
        self._singles: list[tuple[Statement, dict[str, Any], Callable[[Any], None]]] = []
        self._wake = Event()
        self._spacing = Spacing(WRITE_GAP)
        self._all_written = Event()
        self._all_written.set()
        self._stopping = False
        #: Set once ``stop`` was called and every outcome is written: the loop ends.
        self.done = Event()
        self.lost = 0  # outcomes the database no longer wanted (job rescued or cancelled)

    # -- the sink -------------------------------------------------------------------

    def completed(self, job: Job, result: Any = None) -> None:
        """``perform`` returned ``result``: kept, as JSON, when finished rows are kept."""
        kept = None if result is None or self.delete_finished_jobs else _as_json(job, result)
        self._completed.append((job.id, job.attempt, kept))
        self._nudge()

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None:
        def written(row: Any) -> None:
            if row["state"] == "available" and retry_in is not None:
                self.on_retry_scheduled(retry_in)

        self._single("fail", job, {"delay": retry_in or 0.0, "error": json.dumps(error)},
                     written)

    def snoozed(self, job: Job, seconds: float) -> None:
        self._single("snooze", job, {"delay": seconds},
                     lambda row: self.on_retry_scheduled(seconds))

    def cancelled(self, job: Job, error: dict[str, Any]) -> None:
        self._single("give_up", job, {"error": json.dumps(error)}, lambda row: None)

    def _single(
        self, statement: Statement, job: Job, params: dict[str, Any],
        written: Callable[[Any], None],
    ) -> None:
        token = {"id": job.id, "attempt": job.attempt, "runner_id": self.runner_id}
        self._singles.append((statement, {**token, **params}, written))
        self._nudge()

    def handed_back(self, job: Job) -> None:
        self._handed_back.append((job.id, job.attempt))
        self._nudge()

    def touch(self, job: Job, lease: float) -> bool | None:
        """Extend a running job's lease now (called from the job's greenlet).

        True when extended; False when the row is no longer this attempt's (cancelled
        or rescued); None when the database can't be asked (the lease may still hold).
        """
        try:
            with self.pool.borrow() as conn, conn.cursor() as cur:
                self.queries.execute(
                    cur,
                    "touch",
                    {"id": job.id, "attempt": job.attempt, "lease": lease,
                     "runner_id": self.runner_id},
                )
                extended = cur.fetchone()
        except CONNECTION_ERRORS as exc:
            log.warning("could not extend the lease of job %s: %s", job.id, exc)
            return None
        if extended is None:
            return False
        job.expires_at = extended["expires_at"]
        return True

    def _nudge(self) -> None:
        self._all_written.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Outcomes not yet written."""
        return len(self._completed) + len(self._handed_back) + len(self._singles)

    # -- the writer loop ------------------------------------------------------------

    def step(self) -> None:
        """Wait for outcomes and write them; once stopped and all written, set ``done``.

        The runner calls it in a supervised loop (``runner.supervision``) until ``done``.
        """
        self._wake.wait()
        self._spacing.wait_turn()
        self._wake.clear()
        try:
            self.flush()
        except CONNECTION_ERRORS:
            self._wake.set()  # what failed is still pending: try again after the pause
            raise
        if not self.pending:
            self._all_written.set()
            if self._stopping:
                self.done.set()

    def stop(self) -> None:
        """Finish after writing what is pending."""
        self._stopping = True
        self._wake.set()

    def wait_written(self, timeout: float | None) -> bool:
        """Wait until every outcome so far is written; False on timeout."""
        return bool(self._all_written.wait(timeout))

    def flush(self) -> None:
        """Write everything pending now; what fails to write stays pending."""
        # The batches' rows are only counted: plain tuples, not a dict per row.
        with self.pool.borrow() as conn, conn.cursor() as cur:
            counted = conn.tuple_cursor()
            if self._completed:
                completed, self._completed = self._completed, []
                try:
                    count = self._write_completions(counted, completed)
                except BaseException:
                    self._completed[:0] = completed
                    raise
                self._note_lost("completions", len(completed) - count)
            if self._handed_back:
                batch, self._handed_back = self._handed_back, []
                try:
                    count = self._write_batch(counted, "hand_back", batch)
                except BaseException:
                    self._handed_back[:0] = batch
                    raise
                self._note_lost("hand-backs", len(batch) - count)
            while self._singles:
                statement, params, written = self._singles[0]
                self.queries.execute(cur, statement, params)
                row = cur.fetchone()
                self._singles.pop(0)
                if row is None:
                    self._note_lost("outcomes", 1)
                else:
                    written(row)

    def _write_completions(self, cur: Any, completed: list[tuple[int, int, str | None]]) -> int:
        if self.delete_finished_jobs:
            return self._write_batch(cur, "complete_delete", [(i, a) for i, a, _ in completed])
        ids, attempts, results = zip(*completed, strict=True)
        kept = [(job_id, result) for job_id, result in zip(ids, results, strict=True)
                if result is not None]
        self.queries.execute(cur, "complete_keep", {
            "ids": list(ids), "attempts": list(attempts), "runner_id": self.runner_id,
            "result_ids": [job_id for job_id, _ in kept],
            "results": [result for _, result in kept],
        })
        return len(cur.fetchall())

    def _write_batch(self, cur: Any, query: Statement, batch: list[tuple[int, int]]) -> int:
        ids, attempts = zip(*batch, strict=True)
        self.queries.execute(
            cur, query,
            {"ids": list(ids), "attempts": list(attempts), "runner_id": self.runner_id},
        )
        return len(cur.fetchall())

    def _note_lost(self, what: str, count: int) -> None:
        if count > 0:
            self.lost += count
            log.warning(
                "%d %s were not recorded: their jobs were cancelled or rescued meanwhile",
                count,
                what,
            )


def _as_json(job: Job, result: Any) -> str:
    """``result`` as JSON for the row; one that JSON can't hold is kept as its repr."""
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        log.warning("job %s returned %r, which JSON can't hold: its repr is kept", job.id,
                    type(result).__name__)
        return json.dumps(repr(result))
