"""Real ``backy-gevent run`` processes for the bench: started, waited for, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from psycopg2 import sql

from backy_gevent.cli.bench import scratch
from backy_gevent.cli.bench.workers import IMPORTS, Noop, Stamp

#: How long runners get to start, and to stop after SIGTERM before they are killed.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def third_party_plugins() -> list[str]:
    """The names of the installed ``backy.plugins`` entry points."""
    return sorted({entry.name for entry in metadata.entry_points(group="backy.plugins")})


def runner_command(dsn: str) -> list[str]:
    """The command line of one bench runner: the bench's workers only, no metrics port."""
    command = [sys.executable, "-m", "backy_gevent", "run", "--dsn", dsn,
               "--table-name", scratch.TABLE, "--metrics-port", "0",
               "--log-level", "warning"]
    for path in IMPORTS:
        command += ["--import", path]
    for worker in (Noop.name, Stamp.name):
        command += ["--worker", worker]
    return command


def runner_environment(forwarded: Mapping[str, str], plugins: bool) -> dict[str, str]:
    """The runners' environment: ours, the options given to ``bench`` as flags
    (``forwarded``, as ``BACKY_*`` variables), and unless ``plugins`` every third-party
    hook plugin disabled, so that the bench measures backy-gevent alone."""
    env = dict(os.environ, **forwarded)
    if not plugins:
        disabled = [name for name in env.get("BACKY_DISABLE_PLUGINS", "").split(",") if name]
        env["BACKY_DISABLE_PLUGINS"] = ",".join(sorted({*disabled, *third_party_plugins()}))
    return env


@contextlib.contextmanager
def runners(dsn: str, count: int, env: Mapping[str, str]) -> Iterator[list[Any]]:
    """``count`` runners of the bench's workers, started and registered (so idle: their
    start-up is not timed); stopped with SIGTERM on the way out, killed if they linger.

    They run in a session of their own: a ^C at the terminal reaches the bench alone,
    which stops them in order before it drops the schema.
    """
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen(
                runner_command(dsn), env=dict(env), stdout=subprocess.DEVNULL,
                start_new_session=True))
        _wait_registered(dsn, processes)
        yield processes
    finally:
        stop(processes)


#: Runners registered and listening: a runner's listener connects after it registers,
#: and a backlog committed before that would wait for the poll.
_READY = sql.SQL("""
    SELECT count(*), count(a.pid) FROM {runners} r
    LEFT JOIN pg_stat_activity a
      ON a.application_name = 'backy-gevent listener ' || r.id AND a.query LIKE 'LISTEN %%'
""").format(runners=sql.Identifier(f"{scratch.TABLE}_runners"))
#: Seconds to wait for registered runners to LISTEN (they never do behind a pooler).
LISTEN_GRACE = 5.0


def _wait_registered(dsn: str, processes: list[Any]) -> None:
    started = time.monotonic()
    registered_at = None
    with contextlib.closing(scratch.connect(dsn)) as conn, conn.cursor() as cur:
        while True:
            cur.execute(_READY)
            registered, listening = cur.fetchone()
            if registered >= len(processes):
                registered_at = registered_at or time.monotonic()
                if listening >= len(processes) or (
                        time.monotonic() - registered_at > LISTEN_GRACE):
                    return
            if any(process.poll() is not None for process in processes):
                raise RuntimeError("a bench runner exited while starting (see its log above)")
            if time.monotonic() - started > START_TIMEOUT:
                raise RuntimeError(f"the bench runners did not start in {START_TIMEOUT:.0f}s")
            time.sleep(0.05)


def check_alive(processes: list[Any]) -> None:
    """Raise if a runner has exited (a bench waiting for it would wait for ever)."""
    if any(process.poll() is not None for process in processes):
        raise RuntimeError("a bench runner exited during the benchmark (see its log above)")


def stop(processes: list[Any]) -> None:
    """SIGTERM each runner, wait for them, kill those that outstay ``STOP_TIMEOUT``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
