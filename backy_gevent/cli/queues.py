"""The commands on queues: pause and resume.

Each ``command_<name>(arguments, settings)`` returns the exit status.
"""

from __future__ import annotations

import argparse

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.worker import Registry


def command_pause(arguments: argparse.Namespace, settings: Settings) -> int:
    """Pause a queue: runners stop claiming its jobs until it is resumed."""
    with Client(settings, registry=Registry()) as client:
        client.pause(arguments.queue)
    print(f"queue {arguments.queue!r}: paused")
    return 0


def command_resume(arguments: argparse.Namespace, settings: Settings) -> int:
    """Resume a paused queue; resuming one that is not paused is not an error."""
    with Client(settings, registry=Registry()) as client:
        resumed = client.resume(arguments.queue)
    print(f"queue {arguments.queue!r}: " + ("resumed" if resumed else "was not paused"))
    return 0
