"""Start, attach to and leave the embedded server (see the package docstring for how)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from backy_gevent.embedded import account as accounts
from backy_gevent.embedded import server as pg
from backy_gevent.embedded.locks import fcntl, lock, open_lock, try_lock
from backy_gevent.embedded.server import Layout
from backy_gevent.embedded.watchdog import ensure_watchdog
from backy_gevent.errors import EmbeddedServerError, EmbeddedUnavailable

#: The database backy-gevent uses in the embedded server.
DATABASE = "backy"
_log = logging.getLogger("backy_gevent.embedded")


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
    layout, users_lock, line = _join(Path(data_dir), max_connections)
    try:
        announce(line)
        yield layout.dsn(DATABASE)
    finally:
        _leave(layout, users_lock)


def _join(data_dir: Path, max_connections: int) -> tuple[Layout, int, str]:
    """Become a user of the server, starting it if needed.

    Returns the layout, the held users lock and the announcement line.
    """
    if fcntl is None:
        raise EmbeddedUnavailable("no embedded PostgreSQL on Windows; set --dsn or BACKY_DSN")
    install = pg.wheel_install()
    layout = Layout(data_dir.absolute())
    try:
        pg.make_data_dir(layout)
        start_lock = lock(layout, "start", fcntl.LOCK_EX)
    # A data directory made by another user or by root, a file, a read-only file system...
    except OSError as exc:
        raise EmbeddedUnavailable(
            f"cannot use {layout.data_dir} for the embedded PostgreSQL server ({exc}); set "
            "BACKY_DATA_DIR to a directory of your own, or set --dsn or BACKY_DSN"
        ) from exc
    try:
        users_lock = lock(layout, "users", fcntl.LOCK_SH)
        try:
            line = _start_or_attach(layout, install, max_connections)
        except BaseException:
            _leave(layout, users_lock)
            raise
    finally:
        os.close(start_lock)
    return layout, users_lock, line


def _leave(layout: Layout, users_lock: int) -> None:
    """Stop using the server: drop our shared lock, and stop the server if we were the last."""
    os.close(users_lock)
    _stop_if_unused(layout)


def _start_or_attach(layout: Layout, install: Path, max_connections: int) -> str:
    """Make sure the server runs, its watchdog too, and ``backy`` exists; return the announcement.

    Called holding the start lock and a shared users lock.
    """
    # The watchdog comes first, so that a server we start is watched even if we die at once.
    ensure_watchdog(layout)
    server = _settled_postmaster(layout)
    if server is None:
        pg.clear_stale_files(layout)
        account = accounts.server_account(layout)
        binaries = accounts.usable_install(install, layout, account)
        if not (layout.pgdata / "PG_VERSION").exists():
            pg.initdb(layout, binaries, account)
        pg.start(layout, binaries, account, max_connections)
        server = pg.postmaster(layout)
        if server is None:
            raise EmbeddedServerError(f"the server in {layout.pgdata} exited right after starting"
                                      f"{pg.log_tail(layout)}")
        how = "started"
    else:
        how = "already running"
    _ensure_database(layout, max_connections)
    dsn = layout.dsn(DATABASE)
    return (f"backy-gevent: embedded PostgreSQL server {how} (pid {server.pid}) for "
            f"{layout.data_dir}; connect with: {install / 'bin' / 'psql'} {shlex.quote(dsn)}")


def _settled_postmaster(layout: Layout) -> pg.Postmaster | None:
    """Return our ready server or None, waiting out one that is starting or shutting down."""
    deadline = time.monotonic() + pg.START_TIMEOUT
    while True:
        server = pg.postmaster(layout)
        if server is None or server.ready:
            return server
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"the server in {layout.pgdata} (pid {server.pid}) has been starting or stopping "
                f"for {pg.START_TIMEOUT:.0f}s{pg.log_tail(layout)}"
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
            f"{pg.log_tail(layout)}"
        ) from exc
    if allowed < max_connections:
        _log.warning(
            "the embedded PostgreSQL server in %s was started by another process with "
            "max_connections=%d, fewer than the %d this process asked for; stop every "
            "backy-gevent process using it so the next start applies the larger value",
            layout.data_dir, allowed, max_connections,
        )


def _stop_if_unused(layout: Layout) -> None:
    """Stop the server now if no process uses it; never raises (the watchdog is the backstop)."""
    fd = open_lock(layout, "users")
    try:
        # Locked by someone: it is still in use (or the watchdog got in first and stops it).
        if try_lock(fd, fcntl.LOCK_EX):
            pg.stop(layout)
    except Exception as exc:  # must not hide the error that ended the caller's block
        _log.warning("could not stop the embedded PostgreSQL server in %s: %s",
                     layout.data_dir, exc)
    finally:
        os.close(fd)
