"""A PgBouncer of the test's own, in transaction pooling mode, in front of a private cluster.

Debian's ``pgbouncer`` package provides the binary (scripts/test installs it); PgBouncer
refuses to run as root, so it runs as ``postgres`` like the cluster. Its pool to the
server holds ``pool_size`` connections (1 by default: every client transaction then goes
through the same server connection, so a session setting left behind by one client would
show in the next, which is what the leak test looks for).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.faults.cluster import _Account, free_port


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


class PgBouncer:
    """``start()``, ``dsn``, ``stop()``; the log is ``log_path``."""

    def __init__(self, server_port: int, *, pool_size: int = 1) -> None:
        self.account = _Account()
        self.dir = self.account.make_dir("backy-pgbouncer-")
        self.port = free_port()
        self.log_path = self.dir / "pgbouncer.log"
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 200\n"
            f"logfile = {self.log_path}\n"
        )
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        if self.account.as_root:
            for path in self.dir.iterdir():
                Path(path).chmod(0o644)
        self.process: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        binary = pgbouncer_binary()
        assert binary, "pgbouncer is not installed (Debian's pgbouncer package)"
        user: dict[str, Any] = self.account.user_args
        self.process = subprocess.Popen(
            [binary, str(self.dir / "pgbouncer.ini")], cwd="/", stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **user,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"pgbouncer did not start: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
