"""The commands on the jobs table: setup, enqueue, jobs, show, retry, cancel, prune.

Each ``command_<name>(arguments, settings)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from backy_gevent.cli.fleet import SILENT_AFTER
from backy_gevent.cli.output import plural, print_json, print_table
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.errors import UsageError
from backy_gevent.job import COMPLETED
from backy_gevent.worker import Registry


def _registry(settings: Settings) -> Registry:
    return Registry.discover(settings.imports)


def _client(settings: Settings) -> Client:
    return Client(settings, registry=_registry(settings))


def command_setup(arguments: argparse.Namespace, settings: Settings) -> int:
    with Client(settings, registry=Registry()) as client:
        applied = client.setup()
    if applied:
        for migration in applied:
            print(f"applied migration {migration.version:04d} {migration.name}")
    else:
        print(f"jobs table {settings.table_name!r} is up to date")
    return 0


def command_enqueue(arguments: argparse.Namespace, settings: Settings) -> int:
    try:
        args = json.loads(arguments.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"args: not valid JSON ({exc})") from None
    except ValueError as exc:  # a number of more digits than Python converts
        raise UsageError(f"args: can't be read ({exc})") from None
    except RecursionError:
        raise UsageError("args: nested too deeply") from None
    if not isinstance(args, dict):
        raise UsageError("args: must be a JSON object, like '{\"name\": \"x\"}'")
    with _client(settings) as client:
        job = client.enqueue(
            arguments.worker,
            args,
            queue=arguments.job_queue,
            delay=arguments.delay,
            priority=arguments.priority,
            unique_key=arguments.unique_key,
            unique_for=arguments.unique_for,
        )
    print_json({"id": job.id, "worker": job.worker, "queue": job.queue, "state": job.state,
           "run_at": job.run_at, "args": job.args, "inserted": job.inserted})
    return 0


def command_jobs(arguments: argparse.Namespace, settings: Settings) -> int:
    """Job counts by worker, queue and state (waiting ones split into due and
    scheduled), warnings about due jobs no live runner serves, and the live runners."""
    with Client(settings, registry=Registry()) as client:
        stats = client.stats()
        runners = client.runners()
        paused = client.paused_queues()
    live = [runner for runner in runners if runner["silent_seconds"] < SILENT_AFTER]
    warnings = [
        f"{plural(row['due'], 'due job')} of worker {row['worker']!r} in queue"
        f" {row['queue']!r}: no live runner serves {'it' if row['due'] == 1 else 'them'}"
        for row in stats
        if row["due"] and not any(_serves(runner, row["worker"], row["queue"])
                                  for runner in live)
    ]
    if arguments.json:
        print_json({"jobs": stats, "paused_queues": paused, "runners": runners,
                    "warnings": warnings})
        return 0
    if not stats:
        print("no jobs")
    else:
        print_table(
            ("WORKER", "QUEUE", "STATE", "JOBS", "DUE", "SCHEDULED", "OLDEST WAIT"),
            [(row["worker"], row["queue"], row["state"], row["jobs"],
              *((row["due"], row["jobs"] - row["due"]) if row["state"] == "available"
                else ("", "")),
              "" if row["oldest_wait"] is None else f"{row['oldest_wait']:.1f}s")
             for row in stats],
        )
    for queue in paused:
        since = queue["paused_at"].isoformat(timespec="seconds")
        print(f"queue {queue['queue']!r}: paused since {since}"
              f" ({queue['paused_seconds']:.0f}s ago)")
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"\n{plural(len(runners), 'runner')}")
    for runner in runners:
        silent = runner["silent_seconds"]
        status = f"last beat {silent:.0f}s ago" + ("" if silent < SILENT_AFTER else " (SILENT)")
        lead = "  (leads maintenance)" if runner["leader"] else ""
        print(f"  {runner['id']}  workers={','.join(runner['workers'])}  {status}{lead}")
    return 0


def _serves(runner: dict[str, Any], worker: str, queue: str) -> bool:
    """Whether a runner claims this worker's jobs of this queue (no queues: every one)."""
    return worker in runner["workers"] and (not runner["queues"] or queue in runner["queues"])


#: What a missing row means: with ``delete_finished_jobs`` (the default) a job's row is
#: deleted when it completes, so a missing id may well be a job that ran.
NO_ROW = "finished and deleted, or never existed"


def command_show(arguments: argparse.Namespace, settings: Settings) -> int:
    """Print one job as JSON: every column, the error history and result included."""
    with Client(settings, registry=Registry()) as client:
        job = client.get_job(arguments.job_id)
    if job is None:
        print(f"job {arguments.job_id}: no row ({NO_ROW})", file=sys.stderr)
        return 1
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    print_json({name: value for name, value in fields.items()
                if not name.startswith("_") and name != "inserted"})
    return 0


def _each_job(arguments: argparse.Namespace, settings: Settings, action: str) -> int:
    status = 0
    with _client(settings) as client:
        for job_id in arguments.ids:
            try:
                job = getattr(client, action)(job_id)
            except ValueError as exc:  # for example a unique_key held by another job
                print(f"job {job_id}: not changed ({exc})", file=sys.stderr)
                status = 1
                continue
            if job is None:
                current = client.get_job(job_id)
                why = f"it is {current.state}" if current else f"no row: {NO_ROW}"
                print(f"job {job_id}: not changed ({why})", file=sys.stderr)
                status = 1
            else:
                print(f"job {job_id}: {job.state}")
    return status


def command_retry(arguments: argparse.Namespace, settings: Settings) -> int:
    if not arguments.ids and not arguments.failed:
        raise UsageError("retry: give job ids, or --failed for every failed job")
    if (arguments.only_workers or arguments.only_queues) and not arguments.failed:
        raise UsageError("retry: --worker and --queue filter --failed")
    status = _each_job(arguments, settings, "retry") if arguments.ids else 0
    if arguments.failed:
        with _client(settings) as client:
            retried = client.retry_failed(arguments.only_workers, arguments.only_queues)
        print(f"retried {len(retried)} failed jobs")
    return status


def command_cancel(arguments: argparse.Namespace, settings: Settings) -> int:
    return _each_job(arguments, settings, "cancel")


def command_prune(arguments: argparse.Namespace, settings: Settings) -> int:
    """Delete (or with --dry-run count) finished jobs older than --older-than."""
    states = [COMPLETED]
    if arguments.failed:
        states.append("failed")
    if arguments.cancelled:
        states.append("cancelled")
    age = f"finished more than {arguments.older_than:g}s ago"
    with Client(settings, registry=Registry()) as client:
        if arguments.dry_run:
            counts = client.prunable(arguments.older_than, states)
            total = sum(counts.values())
            detail = ", ".join(f"{counts.get(state, 0)} {state}" for state in states)
            print(f"would delete {plural(total, 'job')} {age} ({detail}); nothing deleted")
            return 0
        deleted = client.prune(arguments.older_than, states)
    print(f"deleted {plural(deleted, 'job')} {age} ({', '.join(states)})")
    return 0
