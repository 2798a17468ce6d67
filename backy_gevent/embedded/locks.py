"""The flock files by which processes share one embedded server (see the package docstring).

The kernel drops a process's flocks when it dies, even by kill -9, so nothing stale
survives a crash.
"""

from __future__ import annotations

import os
import time

from backy_gevent.embedded.server import Layout
from backy_gevent.errors import EmbeddedServerError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no embedded server (EmbeddedUnavailable)
    fcntl = None  # type: ignore[assignment]

#: How long to wait for another process to finish starting or stopping the server.
LOCK_TIMEOUT = 180.0


def open_lock(layout: Layout, name: str) -> int:
    """Open ``<name>.lock`` in the data directory; return its descriptor, not locked."""
    return os.open(layout.lock_file(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def lock(layout: Layout, name: str, operation: int) -> int:
    """Open ``<name>.lock`` and flock it; return the descriptor, which holds the lock.

    Polls instead of blocking, so that a gevent-patched caller keeps running and a stuck
    holder turns into an error instead of a hang.
    """
    fd = open_lock(layout, name)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise EmbeddedServerError(
                    f"waited {LOCK_TIMEOUT:.0f}s for {layout.lock_file(name)}: another process"
                    " seems stuck starting or stopping the embedded server"
                ) from None
            time.sleep(0.02)


def try_lock(fd: int, operation: int) -> bool:
    """flock ``fd`` without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
