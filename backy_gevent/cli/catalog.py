"""``backy-gevent workers`` and ``plugins``: what is installed, and where it came from."""

from __future__ import annotations

import argparse

from backy_gevent.cli.run import runner_plugins
from backy_gevent.config import Settings
from backy_gevent.hooks import describe_plugins
from backy_gevent.worker import Registry, Worker, retry_count_of


def command_workers(arguments: argparse.Namespace, settings: Settings) -> int:
    registry = Registry.discover(settings.imports)
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
            + _limits(cls)
        )
    return 0


def _limits(cls: type[Worker]) -> str:
    """The worker's fleet-wide limits, when it has any."""
    text = ""
    if cls.global_concurrency is not None:
        text += f" global_concurrency={cls.global_concurrency}"
    if cls.rate_limit is not None:
        text += f" rate_limit={cls.rate_limit[0]}/{cls.rate_limit[1]:g}s"
    return text


def command_plugins(arguments: argparse.Namespace, settings: Settings) -> int:
    """One line per plugin: name, distribution, version and the hooks it implements."""
    _, plugin_manager = runner_plugins(settings)
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
