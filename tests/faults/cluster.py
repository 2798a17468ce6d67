"""A private PostgreSQL cluster that a fault test may restart, kill or starve.

The shared test server must never be restarted under other engineers' tests, so each
fault scenario gets a cluster of its own: Debian's server binaries
(``/usr/lib/postgresql/<version>/bin``), a data directory copied from a template made
once per session (initdb takes ~0.6 s, a copy ~0.1 s), TCP on 127.0.0.1 at a free port
with trust authentication, and ``fsync=off`` since nothing here must survive a power cut
(but not ``synchronous_commit=off``: an immediate shutdown would then lose commits that
clients were told about, which is a fault of the set-up, not of the engine).

PostgreSQL refuses to run as root; when the tests run as root, every server command runs
as the ``postgres`` account, which owns the directories made here.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

#: Settings every private cluster starts with (appended to postgresql.conf).
BASE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "shared_buffers": "'32MB'",
    "max_connections": "100",
    "log_min_messages": "warning",
    "log_connections": "off",
}


def server_binaries() -> Path | None:
    """The bin directory of the newest Debian PostgreSQL server installed, if any."""
    found = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        if re.fullmatch(r"\d+(\.\d+)?", version):
            found.append((tuple(int(part) for part in version.split(".")), initdb.parent))
    return max(found)[1] if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scratch_root() -> str:
    """Where data directories go: memory (/dev/shm) when it can be used, else /tmp."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


class _Account:
    """Runs server commands as ``postgres`` when we are root, else as ourselves."""

    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:
            entry = pwd.getpwnam("postgres")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            self.user_args: dict[str, Any] = {
                "user": self.uid, "group": self.gid, "extra_groups": [],
            }
        else:
            self.uid, self.gid = os.geteuid(), os.getegid()
            self.user_args = {}

    def make_dir(self, prefix: str) -> Path:
        """A new private directory the server account owns."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
        if self.as_root:
            os.chown(path, self.uid, self.gid)
        return path

    def run(self, *args: str | Path, timeout: float = 60) -> str:
        """Run a server command as the server account; raise with its output on failure."""
        done = subprocess.run(
            [str(arg) for arg in args], capture_output=True, text=True, timeout=timeout,
            cwd="/", **self.user_args,
        )
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout


class ClusterTemplate:
    """An initdb'd data directory, copied into every ``PrivateCluster`` of the session."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.account = _Account()
        self.root = self.account.make_dir("backy-faults-template-")
        self.data = self.root / "data"
        try:
            self.account.run(
                bin_dir / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                "--no-sync", "--encoding=UTF8", "--locale=C",
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.writelines(f"{name} = {value}\n" for name, value in BASE_SETTINGS.items())
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateCluster:
    """One PostgreSQL server of a test's own; ``close()`` stops it and deletes its files.

    ``dsn`` reaches it as superuser ``postgres`` over TCP. The port stays the same across
    restarts, so DSNs given to runners stay valid.
    """

    def __init__(self, template: ClusterTemplate) -> None:
        self.bin_dir = template.bin_dir
        self.account = template.account
        self.root = self.account.make_dir("backy-faults-")
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = 0
        self.running = False
        self.account.run("cp", "-a", template.data, self.data)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        self.account.run(self.bin_dir / "pg_ctl", "-D", self.data, *args, timeout=timeout)

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        The first start picks a free port (trying another if it was taken meanwhile);
        later starts reuse it.
        """
        tries = 1 if self.port else 3
        for attempt in range(tries):
            if not self.port or attempt:
                self.port = free_port()
            options = f"-p {self.port} -k {self.root}"
            try:
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path), "-o", options)
                break
            except RuntimeError:
                if attempt == tries - 1:
                    raise RuntimeError(f"could not start: {self.server_log()}") from None
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``smart``, ``fast`` (sessions end, clean shutdown) or
        ``immediate`` (no shutdown checkpoint: the next start recovers, as after a crash)."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop with ``mode`` and start again on the same port."""
        self.stop(mode)
        self.start()

    def connect(self, **kwargs: Any) -> Any:
        """A new autocommit superuser connection (the caller closes it)."""
        conn = psycopg2.connect(self.dsn, connect_timeout=5, **kwargs)
        conn.autocommit = True
        return conn

    def execute(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one statement, on a connection of its own."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def terminate_backends(self, application_name_prefix: str | None = None) -> int:
        """``pg_terminate_backend`` every other client backend (those whose
        application_name starts with the prefix, if given); return how many were signalled.

        Runners name their connections ``backy-gevent <runner id>`` and
        ``backy-gevent listener <runner id>``: the prefix ``"backy-gevent "`` hits exactly
        them, not a test's Client (``backy-gevent``) nor the workers' own connections.
        """
        [(count,)] = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%s::text IS NULL OR starts_with(application_name, %s::text))",
            application_name_prefix, application_name_prefix,
        )
        return int(count)

    def set_max_connections(self, count: int) -> None:
        """Set ``max_connections`` (superuser_reserved_connections shrinks with it so that
        some connections stay for everyone) and restart the server for it to apply."""
        self.execute(f"ALTER SYSTEM SET max_connections = {int(count)}")
        self.execute(f"ALTER SYSTEM SET superuser_reserved_connections = {min(3, count - 1)}")
        self.restart("fast")

    def server_log(self) -> str:
        """What the server logged (errors and warnings)."""
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server however it is, then delete its directory."""
        if self.running or (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
