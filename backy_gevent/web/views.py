"""What each page shows, read from the database: the overview, a page of the job list,
one job. Plain data for the templates; every statement is named in queries.sql.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from backy_gevent.client import Client
from backy_gevent.db.queries import Statement
from backy_gevent.job import BIGINT_MAX

STATES = ("available", "running", "failed", "cancelled", "completed")
#: Jobs on a page of the list.
PAGE_SIZE = 50
#: The most rows one page of the list reads to find jobs that match a worker, queue or
#: text filter (README, "Web dashboard": what that costs on a million rows).
EXAMINE = 20_000
#: The overview's last hour, in slots of this many seconds (the newest first).
SLOT_SECONDS, SLOTS = 300, 12


def rows(client: Client, name: Statement, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one named statement, on one of the client's connections."""
    with client.pool.borrow() as conn, conn.cursor() as cur:
        client.queries.execute(cur, name, params)
        return [dict(row) for row in cur.fetchall()] if cur.description else []


# -- the overview ----------------------------------------------------------------------


@dataclasses.dataclass
class QueueRow:
    """One queue on the overview: jobs by state now, and the last hour's outcomes."""

    queue: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    due: int = 0
    last_hour: dict[str, int] = dataclasses.field(default_factory=dict)
    oldest: dict[str, Any] | None = None  # id, worker, run_at, wait
    paused_at: datetime.datetime | None = None

    @property
    def scheduled(self) -> int:
        return self.counts.get("available", 0) - self.due


@dataclasses.dataclass
class Overview:
    """Everything on the overview page."""

    queues: list[QueueRow]
    #: Completed and failed jobs per slot of the last hour, oldest slot first.
    slots: list[dict[str, int]]
    #: About how many rows the table holds (PostgreSQL's estimate).
    table_rows: int
    runners: list[dict[str, Any]]

    def total(self, state: str) -> int:
        return sum(row.counts.get(state, 0) for row in self.queues)

    def last_hour(self, state: str) -> int:
        return sum(row.last_hour.get(state, 0) for row in self.queues)


def overview(client: Client) -> Overview:
    """Read the overview: each statement reads partial indexes or the last hour's rows."""
    queues: dict[str, QueueRow] = {}

    def queue(name: str) -> QueueRow:
        return queues.setdefault(name, QueueRow(name))

    for row in rows(client, "web_queue_counts", {}):
        queue(row["queue"]).counts[row["state"]] = row["jobs"]
        if row["state"] == "available":
            queue(row["queue"]).due = row["due"]
    for row in rows(client, "web_oldest_waiting", {}):
        queue(row["queue"]).oldest = row
    slots = [{"completed": 0, "failed": 0} for _ in range(SLOTS)]
    for row in rows(client, "web_last_hour", {}):
        hour = queue(row["queue"]).last_hour
        hour[row["state"]] = hour.get(row["state"], 0) + row["jobs"]
        slot = min(max(row["slot"], 0), SLOTS - 1)
        if row["state"] in ("completed", "failed"):
            slots[SLOTS - 1 - slot][row["state"]] += row["jobs"]
    for row in client.paused_queues():
        queue(row["queue"]).paused_at = row["paused_at"]
    [size] = rows(client, "web_table_rows", {"table": client.queries.quoted_table}) or [
        {"estimate": 0}]
    return Overview(
        queues=sorted(queues.values(), key=lambda q: q.queue),
        slots=slots,
        table_rows=size["estimate"],
        runners=client.runners(),
    )


# -- the job list ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filters:
    """The list's filters, from the query string; anything unusable is dropped."""

    state: str = ""
    worker: str = ""
    queue: str = ""
    q: str = ""
    before: int | None = None

    @property
    def narrowing(self) -> bool:
        """Filters checked on the rows read (the state is read through an index)."""
        return bool(self.worker or self.queue or self.q)


def filters(state: str, worker: str, queue: str, q: str, before: str) -> Filters:
    """Filters from text; a state that is none and a cursor that is no id are dropped."""
    cursor = int(before) if before.isdigit() and 0 < int(before) <= BIGINT_MAX else None
    return Filters(state if state in STATES else "", worker, queue, q, cursor)


@dataclasses.dataclass
class JobList:
    """One page of the list, and where the next one starts."""

    filters: Filters
    jobs: list[dict[str, Any]]
    #: The next page: jobs older than this id (None: this is the last page).
    next_before: int | None = None
    #: Set when this page read its most rows and found fewer jobs than it shows: how
    #: many it read; the search goes on below ``next_before``.
    examined: int | None = None


def job_list(
    client: Client, chosen: Filters, *, page_size: int = PAGE_SIZE, examine: int = EXAMINE
) -> JobList:
    """A page of jobs, newest first, older than ``chosen.before`` (keyset: never OFFSET)."""
    params = {
        "before": chosen.before or BIGINT_MAX,
        "examine": max(examine, page_size + 1),
        "worker": chosen.worker or None,
        "queue": chosen.queue or None,
        "q": chosen.q.lower() or None,
        "limit": page_size + 1,
        "state": chosen.state,
    }
    found = rows(client, "web_jobs_in_state" if chosen.state else "web_jobs", params)
    if len(found) > page_size:
        return JobList(chosen, found[:page_size], next_before=found[page_size - 1]["id"])
    if not chosen.narrowing:
        return JobList(chosen, found)
    [scan] = rows(
        client, "web_jobs_examined_in_state" if chosen.state else "web_jobs_examined", params
    )
    if scan["examined"] < params["examine"]:
        return JobList(chosen, found)  # read to the oldest job: nothing more matches
    return JobList(chosen, found, next_before=scan["oldest"], examined=scan["examined"])
