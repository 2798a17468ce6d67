"""Retention: ``prune_completed_after`` and ``prune_failed_after`` delete finished rows
past their age, oldest first, on the runner that leads maintenance only, and nothing
else; without them every row is kept."""

from __future__ import annotations

import time
from typing import Any

from backy_gevent.client import Client
from backy_gevent.runner.maintenance import PRUNE_BATCH
from tests.acceptance.scraping import free_port, scrape, value
from tests.acceptance.test_runner import FAST, Runner
from tests.conftest import query, wait_until

OLD_COMPLETED = PRUNE_BATCH * 2 + 500  # more than one batch, more than one round's worth


def finished_rows(db: Any, state: str, age: str, count: int, tag: str) -> None:
    """``count`` rows of ``state`` that finished ``age`` ago, tagged in their args."""
    query(db, "INSERT INTO jobs (worker, state, attempt, finished_at, args)"
              " SELECT 'record', %s, 1, now() - %s::interval, jsonb_build_object('tag', %s)"
              " FROM generate_series(1, %s)", state, age, tag, count)


def tags_left(db: Any) -> dict[str, int]:
    return dict(query(db, "SELECT args->>'tag', count(*) FROM jobs GROUP BY 1"))


def test_the_leader_prunes_each_state_past_its_age_and_nothing_else(
    runner: Runner, client: Client, db: Any
) -> None:
    finished_rows(db, "completed", "2 minutes", OLD_COMPLETED, "old completed")
    finished_rows(db, "completed", "10 seconds", 3, "fresh completed")
    finished_rows(db, "failed", "2 hours", 4, "old failed")
    finished_rows(db, "cancelled", "2 hours", 2, "old cancelled")
    finished_rows(db, "failed", "30 minutes", 5, "fresh failed")
    query(db, "INSERT INTO jobs (worker, run_at, args) VALUES"
              " ('record', now() + interval '1 day', '{\"tag\": \"waiting\"}')")
    options = ("--prune-completed-after", "60", "--prune-failed-after", "3600",
               "--delete-finished-jobs", "false", "--worker", "record")
    ports = [free_port(), free_port()]
    for port in ports:
        runner(*FAST, *options, "--metrics-port", str(port))
    wait_until(lambda: "old completed" not in tags_left(db), timeout=20,
               what="the old completed rows to be pruned")
    wait_until(lambda: "old failed" not in tags_left(db), timeout=5, what="the old failed")
    assert tags_left(db) == {"fresh completed": 3, "fresh failed": 5, "waiting": 1}
    # One runner leads and prunes; the other deleted nothing.
    counted = [
        {state: value(scrape(port), "backy_jobs_pruned_total", state=state) or 0.0
         for state in ("completed", "failed", "cancelled")}
        for port in ports
    ]
    print(f"\npruned per runner: {counted}")
    assert sorted(counted, key=lambda c: c["completed"]) == [
        {"completed": 0.0, "failed": 0.0, "cancelled": 0.0},
        {"completed": OLD_COMPLETED, "failed": 4.0, "cancelled": 2.0},
    ]


def test_without_retention_options_every_finished_row_is_kept(
    runner: Runner, client: Client, db: Any
) -> None:
    finished_rows(db, "completed", "400 days", 5, "ancient")
    finished_rows(db, "failed", "400 days", 5, "ancient failed")
    runner(*FAST, "--delete-finished-jobs", "false", "--worker", "record")
    wait_until(lambda: query(db, "SELECT count(*) FROM jobs_leader")[0][0] == 1,
               timeout=10, what="a leader")
    time.sleep(1.5)  # the leader's rounds (each would prune, with retention) go on
    assert tags_left(db) == {"ancient": 5, "ancient failed": 5}
