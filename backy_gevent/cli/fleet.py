"""``backy-gevent runners``: the runners of a jobs table, and which one leads maintenance."""

from __future__ import annotations

import argparse

from backy_gevent.cli.output import print_listing
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.worker import Registry

#: A live runner beats every 5 s; one silent for this long died without saying goodbye.
SILENT_AFTER = 15.0


def command_runners(arguments: argparse.Namespace, settings: Settings) -> int:
    """One line per runner that beat within the hour: id, host, pid, workers, queues,
    last beat (SILENT past 15 s), and LEADER for the one that leads maintenance."""
    with Client(settings, registry=Registry()) as client:
        runners = client.runners()
    print_listing(
        runners, as_json=arguments.json, empty="no runners",
        header=("RUNNER", "HOST", "PID", "WORKERS", "QUEUES", "LAST BEAT", "ROLE"),
        row=lambda runner: (
            runner["id"], runner["hostname"], runner["pid"], ",".join(runner["workers"]),
            ",".join(runner["queues"]) or "all",
            f"{runner['silent_seconds']:.0f}s ago"
            + (" SILENT" if runner["silent_seconds"] >= SILENT_AFTER else ""),
            "LEADER" if runner["leader"] else ""),
    )
    return 0
