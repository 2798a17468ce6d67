"""``backy-gevent runners``: the runners of a jobs table, and which one leads maintenance."""

from __future__ import annotations

import argparse
import json

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
    if arguments.json:
        print(json.dumps(runners, default=str, indent=2, sort_keys=True))
        return 0
    if not runners:
        print("no runners")
        return 0
    header = ("RUNNER", "HOST", "PID", "WORKERS", "QUEUES", "LAST BEAT", "ROLE")
    rows = [header]
    for runner in runners:
        silent = runner["silent_seconds"]
        beat = f"{silent:.0f}s ago" + (" SILENT" if silent >= SILENT_AFTER else "")
        rows.append((
            runner["id"], runner["hostname"], str(runner["pid"]),
            ",".join(runner["workers"]), ",".join(runner["queues"]) or "all",
            beat, "LEADER" if runner["leader"] else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0
