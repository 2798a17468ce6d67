"""psycopg2 on gevent (psycogreen's wait callback), cancelling interrupted queries.

psycogreen lets psycopg2 yield to the gevent hub while a query runs. When the waiting
greenlet is interrupted (a ``JobTimeout``, a hand-back at shutdown), the query would go
on running on the server, holding its locks, long after the job gave up. This callback wraps
psycogreen's: on an interrupt it sends a cancel request, waits until the server has
given up the query, and then re-raises the interrupt. (psycopg2 then closes that
connection, as it does whenever a wait callback raises; the point is the server side.)
"""

from __future__ import annotations

from typing import Any

import psycopg2
from psycogreen.gevent import gevent_wait_callback
from psycopg2 import extensions


def cancelling_wait_callback(conn: Any, timeout: float | None = None) -> None:
    """Wait for ``conn`` cooperatively; on an interrupt, cancel the query on the server."""
    try:
        gevent_wait_callback(conn, timeout)
    except psycopg2.Error:
        raise
    except BaseException as interrupt:
        try:
            conn.cancel()
            # Wait for the server's answer to the cancel (an error, or the result of a
            # query that finished first), so the query is over before we go on.
            gevent_wait_callback(conn, timeout)
        except psycopg2.Error:
            pass
        raise interrupt from None


def install() -> None:
    """Make psycopg2 cooperative with gevent, cancelling interrupted queries."""
    extensions.set_wait_callback(cancelling_wait_callback)
