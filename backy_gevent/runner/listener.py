"""The listener: LISTEN on the jobs table's channel, on an autocommit connection of its own.

A notification with an empty payload means new work: it wakes the fetcher. One with
``cancel:<id>`` means that job was cancelled: its attempt is stopped at once if it runs
here. After a reconnection the fetcher is woken too, since notifications may have been
missed while the connection was down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent.socket
from psycopg2 import sql

from backy_gevent.db.connections import CONNECTION_ERRORS, connect
from backy_gevent.db.queries import channel_name
from backy_gevent.runner.fetcher import Wakeup


class Listener:
    """Holds the LISTEN connection; ``step`` connects, or waits for notifications once."""

    def __init__(
        self,
        dsn: str,
        runner_id: str,
        *,
        table_oid: Callable[[], int],
        poll_interval: float,
        timeout: float,
        wakeup: Wakeup,
        cancelled: Callable[[int], None],
    ) -> None:
        self.dsn = dsn
        self.runner_id = runner_id
        self.table_oid = table_oid
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.wakeup = wakeup
        self.cancelled = cancelled
        self._conn: Any = None
        self._last_heard = 0.0  # time.monotonic() of the server's last sign of life

    def step(self) -> None:
        """Connect and LISTEN if not connected, else handle what arrives within a poll."""
        try:
            if self._conn is None:
                self._listen()
            else:
                self._receive()
        except CONNECTION_ERRORS:
            self.close()
            raise

    def _listen(self) -> None:
        conn = connect(
            self.dsn, application_name=f"backy-gevent listener {self.runner_id}",
            timeout=self.timeout,
        )
        self._conn = conn
        with conn.cursor() as cur:
            channel = sql.Identifier(channel_name(self.table_oid()))
            cur.execute(sql.SQL("LISTEN {}").format(channel))
        self._last_heard = time.monotonic()
        self.wakeup.set()  # notifications may have been missed while away

    def _receive(self) -> None:
        conn = self._conn
        try:
            gevent.socket.wait_read(conn.fileno(), timeout=self.poll_interval)
        except TimeoutError:
            self._ping_if_quiet()
        else:
            conn.poll()
            self._last_heard = time.monotonic()
        # Also what arrived during a ping: psycopg2 keeps it in notifies.
        if not conn.notifies:
            return
        for notify in conn.notifies:
            kind, _, job_id = notify.payload.partition(":")
            if kind == "cancel" and job_id.isdigit():
                self.cancelled(int(job_id))
        conn.notifies.clear()
        self.wakeup.set()

    def _ping_if_quiet(self) -> None:
        """A connection that only listens hears nothing from a server that went silent
        (or from a proxy that stopped forwarding): ask something now and then, bounded
        by ``timeout``, so a dead path is noticed and replaced."""
        if time.monotonic() - self._last_heard < self.timeout:
            return
        with self._conn.cursor() as cur:
            cur.execute("SELECT 1")
        self._last_heard = time.monotonic()

    def close(self) -> None:
        """Drop the connection (a later step opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
