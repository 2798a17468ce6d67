"""Prometheus metrics: the built-in plugin, the scrape-time collectors, the HTTP server.

``plugin`` counts jobs through the hooks; ``collectors`` read the runner and the jobs
table at scrape time; ``server`` serves ``/metrics`` and ``/healthz`` from the runner's
hub. ``client_hooks`` is the documented way for an application to count its enqueues.
"""

from backy_gevent.metrics.plugin import PLUGIN_NAME, SECONDS_BUCKETS, Metrics, client_hooks

__all__ = ["PLUGIN_NAME", "SECONDS_BUCKETS", "Metrics", "client_hooks"]
