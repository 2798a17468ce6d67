"""psycopg2 on gevent: cooperative waits, bounded when the server goes silent, and
interrupted queries cancelled on the server without ever blocking the hub.

psycopg2 calls a wait callback whenever a connection waits for the server. This one
yields to the gevent hub while it waits (what psycogreen does), with what it waits with
made once per connection (``Waits``), and with two additions:

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
from gevent.exceptions import ConcurrentObjectUseError
from greenlet import getcurrent
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
    try:
        _wait(conn, _waits_of(conn))
    except psycopg2.Error:
        raise
    except BaseException as interrupt:
        silence = getattr(conn, "silence_timeout", None)
        bound = min(silence or CANCEL_TIMEOUT, CANCEL_TIMEOUT)
        if _cancel(conn, bound):
            # The server's answer to the cancel (an error, or the result of a query that
            # finished first): the query is over before we go on.
            with contextlib.suppress(psycopg2.Error):
                _wait(conn, Waits(gevent.get_hub(), conn.fileno(), bound))
        raise interrupt from None


class Waits:
    """What one connection's socket is waited on with: gevent's watchers for reading
    and for writing, and, with ``silence``, a clock that raises ``DatabaseSilent`` in
    the waiting greenlet when the server sends nothing for that long.

    A connection keeps its own (``BoundedConnection.green_waits``) for as long as its
    socket lasts. gevent's ``wait_read`` makes and closes a watcher per wait, and a
    ``gevent.Timeout`` its timer, and the callback built its ``DatabaseSilent`` before
    each query was sent: after a pause (an idle runner's claim, a single enqueue) a
    ``SELECT 1`` on a runner's connection took 0.41-0.45 ms, now 0.35-0.39. The
    runner's listener waits between notifications with one of its own, bounded by the
    poll interval.
    """

    __slots__ = ("_clock", "fileno", "hub", "read", "silence", "write")

    def __init__(self, hub: Any, fileno: int, silence: float | None) -> None:
        self.hub = hub
        self.fileno = fileno
        self.silence = silence
        self.read = hub.loop.io(fileno, 1)
        self.write = hub.loop.io(fileno, 2)
        # Repeating, so that ``again`` starts it afresh each wait: ``start`` would go on
        # from what the last wait left of it (libev keeps a stopped timer's remainder).
        self._clock = hub.loop.timer(silence, silence) if silence else None

    def wait(self, watcher: Any) -> None:
        """Wait until ``watcher`` (``read`` or ``write``) fires, or the silence ends it."""
        if watcher.callback is not None:
            raise ConcurrentObjectUseError(f"fd {self.fileno} is waited on already")
        clock = self._clock
        if clock is None:
            self.hub.wait(watcher)
            return
        # update: count from now, not from when the hub last ran (what gevent.Timeout does).
        clock.again(self._expire, getcurrent(), update=True)
        try:
            self.hub.wait(watcher)
        finally:
            clock.stop()

    def _expire(self, waiting: Any) -> None:
        # A new error each time: one raised again would carry its old traceback along.
        waiting.throw(DatabaseSilent(f"the database sent nothing for {self.silence:g}s"))


def _waits_of(conn: Any) -> Waits:
    """``conn``'s ``Waits``, made again when its socket (or the thread's hub) changed: a
    connection attempt may try several addresses, each with a socket of its own."""
    hub = gevent.get_hub()
    fileno = conn.fileno()
    waits = getattr(conn, "green_waits", None)
    if waits is None or waits.fileno != fileno or waits.hub is not hub:
        waits = Waits(hub, fileno, getattr(conn, "silence_timeout", None))
        # A plain psycopg2 connection has nowhere to keep them: it makes them every wait.
        with contextlib.suppress(AttributeError):
            conn.green_waits = waits
    return waits


def _wait(conn: Any, waits: Waits) -> None:
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            waits.wait(waits.read)
        elif state == extensions.POLL_WRITE:
            waits.wait(waits.write)
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
