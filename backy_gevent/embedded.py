"""The embedded default: a private PostgreSQL server shared by every backy-gevent process.

With no DSN configured, each command calls ``embedded_server(default_data_dir())``: it starts
the server kept in that data directory, or attaches to it if another process already did, and
yields a DSN for its database ``backy``. The last process to leave stops the server.

How processes agree, with three ``flock`` files in the data directory (the kernel drops a
process's flocks when it dies, even by kill -9, so nothing stale survives a crash):

- ``users.lock``: every process using the server holds a *shared* lock on it while it does.
  Whoever can take it *exclusively* knows nobody uses the server and may stop it.
- ``start.lock``: held exclusively while deciding whether to initdb and start, so two
  processes never start the server twice. The state check happens with the shared users lock
  already held, so the server cannot be stopped between the check and the use.
- ``watchdog.lock``: held by a small detached process (``python -m backy_gevent.embedded
  --watch DATA_DIR``) that blocks until it can take the users lock exclusively, then stops
  the server and exits: that is what stops the server after its last user was killed with -9.
  Any process that finds no watchdog running spawns one, before it starts the server, so a
  server is never left unwatched even if its starter dies at once. The watchdog is handed its
  lock already taken, and releases it before the users lock, so whoever gets in next sees
  correctly whether a watchdog is running.

A process leaving normally also tries, without waiting, to take the users lock exclusively,
and stops the server itself if it can: so the server is normally down by the time the last
command returns, and still stops if the watchdog was killed. A server left behind by kill -9
or a reboot is recognised from ``postmaster.pid`` (its pid gone, or reused by a process that
is not our postgres) and its stale files are removed before the next start.
``backy_gevent.pgserver`` describes the data directory's layout; ``backy_gevent.pgaccount``
the account a root-run server uses, and why the binaries may be copied.

Under gevent this blocks nothing for long (locks are polled; subprocess and psycopg2 are
patched by the console script), but a first start, with initdb, takes a second or two.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from backy_gevent import pgaccount, pgserver
from backy_gevent.pgserver import EmbeddedServerError, EmbeddedUnavailable, Layout

try:
    import fcntl
except ImportError:  # Windows: no flock, so no embedded server (EmbeddedUnavailable)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "EmbeddedServerError",
    "EmbeddedUnavailable",
    "default_data_dir",
    "embedded_server",
]

#: The database backy-gevent uses in the embedded server.
DATABASE = "backy"
#: How long to wait for another process to finish starting or stopping the server.
LOCK_TIMEOUT = 180.0

_log = logging.getLogger(__name__)


def default_data_dir(environ: Mapping[str, str] | None = None, *, euid: int | None = None) -> Path:
    """Return where the embedded server keeps its data.

    ``BACKY_DATA_DIR`` if set; else ``/var/lib/backy-gevent`` for root and
    ``$XDG_DATA_HOME/backy-gevent`` (by default ``~/.local/share/backy-gevent``) for anyone
    else. ``environ`` defaults to ``os.environ`` and ``euid`` to the process's.
    """
    env = os.environ if environ is None else environ
    if env.get("BACKY_DATA_DIR"):
        return Path(env["BACKY_DATA_DIR"]).expanduser()
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/backy-gevent")
    xdg = env.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):  # the XDG spec says to ignore relative paths
        xdg = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "backy-gevent"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def embedded_server(
    data_dir: Path,
    *,
    max_connections: int = 100,
    announce: Callable[[str], None] = _to_stderr,
) -> Iterator[str]:
    """Start, or attach to, the one private server for ``data_dir``; yield a DSN for ``backy``.

    The server is started with ``max_connections``; if it was already running with fewer, a
    warning says so (the setting takes effect when the server next starts). ``announce`` is
    called once with one line saying where the server is and how to connect to it. On exit,
    if no other process uses the server, it is stopped within seconds (normally before this
    returns); otherwise the last user, or the watchdog, stops it later. The database
    ``backy`` is created if missing.

    Raises EmbeddedUnavailable when no embedded server is possible here (no wheel for this
    platform, an unusable data directory): the caller should ask for a DSN. Raises
    EmbeddedServerError when the server fails to start (the message includes its log).
    """
    if max_connections < 5:
        raise ValueError(f"max_connections must be at least 5, not {max_connections}")
    if fcntl is None:
        raise EmbeddedUnavailable("no embedded PostgreSQL on Windows; set --dsn or BACKY_DSN")
    install = pgserver.wheel_install()
    layout = Layout(Path(data_dir).absolute())
    try:
        pgserver.make_data_dir(layout)
        start_lock = _lock(layout, "start", fcntl.LOCK_EX)
    except PermissionError as exc:  # e.g. a data directory made by another user, or by root
        raise EmbeddedUnavailable(
            f"cannot use {layout.data_dir} for the embedded PostgreSQL server ({exc}); set "
            "BACKY_DATA_DIR to a directory of your own, or set --dsn or BACKY_DSN"
        ) from exc
    try:
        users_lock = _lock(layout, "users", fcntl.LOCK_SH)
        try:
            line = _start_or_attach(layout, install, max_connections)
        except BaseException:
            _leave(layout, users_lock)
            raise
    finally:
        os.close(start_lock)
    try:
        announce(line)
        yield layout.dsn(DATABASE)
    finally:
        _leave(layout, users_lock)


def _leave(layout: Layout, users_lock: int) -> None:
    """Stop using the server: drop our shared lock, and stop the server if we were the last."""
    os.close(users_lock)
    _stop_if_unused(layout)


def _start_or_attach(layout: Layout, install: Path, max_connections: int) -> str:
    """Make sure the server runs, its watchdog too, and ``backy`` exists; return the announcement.

    Called holding the start lock and a shared users lock.
    """
    # The watchdog comes first, so that a server we start is watched even if we die at once.
    _ensure_watchdog(layout)
    server = _settled_postmaster(layout)
    if server is None:
        pgserver.clear_stale_files(layout)
        account = pgaccount.server_account(layout)
        binaries = pgaccount.usable_install(install, layout, account)
        if not (layout.pgdata / "PG_VERSION").exists():
            pgserver.initdb(layout, binaries, account)
        pgserver.start(layout, binaries, account, max_connections)
        server = pgserver.postmaster(layout)
        if server is None:
            raise EmbeddedServerError(f"the server in {layout.pgdata} exited right after starting"
                                      f"{pgserver.log_tail(layout)}")
        how = "started"
    else:
        how = "already running"
    _ensure_database(layout, max_connections)
    dsn = layout.dsn(DATABASE)
    return (f"backy-gevent: embedded PostgreSQL server {how} (pid {server.pid}) for "
            f"{layout.data_dir}; connect with: {install / 'bin' / 'psql'} {shlex.quote(dsn)}")


def _settled_postmaster(layout: Layout) -> pgserver.Postmaster | None:
    """Return our ready server or None, waiting out one that is starting or shutting down."""
    deadline = time.monotonic() + pgserver.START_TIMEOUT
    while True:
        server = pgserver.postmaster(layout)
        if server is None or server.ready:
            return server
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"the server in {layout.pgdata} (pid {server.pid}) has been starting or stopping "
                f"for {pgserver.START_TIMEOUT:.0f}s{pgserver.log_tail(layout)}"
            )
        time.sleep(0.05)


def _ensure_database(layout: Layout, max_connections: int) -> None:
    """Create the ``backy`` database if missing; warn if the server allows too few connections."""
    import psycopg2

    try:
        conn = psycopg2.connect(layout.dsn("postgres"), connect_timeout=10)
        with contextlib.closing(conn), conn.cursor() as cursor:
            conn.autocommit = True
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
            cursor.execute("SHOW max_connections")
            allowed = int(cursor.fetchone()[0])
    except psycopg2.Error as exc:
        raise EmbeddedServerError(
            f"cannot use the embedded server in {layout.data_dir}: {exc}"
            f"{pgserver.log_tail(layout)}"
        ) from exc
    if allowed < max_connections:
        _log.warning(
            "the embedded PostgreSQL server in %s was started by another process with "
            "max_connections=%d, fewer than the %d this process asked for; stop every "
            "backy-gevent process using it so the next start applies the larger value",
            layout.data_dir, allowed, max_connections,
        )


def _lock(layout: Layout, name: str, operation: int) -> int:
    """Open ``<name>.lock`` and flock it; return the descriptor, which holds the lock.

    Polls instead of blocking, so that a gevent-patched caller keeps running and a stuck
    holder turns into an error instead of a hang.
    """
    path = layout.lock_file(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise EmbeddedServerError(
                    f"waited {LOCK_TIMEOUT:.0f}s for {path}: another process seems stuck "
                    "starting or stopping the embedded server"
                ) from None
            time.sleep(0.02)


def _stop_if_unused(layout: Layout) -> None:
    """Stop the server now if no process uses it; never raises (the watchdog is the backstop)."""
    fd = os.open(layout.lock_file("users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        pgserver.stop(layout)
    except BlockingIOError:
        pass  # someone still uses it (or the watchdog got in first and is stopping it)
    except Exception as exc:  # must not hide the error that ended the caller's block
        _log.warning("could not stop the embedded PostgreSQL server in %s: %s",
                     layout.data_dir, exc)
    finally:
        os.close(fd)


def _ensure_watchdog(layout: Layout) -> None:
    """Spawn the watchdog unless one holds ``watchdog.lock``; called under the start lock."""
    fd = os.open(layout.lock_file("watchdog"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        # The child inherits the locked descriptor, so the lock is never free in between.
        # sh backgrounds it and exits at once: the watchdog is nobody's child to reap, and it
        # gets its own session, so a Ctrl-C in the user's terminal does not reach it.
        package_root = str(Path(__file__).resolve().parent.parent)
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
    users = os.open(layout.lock_file("users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(users, fcntl.LOCK_EX)
        pgserver.stop(layout)
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


if __name__ == "__main__":
    sys.exit(main())
