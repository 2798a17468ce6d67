"""Snooze, Cancel and results with a real runner: what a job's row and the command line
show afterwards."""

from __future__ import annotations

import json
from typing import Any

from backy_gevent.client import Client
from tests import workers
from tests.acceptance.test_cli import cli
from tests.acceptance.test_runner import FAST, Runner, runs, seconds, state
from tests.conftest import cli_env, query, wait_until


def test_a_snooze_runs_again_later_without_spending_an_attempt(
    runner: Runner, client: Client, db: Any, dsn: str
) -> None:
    runner(*FAST, "--worker", "snooze_once",
           env=cli_env(dsn, BACKY_DELETE_FINISHED_JOBS="false"))
    job = client.enqueue(workers.SnoozeOnce, seconds=0.5)
    wait_until(lambda: state(db, job.id) == "completed", timeout=15, what="the job to finish")
    first, second = runs(db, job.id)
    assert (first["attempt"], second["attempt"]) == (1, 1)
    gap = seconds(second["started_at"] - first["started_at"])
    print(f"\nsnoozed 0.5 s: ran again {gap:.2f}s later")
    assert 0.5 <= gap < 0.5 + 2  # woken when it falls due, not at an idle poll
    [(attempt, errors, result)] = query(
        db, "SELECT attempt, errors, result FROM jobs WHERE id = %s", job.id)
    assert (attempt, errors, result) == (1, [], {"attempt": 1})
    shown = json.loads(cli(dsn, "show", str(job.id)).stdout)
    assert (shown["state"], shown["result"]) == ("completed", {"attempt": 1})


def test_a_cancel_from_inside_ends_the_job_with_its_reason_and_no_retry(
    runner: Runner, client: Client, db: Any
) -> None:
    runner(*FAST, "--worker", "snooze_once")
    job = client.enqueue(workers.SnoozeOnce, seconds=0, cancel="refunded")
    wait_until(lambda: state(db, job.id) == "cancelled", timeout=15, what="the cancel")
    [(errors,)] = query(db, "SELECT errors FROM jobs WHERE id = %s", job.id)
    assert [(e["attempt"], e["error"], e["message"]) for e in errors] == [
        (1, "backy_gevent.job.Cancel", "refunded")]
    assert len(runs(db, job.id)) == 2  # the snooze, then the run that cancelled
