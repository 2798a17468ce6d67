"""``backy-gevent cron``: the periodic jobs' schedules, their last and next ticks."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math

from backy_gevent.cli.output import print_listing
from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.cron import CronError, zone_of
from backy_gevent.worker import Registry


def command_cron(arguments: argparse.Namespace, settings: Settings) -> int:
    """One line per schedule: worker, expression, time zone, last tick and next run, in
    the schedule's zone; IDLE when no live runner has its worker (no tick is enqueued)."""
    with Client(settings, registry=Registry()) as client:
        schedules = client.schedules()
    now = dt.datetime.now(dt.timezone.utc)
    print_listing(
        schedules, as_json=arguments.json,
        empty="no periodic jobs (give a worker a cron attribute and start a runner)",
        header=("WORKER", "CRON", "TIMEZONE", "LAST TICK", "NEXT RUN", "STATE"),
        row=lambda s: (
            s["worker"], s["expression"], s["timezone"], _when(s["last_tick"], s["timezone"]),
            _next(s["next_run"], s["timezone"], now), "active" if s["active"] else "IDLE"),
    )
    return 0


def _when(moment: dt.datetime | None, timezone: str) -> str:
    if moment is None:
        return "-"
    with contextlib.suppress(CronError):  # else shown in the server's zone
        moment = moment.astimezone(zone_of(timezone))
    return moment.strftime("%Y-%m-%d %H:%M %Z")


def _next(moment: dt.datetime | None, timezone: str, now: dt.datetime) -> str:
    if moment is None:
        return "never (bad expression)"
    seconds = (moment - now).total_seconds()
    return f"{_when(moment, timezone)} ({'due now' if seconds <= 0 else 'in ' + _span(seconds)})"


def _span(seconds: float) -> str:
    """``42s``, ``4m10s``, ``3h05m``, ``2d04h``."""
    days, rest = divmod(math.ceil(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, whole = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{whole:02d}s" if minutes else f"{whole}s"
