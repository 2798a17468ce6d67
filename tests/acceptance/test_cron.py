"""Periodic jobs with real runners: three ``backy-gevent run`` processes enqueue each tick
exactly once, also when the leader is killed with SIGKILL and another takes over, and
``backy-gevent cron`` lists the schedules.

Ticks come once a minute, so the test moves the schedules' last tick back instead of
waiting for the clock: a schedule whose last tick is behind is caught up at once (its
latest missed tick, once). One real minute boundary is crossed at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
from typing import Any

from backy_gevent.client import Client
from backy_gevent.runner.maintenance import BEAT_SECONDS, LEADER_LEASE_SECONDS
from tests.acceptance.test_runner import FAST, Runner, db_now
from tests.conftest import RunnerProcess, cli_env, query, run_cli, wait_until

CRON_WORKERS = ("--import", "tests.workers:EveryMinute", "--import", "tests.workers:Hourly")
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
HANDOVER = LEADER_LEASE_SECONDS + BEAT_SECONDS


def jobs_of(db: Any, worker: str) -> list[tuple[int, dt.datetime, str]]:
    return query(db, "SELECT id, run_at, state FROM jobs WHERE worker = %s ORDER BY run_at",
                 worker)


def leader_pid(db: Any) -> int | None:
    rows = query(db, "SELECT runner_id FROM jobs_leader WHERE expires_at > now()")
    return int(rows[0][0].split(":")[1]) if rows else None


def check_once_per_tick(
    db: Any, worker: str, first: dt.datetime, step: dt.timedelta = MINUTE
) -> list[dt.datetime]:
    """Every job of ``worker``: one per tick, consecutive ticks ``step`` apart from
    ``first`` (or the tick after, if the clock turned while the test set up), each run
    once and done."""
    jobs = jobs_of(db, worker)
    ticks = [run_at for _, run_at, _ in jobs]
    assert len(set(ticks)) == len(ticks), ticks
    assert ticks[0] in (first, first + step), (ticks, first)
    assert ticks == [ticks[0] + n * step for n in range(len(ticks))], ticks
    for job_id, _, job_state in jobs:
        assert job_state == "completed", (job_id, job_state)
        attempts = query(db, "SELECT attempt FROM runs WHERE job_id = %s", job_id)
        assert attempts == [(1,)], (job_id, attempts)
    return ticks


def test_each_tick_is_enqueued_once_by_three_runners_and_after_the_leader_dies(
    runner: Runner, client: Client, db: Any, dsn: str
) -> None:
    env = cli_env(dsn, BACKY_DELETE_FINISHED_JOBS="false")
    now = db_now(db)
    first = now.replace(second=0, microsecond=0)
    # every_minute's last tick one minute back: its latest tick is due at once.
    query(db, "INSERT INTO jobs_cron (worker, expression, last_tick)"
              " VALUES ('every_minute', '* * * * *', %s)", first - MINUTE)
    runners: list[RunnerProcess] = [runner(*FAST, *CRON_WORKERS, env=env) for _ in range(3)]
    wait_until(lambda: any(s == "completed" for _, _, s in jobs_of(db, "every_minute")),
               timeout=15, what="the caught-up tick to run")

    # Kill the leader, then make the hourly schedule's latest tick due while nobody
    # leads: the runner that takes over enqueues it, once.
    pid = wait_until(lambda: leader_pid(db), timeout=10, what="a leader")
    killed = next(p for p in runners if p.process.pid == pid)
    os.kill(pid, signal.SIGKILL)
    killed_at = db_now(db)
    killed.wait(10)
    # (Unless the clock crossed the hour since the runners started: then that tick was
    # enqueued already, and must not be again.)
    query(db, "UPDATE jobs_cron SET last_tick = date_trunc('hour', now()) - interval '1 hour'"
              " WHERE worker = 'hourly' AND NOT EXISTS (SELECT FROM jobs WHERE worker ="
              " 'hourly' AND run_at = date_trunc('hour', now()))")
    hour = wait_until(lambda: [run_at for _, run_at, s in jobs_of(db, "hourly")
                               if s == "completed"],
                      timeout=HANDOVER + 10, what="another runner to enqueue the tick")[0]
    assert (hour.minute, hour.second) == (0, 0) and hour <= db_now(db)
    assert leader_pid(db) not in (None, pid)
    enqueued_at = query(db, "SELECT enqueued_at FROM jobs WHERE worker = 'hourly'")[0][0]
    handover = (enqueued_at - killed_at).total_seconds()
    print(f"\nthe tick due while nobody led was enqueued {handover:.2f}s after the leader"
          f" was killed (bound {HANDOVER:g}s + 1s)")
    assert handover < HANDOVER + 1

    # The killed runner comes back; the next real tick is enqueued once by the three.
    runners.append(runner(*FAST, *CRON_WORKERS, env=env))
    before = {run_at for _, run_at, _ in jobs_of(db, "every_minute")}
    wait_until(lambda: any(run_at not in before and s == "completed"
                           for _, run_at, s in jobs_of(db, "every_minute")),
               timeout=75, interval=0.2, what="the next minute's tick to run")

    ticks = check_once_per_tick(db, "every_minute", first)
    assert ticks[-1] <= db_now(db)
    # The caught-up tick, and the next hour's only if the test ran across the hour.
    hourly = check_once_per_tick(db, "hourly", hour, step=HOUR)
    assert hourly[0] == hour and hourly[-1] <= db_now(db) and len(hourly) <= 2, hourly
    logs = "".join(p.output for p in runners)
    assert logs.count("periodic job hourly: enqueued") == len(hourly), logs
    assert logs.count("periodic job every_minute: enqueued") == len(ticks), logs

    listed = run_cli("cron", "--json", dsn=dsn, env=env)
    assert listed.returncode == 0, listed.stderr
    schedules = {s["worker"]: s for s in json.loads(listed.stdout)}
    assert schedules["every_minute"]["expression"] == "* * * * *"
    assert schedules["every_minute"]["last_tick"] == str(ticks[-1])
    assert schedules["hourly"]["timezone"] == "Europe/Berlin"
    assert all(s["active"] for s in schedules.values())
    table = run_cli("cron", dsn=dsn, env=env)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["WORKER", "CRON", "TIMEZONE", "LAST", "TICK", "NEXT", "RUN",
                              "STATE"]
    assert [line.split()[0] for line in lines] == ["every_minute", "hourly"]
    assert "Europe/Berlin" in lines[1] and lines[1].endswith("active")


def test_cron_without_schedules_says_so(client: Client, dsn: str) -> None:
    listed = run_cli("cron", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("no periodic jobs")
    assert json.loads(run_cli("cron", "--json", dsn=dsn).stdout) == []


def test_workers_shows_the_cron_and_refuses_a_bad_one() -> None:
    listed = run_cli("workers", "--json", *CRON_WORKERS, dsn="unused")
    assert listed.returncode == 0, listed.stderr
    described = {w["name"]: w for w in json.loads(listed.stdout)}
    assert (described["hourly"]["cron"], described["hourly"]["cron_timezone"]) == (
        "0 * * * *", "Europe/Berlin")
    assert "cron" not in described.get("record", {})
    table = run_cli("workers", *CRON_WORKERS, dsn="unused").stdout
    assert "cron='* * * * *' cron_timezone=UTC" in table
    refused = run_cli("workers", "--import", "tests.workers:BadCron", dsn="unused")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "backy-gevent: error: imports tests.workers:BadCron: BadCron has bad settings:"
        " cron='*/5 * * *' cron_timezone='UTC' ('*/5 * * *' has 4 fields; a cron expression"
        " has five: minute hour day-of-month month day-of-week)"]
