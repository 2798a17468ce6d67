"""psycopg2 for the one-shot commands: ^C cancels the query on the server, then stops.

Without a wait callback, libpq waits for the server inside C and a ^C is seen only when
the statement is over: a prune of millions of rows, or a migration, ran on to its end
(and committed) after the user asked it to stop. With this callback psycopg2 waits in
Python, so the ^C arrives at once; the query is cancelled on the server before the
``KeyboardInterrupt`` goes on up (the console script then exits 130).

Every wait stays bounded by the connection's ``silence_timeout`` (see
``db.connections``): libpq's own ``connect_timeout`` does not apply once psycopg2 waits
through a callback. The commands that run on gevent's hub use ``db.green`` instead.
"""

from __future__ import annotations

import contextlib
import select
from typing import Any

import psycopg2
from psycopg2 import extensions


def interruptible_wait(conn: Any, timeout: float | None = None) -> None:
    """Wait for ``conn``, at most its ``silence_timeout`` for each reply; on ^C, cancel
    its query on the server and re-raise."""
    silence = getattr(conn, "silence_timeout", None)
    try:
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                ready = select.select([conn.fileno()], [], [], silence)[0]
            elif state == extensions.POLL_WRITE:
                ready = select.select([], [conn.fileno()], [], silence)[1]
            else:
                raise psycopg2.OperationalError(f"bad result from poll: {state!r}")
            if not ready:
                raise psycopg2.OperationalError(f"the database sent nothing for {silence:g}s")
    except KeyboardInterrupt:
        with contextlib.suppress(psycopg2.Error):
            conn.cancel()
        raise


def install() -> None:
    """Make every psycopg2 wait of this process interruptible by ^C."""
    extensions.set_wait_callback(interruptible_wait)
