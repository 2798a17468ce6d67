"""What each ``backy-gevent`` subcommand does, once flags and settings are parsed.

Each ``command_<name>(arguments, settings)`` returns the exit status. The console
script (cli.py) has patched gevent before this module is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from typing import Any

import gevent
import pluggy

import backy_gevent
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.errors import UsageError
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import COMPLETED
from backy_gevent.metrics import PLUGIN_NAME as METRICS_PLUGIN
from backy_gevent.metrics import Metrics
from backy_gevent.metrics.server import metrics_services
from backy_gevent.runner import Runner
from backy_gevent.worker import Registry, retry_count_of


def _emit(value: Any) -> None:
    print(json.dumps(value, default=str, indent=2, sort_keys=True))


def _registry(settings: Settings) -> Registry:
    return Registry.discover(settings.imports)


def _client(settings: Settings) -> Client:
    return Client(settings, registry=_registry(settings))


def command_setup(arguments: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings, registry=Registry())
    try:
        applied = client.setup()
    finally:
        client.close()
    if applied:
        for migration in applied:
            print(f"applied migration {migration.version:04d} {migration.name}")
    else:
        print(f"jobs table {settings.table_name!r} is up to date")
    return 0


def _runner_plugins(settings: Settings) -> tuple[Metrics, pluggy.PluginManager]:
    """The plugins a runner loads: the built-in metrics (on a registry of the runner's
    own), then the entry points. ``run`` and ``plugins`` both use this, so the listing
    is what a runner loads."""
    metrics = Metrics()
    plugin_manager = build_plugin_manager(
        [(METRICS_PLUGIN, metrics)], disabled=settings.disable_plugins
    )
    return metrics, plugin_manager


def command_run(arguments: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(settings).restricted(settings.workers)
    metrics, plugin_manager = _runner_plugins(settings)
    hooks = Hooks(plugin_manager, on_error=metrics.hook_error)
    # Jobs that enqueue jobs (backy_gevent.enqueue) use the runner's settings, and count.
    backy_gevent.configure(settings=settings, hooks=hooks)
    runner = Runner(
        settings, registry, hooks, dsn=str(settings.dsn),
        services=metrics_services(metrics, settings),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The handler only sets a flag; the runner's main greenlet does the work.
        gevent.signal_handler(signum, runner.request_stop)
    runner.run()
    return 0


def command_enqueue(arguments: argparse.Namespace, settings: Settings) -> int:
    try:
        args = json.loads(arguments.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"args: not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise UsageError("args: must be a JSON object, like '{\"name\": \"x\"}'")
    client = _client(settings)
    try:
        job = client.enqueue(
            arguments.worker,
            args,
            queue=arguments.job_queue,
            delay=arguments.delay,
            priority=arguments.priority,
            unique_key=arguments.unique_key,
        )
    finally:
        client.close()
    _emit({"id": job.id, "worker": job.worker, "queue": job.queue, "state": job.state,
           "run_at": job.run_at, "args": job.args})
    return 0


def command_workers(arguments: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(settings)
    if not len(registry):
        print("no workers registered (install a package with backy.workers entry points)")
        return 0
    for registration in registry:
        cls = registration.cls
        retry_count = retry_count_of(cls, settings.retry_count)
        print(
            f"{registration.name}\t{registration.path}\t{registration.source}\t"
            f"queue={cls.queue} priority={cls.priority} max_runtime={cls.max_runtime:g}"
            f" max_concurrency={cls.max_concurrency or 'unlimited'}"
            f" requeue_delay={cls.requeue_delay:g} retry_count={retry_count}"
        )
    return 0


def command_plugins(arguments: argparse.Namespace, settings: Settings) -> int:
    """One line per plugin: name, distribution, version and the hooks it implements."""
    from backy_gevent.hooks import describe_plugins

    _, plugin_manager = _runner_plugins(settings)
    rows = [
        (
            info.name,
            info.distribution or "(built-in)",
            info.version or "-",
            ", ".join(info.hooks) or "(no hooks)",
        )
        for info in describe_plugins(plugin_manager)
    ]
    if rows:
        header = ("PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            print("  ".join([*(row[i].ljust(widths[i]) for i in range(3)), row[3]]))
    else:
        print("no plugins (install a package with backy.plugins entry points)")
    if settings.disable_plugins:
        print("disabled: " + ", ".join(sorted(settings.disable_plugins)))
    return 0


def command_jobs(arguments: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings, registry=Registry())
    try:
        stats = client.stats()
        runners = client.runners()
    finally:
        client.close()
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
        print(f"  {runner['id']}  workers={','.join(runner['workers'])}  {status}")
    return 0


def command_show(arguments: argparse.Namespace, settings: Settings) -> int:
    """Print one job as JSON: every column, the error history included."""
    client = Client(settings, registry=Registry())
    try:
        job = client.get_job(arguments.job_id)
    finally:
        client.close()
    if job is None:
        print(f"job {arguments.job_id}: no such job", file=sys.stderr)
        return 1
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    _emit({name: value for name, value in fields.items() if not name.startswith("_")})
    return 0


def _each_job(arguments: argparse.Namespace, settings: Settings, action: str) -> int:
    client = _client(settings)
    status = 0
    try:
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
    finally:
        client.close()
    return status


def command_retry(arguments: argparse.Namespace, settings: Settings) -> int:
    if not arguments.ids and not arguments.failed:
        raise UsageError("retry: give job ids, or --failed for every failed job")
    if (arguments.only_workers or arguments.only_queues) and not arguments.failed:
        raise UsageError("retry: --worker and --queue filter --failed")
    status = _each_job(arguments, settings, "retry") if arguments.ids else 0
    if arguments.failed:
        client = _client(settings)
        try:
            retried = client.retry_failed(arguments.only_workers, arguments.only_queues)
        finally:
            client.close()
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
    client = Client(settings, registry=Registry())
    try:
        deleted = client.prune(arguments.older_than, states)
    finally:
        client.close()
    print(f"deleted {deleted} jobs")
    return 0



def command_bench(arguments: argparse.Namespace, settings: Settings) -> int:
    from backy_gevent.bench import run_bench

    result = run_bench(
        settings,
        jobs=arguments.jobs,
        runners=arguments.runners,
        pgbench_clients=arguments.pgbench_clients,
        single_jobs=arguments.single_jobs,
    )
    print(result.report())
    return 0
