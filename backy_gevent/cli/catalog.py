"""``backy-gevent workers`` and ``plugins``: what is installed, and where it came from."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from backy_gevent.cli.output import print_json, print_table
from backy_gevent.config import Settings
from backy_gevent.worker import Registration, Registry, retry_count_of


def command_workers(arguments: argparse.Namespace, settings: Settings) -> int:
    """One row per registered worker: name, class, where it came from, its settings."""
    registry = Registry.discover(settings.imports)
    described = [_describe(registration, settings) for registration in registry]
    if arguments.json:
        print_json(described)
        return 0
    if not described:
        print("no workers registered (install a package with backy.workers entry points)")
        return 0
    print_table(
        ("WORKER", "CLASS", "FROM", "SETTINGS"),
        [(worker.pop("name"), worker.pop("class"), worker.pop("source"),
          " ".join(f"{key}={_shown(value)}" for key, value in worker.items()))
         for worker in described],
    )
    return 0


def _describe(registration: Registration, settings: Settings) -> dict[str, Any]:
    """One worker's name, class, source and settings (the configured defaults applied)."""
    cls = registration.cls
    described: dict[str, Any] = {
        "name": registration.name,
        "class": registration.path,
        "source": registration.source,
        "queue": cls.queue,
        "priority": cls.priority,
        "max_runtime": cls.max_runtime,
        "max_concurrency": cls.max_concurrency,
        "requeue_delay": cls.requeue_delay,
        "retry_count": retry_count_of(cls, settings.retry_count),
    }
    for optional in ("global_concurrency", "rate_limit", "unique_for"):
        if getattr(cls, optional) is not None:
            described[optional] = getattr(cls, optional)
    if cls.cron is not None:  # a periodic job
        described["cron"] = cls.cron
        described["cron_timezone"] = cls.cron_timezone
    return described


def _shown(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, tuple):  # rate_limit
        return f"{value[0]}/{value[1]:g}s"
    if isinstance(value, str) and " " in value:  # cron
        return repr(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def command_plugins(arguments: argparse.Namespace, settings: Settings) -> int:
    """One row per plugin: name, distribution, version and the hooks it implements."""
    from backy_gevent.cli.run import runner_plugins
    from backy_gevent.hooks import describe_plugins

    _, plugin_manager = runner_plugins(settings)
    plugins = describe_plugins(plugin_manager)
    if arguments.json:
        print_json({
            "plugins": [dataclasses.asdict(info) for info in plugins],
            "disabled": sorted(settings.disable_plugins),
        })
        return 0
    if plugins:
        print_table(
            ("PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS"),
            [(info.name, info.distribution or "(built-in)", info.version or "-",
              ", ".join(info.hooks) or "(no hooks)") for info in plugins],
        )
    else:
        print("no plugins (install a package with backy.plugins entry points)")
    if settings.disable_plugins:
        print("disabled: " + ", ".join(sorted(settings.disable_plugins)))
    return 0
