"""psycopg2 on gevent: cooperative waits, bounded when the server goes silent, and
interrupted queries cancelled on the server without ever blocking the hub.

psycopg2 calls a wait callback whenever a connection waits for the server. This one
yields to the gevent hub while it waits (what psycogreen does), with two additions:

- **Silence.** A connection that carries a ``silence_timeout`` (the runner's own, see
  ``db.connections``) gives up when the server sends nothing for that long, raising
  ``DatabaseSilent`` (an ``OperationalError``, so the connection is dropped and the
  caller's retry logic takes over). TCP keepalives can't see this when something in
  between (a proxy, a stalled NAT) keeps the socket open: only a clock can.
- **Interrupts.** When the waiting greenlet is interrupted (a ``JobTimeout``, a
  hand-back at shutdown), the query would go on running on the server, holding its
  locks. The callback sends a cancel request, waits (bounded) until the server has
  given the query up, and re-raises the interrupt. libpq's ``PQcancel`` blocks, and
  psycopg2 calls it without releasing the GIL, so a silent server would freeze the whole
  process; it is called here through ctypes (which releases the GIL) in a thread of
  gevent's pool, and abandoned after a bound if the server never answers.

psycopg2 closes a connection whose wait callback raised; the point of the cancel is the
server side.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from typing import Any

import gevent
import psycopg2
import psycopg2._psycopg
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

log = logging.getLogger("backy_gevent.db")

#: How long the cancel of an interrupted query may take, and then the server's answer:
#: an interrupt (a shutdown above all) must not wait on a server that does not answer.
CANCEL_TIMEOUT = 2.0


class DatabaseSilent(psycopg2.OperationalError):
    """The server sent nothing for longer than the connection's ``silence_timeout``."""


def cancelling_wait_callback(conn: Any, timeout: float | None = None) -> None:
    """Wait for ``conn`` cooperatively; bounded by its ``silence_timeout``, if any; on an
    interrupt, cancel the query on the server."""
    silence = getattr(conn, "silence_timeout", None)
    try:
        _wait(conn, silence)
    except psycopg2.Error:
        raise
    except BaseException as interrupt:
        bound = min(silence or CANCEL_TIMEOUT, CANCEL_TIMEOUT)
        if _cancel(conn, bound):
            # The server's answer to the cancel (an error, or the result of a query that
            # finished first): the query is over before we go on.
            with contextlib.suppress(psycopg2.Error):
                _wait(conn, bound)
        raise interrupt from None


def _wait(conn: Any, silence: float | None) -> None:
    silent = DatabaseSilent(f"the database sent nothing for {silence:g}s") if silence else None
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            wait_read(conn.fileno(), timeout=silence, timeout_exc=silent)
        elif state == extensions.POLL_WRITE:
            wait_write(conn.fileno(), timeout=silence, timeout_exc=silent)
        else:
            raise psycopg2.OperationalError(f"bad result from poll: {state!r}")


def _cancel(conn: Any, bound: float) -> bool:
    """Ask the server to cancel ``conn``'s query, without blocking the hub for longer
    than ``bound``; False when the request could not be sent."""
    libpq = _libpq()
    handle = libpq.PQgetCancel(conn.pgconn_ptr) if libpq is not None else None
    if not handle:
        return False
    errors = ctypes.create_string_buffer(256)
    request = gevent.get_hub().threadpool.spawn(libpq.PQcancel, handle, errors, 256)
    try:
        sent = request.get(timeout=bound)
    except gevent.Timeout:
        # The thread stays blocked until the server or the kernel answers; the hub is free.
        log.warning("cancelling a query: no answer from the server in %gs; giving up", bound)
        return False
    finally:
        if request.ready():
            libpq.PQfreeCancel(handle)
    return bool(sent)


@functools.cache
def _libpq() -> Any:
    """libpq's cancel functions, from the library psycopg2 itself is linked to."""
    try:
        library = ctypes.CDLL(psycopg2._psycopg.__file__)
        library.PQgetCancel.restype = ctypes.c_void_p
        library.PQgetCancel.argtypes = [ctypes.c_void_p]
        library.PQcancel.restype = ctypes.c_int
        library.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        library.PQfreeCancel.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        log.warning("libpq's cancel functions are not reachable: interrupted queries are"
                    " left to finish on the server")
        return None
    return library


def install() -> None:
    """Make psycopg2 cooperative with gevent, bounding silence and cancelling interrupted
    queries."""
    extensions.set_wait_callback(cancelling_wait_callback)
