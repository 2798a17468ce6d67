"""The watchdog: a detached process that stops the embedded server once nobody uses it.

It is what stops the server after its last user was killed with -9. Any process that
finds no watchdog running spawns one, before it starts the server, so a server is never
left unwatched even if its starter dies at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from backy_gevent.embedded import server
from backy_gevent.embedded.locks import fcntl, open_lock, try_lock
from backy_gevent.embedded.server import Layout


def ensure_watchdog(layout: Layout) -> None:
    """Spawn the watchdog unless one holds ``watchdog.lock``; called under the start lock."""
    fd = open_lock(layout, "watchdog")
    try:
        if not try_lock(fd, fcntl.LOCK_EX):
            return
        # The child inherits the locked descriptor, so the lock is never free in between.
        # sh backgrounds it and exits at once: the watchdog is nobody's child to reap, and it
        # gets its own session, so a Ctrl-C in the user's terminal does not reach it.
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        with open(layout.data_dir / "watchdog.log", "ab") as log:
            subprocess.run(
                ["/bin/sh", "-c", '"$@" &', "sh", sys.executable, "-m", "backy_gevent.embedded",
                 "--watch", str(layout.data_dir), "--lock-fd", str(fd)],
                pass_fds=(fd,), start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, cwd="/", env=env, check=True,
            )
    finally:
        os.close(fd)


def watch(data_dir: Path, lock_fd: int) -> None:
    """Be the watchdog: wait until no process uses the server, stop it, and return.

    ``lock_fd`` is the inherited, already locked ``watchdog.lock``.
    """
    layout = Layout(data_dir)
    users = open_lock(layout, "users")
    try:
        fcntl.flock(users, fcntl.LOCK_EX)
        server.stop(layout)
    finally:
        # Watchdog lock first: whoever gets the users lock next must find no watchdog.
        os.close(lock_fd)
        os.close(users)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m backy_gevent.embedded``: the watchdog."""
    parser = argparse.ArgumentParser(
        prog="python -m backy_gevent.embedded",
        description="Stop the embedded PostgreSQL server of DATA_DIR once nobody uses it.",
    )
    parser.add_argument("--watch", type=Path, required=True, metavar="DATA_DIR")
    parser.add_argument("--lock-fd", type=int, required=True, help="inherited, locked fd")
    args = parser.parse_args(argv)
    watch(args.watch, args.lock_fd)
    return 0
