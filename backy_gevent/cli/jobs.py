"""The commands on the jobs table: setup, enqueue, jobs, show, retry, cancel, prune.

Each ``command_<name>(arguments, settings)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.errors import UsageError
from backy_gevent.job import COMPLETED
from backy_gevent.worker import Registry


def _emit(value: Any) -> None:
    print(json.dumps(value, default=str, indent=2, sort_keys=True))


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
    _emit({"id": job.id, "worker": job.worker, "queue": job.queue, "state": job.state,
           "run_at": job.run_at, "args": job.args, "inserted": job.inserted})
    return 0


def command_jobs(arguments: argparse.Namespace, settings: Settings) -> int:
    with Client(settings, registry=Registry()) as client:
        stats = client.stats()
        runners = client.runners()
    if not stats:
        print("no jobs")
    else:
        print(f"{'WORKER':24} {'QUEUE':12} {'STATE':10} {'JOBS':>8} {'OLDEST WAIT':>12}")
        for row in stats:
            wait = "" if row["oldest_wait"] is None else f"{row['oldest_wait']:.1f}s"
            print(
                f"{row['worker']:24} {row['queue']:12} {row['state']:10}"
                f" {row['jobs']:>8} {wait:>12}"
            )
    print(f"\n{len(runners)} runners")
    for runner in runners:
        silent = runner["silent_seconds"]
        # A live runner beats every 5 s; a silent one died without saying goodbye.
        status = f"last beat {silent:.0f}s ago" + ("" if silent < 15 else " (SILENT)")
        lead = "  (leads maintenance)" if runner["leader"] else ""
        print(f"  {runner['id']}  workers={','.join(runner['workers'])}  {status}{lead}")
    return 0


def command_show(arguments: argparse.Namespace, settings: Settings) -> int:
    """Print one job as JSON: every column, the error history included."""
    with Client(settings, registry=Registry()) as client:
        job = client.get_job(arguments.job_id)
    if job is None:
        print(f"job {arguments.job_id}: no such job", file=sys.stderr)
        return 1
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    _emit({name: value for name, value in fields.items() if not name.startswith("_")})
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
                state = current.state if current else "missing"
                print(f"job {job_id}: not changed (it is {state})", file=sys.stderr)
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
    states = [COMPLETED]
    if arguments.failed:
        states.append("failed")
    if arguments.cancelled:
        states.append("cancelled")
    with Client(settings, registry=Registry()) as client:
        deleted = client.prune(arguments.older_than, states)
    print(f"deleted {deleted} jobs")
    return 0



