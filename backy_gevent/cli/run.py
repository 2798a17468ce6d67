"""``backy-gevent run``: build one runner from the settings and run it until stopped."""

from __future__ import annotations

import argparse

import pluggy

import backy_gevent
from backy_gevent.config import Settings
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.metrics import PLUGIN_NAME as METRICS_PLUGIN
from backy_gevent.metrics import Metrics
from backy_gevent.metrics.server import metrics_services
from backy_gevent.runner import Runner
from backy_gevent.worker import Registry


def runner_plugins(settings: Settings) -> tuple[Metrics, pluggy.PluginManager]:
    """The plugins a runner loads: the built-in metrics (on a registry of the runner's
    own), then the entry points. ``run`` and ``plugins`` both use this, so the listing
    is what a runner loads."""
    metrics = Metrics()
    plugin_manager = build_plugin_manager(
        [(METRICS_PLUGIN, metrics)], disabled=settings.disable_plugins
    )
    return metrics, plugin_manager


def command_run(arguments: argparse.Namespace, settings: Settings) -> int:
    registry = Registry.discover(settings.imports).restricted(settings.workers)
    metrics, plugin_manager = runner_plugins(settings)
    hooks = Hooks(plugin_manager, on_error=metrics.hook_error)
    # Jobs that enqueue jobs (backy_gevent.enqueue) use the runner's settings, and count.
    backy_gevent.configure(settings=settings, hooks=hooks)
    runner = Runner(
        settings, registry, hooks, dsn=str(settings.dsn),
        services=metrics_services(metrics, settings),
    )
    # The handlers only set flags; the runner's main greenlet does the work.
    runner.handle_signals()
    runner.run()
    return 1 if runner.fatal else 0
