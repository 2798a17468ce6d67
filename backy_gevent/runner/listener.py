"""The listener: LISTEN on the jobs table's channel, on an autocommit connection of its own.

What the notifications say (``queries.sql`` sends them):

- ``{"worker": w, "queue": q, "in": s}``: jobs of worker ``w`` in queue ``q`` were
  enqueued, due in ``s`` seconds (0: now). A runner that serves them wakes its fetcher,
  now or then; the others ignore it, so runners of other workers are not woken;
- an empty payload: work of any kind became available (a rescue, a retry, a hand-back);
- ``cancel:<id>``: that job was cancelled; its attempt is stopped at once if it runs here;
- ``pause:<queue>``, ``resume:<queue>``: a queue was paused (the claims skip it: nothing
  to do) or resumed (a runner that serves it wakes its fetcher, for the jobs that waited).

Under a stream of enqueues the notifications say nothing new: the fetcher then claims on
its own, every claim gap, while its claims find jobs (``Fetcher``: a stream). Listening
would still cost: PostgreSQL wakes every session that listens in the database, on any
channel, at every commit that notifies, and at a few thousand commits a second one
listening session costs the enqueuers about a twentieth of their rate (measured with
raw processes, ``scripts/raw_runner_stream.py``). So while the fetcher follows a stream
the listener stops listening (UNLISTEN *), and it listens again when the stream ends.
Meanwhile the enqueues of the workers it follows don't notify at all (quiet enqueues,
``Fetcher.end_quiet`` and ``quiet_enqueues`` in queries.sql), which spares every other
listening session in the database too.

Whenever it starts listening (at start, after a reconnection, after a stream) the fetcher
is woken, since work may have come meanwhile, and the runner catches up on the rest that
notifications would have said (``catch_up``: the attempts running here that were
cancelled, the next job not yet due); while it does not listen, it catches up on the
cancellations every ``poll_interval``. LISTEN can't work through a transaction pooler (the
session that listens is not the client's for long): behind one, the runner says so once
and relies on polling every ``poll_interval`` (``listen_dsn`` points the listener at
PostgreSQL itself instead).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import gevent
from gevent.event import Event
from psycopg2 import sql

from backy_gevent.db.connections import CONNECTION_ERRORS, connect
from backy_gevent.db.green import DatabaseSilent, Waits
from backy_gevent.db.queries import channel_name
from backy_gevent.runner.fetcher import Wakeup

log = logging.getLogger("backy_gevent.runner")

#: How many distinct job notifications the listener remembers what they said.
KNOWN_PAYLOADS = 1024


class Listener:
    """Holds the LISTEN connection; ``step`` connects, or waits for notifications once."""

    def __init__(
        self,
        dsn: str,
        runner_id: str,
        *,
        table_oid: Callable[[], int],
        workers: Collection[str],
        queues: Collection[str],
        poll_interval: float,
        timeout: float,
        wakeup: Wakeup,
        cancelled: Callable[[int], None],
        catch_up: Callable[[bool], None],
    ) -> None:
        self.dsn = dsn
        self.runner_id = runner_id
        self.table_oid = table_oid
        self.workers = frozenset(workers)
        self.queues = frozenset(queues)  # empty: every queue
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.wakeup = wakeup
        self.cancelled = cancelled
        #: Called with True when listening starts, with False every poll while hushed.
        self.catch_up = catch_up
        #: True while notifications arrive: the fetcher may then poll less often.
        self.listening = False
        #: Set while notifications are wanted; cleared by ``hush`` (a stream flows).
        self._wanted = Event()
        self._wanted.set()
        self._conn: Any = None
        #: What the connection's socket is waited on with between notifications, bounded
        #: by ``poll_interval``: made once per connection, as its queries' are.
        self._between: Waits | None = None
        self._last_heard = 0.0  # time.monotonic() of the server's last sign of life
        self._behind_pooler = False
        #: What recent job notifications said (see ``_read_news``), by payload.
        self._news: dict[str, tuple[str | None, float]] = {}

    def step(self) -> float | None:
        """Connect and LISTEN if not connected, else handle what arrives within a poll."""
        if self._behind_pooler:
            return self.poll_interval * 60  # nothing to listen to: polling it is
        try:
            if self._conn is None:
                self._connect()
            elif not self.listening:
                self._wait_hushed()
            else:
                self._receive()
        except CONNECTION_ERRORS:
            self.close()
            raise
        return None

    def hush(self) -> None:
        """Stop listening, at the next notification: the fetcher follows a stream."""
        self._wanted.clear()

    def rouse(self) -> None:
        """Listen again, now: the stream ended."""
        self._wanted.set()

    def _connect(self) -> None:
        conn = connect(
            self.dsn, application_name=f"backy-gevent listener {self.runner_id}",
            timeout=self.timeout,
        )
        if conn.behind_pooler:
            conn.close()
            self._behind_pooler = True
            log.warning(
                "LISTEN can't work through a connection pooler: falling back to polling"
                " every %gs; set listen_dsn to reach PostgreSQL directly for notifications",
                self.poll_interval,
            )
            return
        self._conn = conn
        self._between = Waits(gevent.get_hub(), conn.fileno(), self.poll_interval)
        self._listen()

    def _listen(self) -> None:
        with self._conn.cursor() as cur:
            channel = sql.Identifier(channel_name(self.table_oid()))
            cur.execute(sql.SQL("LISTEN {}").format(channel))
        self._last_heard = time.monotonic()
        self.listening = True
        # Notifications may have been missed while away: claim, and catch up.
        self.wakeup.set()
        self.catch_up(True)

    def _unlisten(self) -> None:
        log.debug("not listening while a stream flows")
        with self._conn.cursor() as cur:
            cur.execute("UNLISTEN *")
        self.listening = False
        self._read_notifies()  # what came before the UNLISTEN took effect

    def _wait_hushed(self) -> None:
        """Not listening (a stream flows): wait to be roused, catching up on
        cancellations every poll interval meanwhile."""
        if self._wanted.wait(timeout=self.poll_interval):
            self._listen()
            return
        self._ping_if_quiet()
        self.catch_up(False)

    def _receive(self) -> None:
        conn, between = self._conn, self._between
        assert between is not None  # made with the connection
        try:
            between.wait(between.read)
        except DatabaseSilent:  # nothing for a poll interval
            self._ping_if_quiet()
        else:
            conn.poll()
            self._last_heard = time.monotonic()
        self._read_notifies()  # also what arrived during a ping: psycopg2 keeps it
        if not self._wanted.is_set():
            self._unlisten()
            return
        # Under a stream of enqueues, a notification arrives for every job. Once one has
        # woken the fetcher, the next ones can wait for its claim to start (they would
        # only wake it again for what that claim sees anyway): read them all then, in
        # one go, rather than waking for each.
        self.wakeup.wait_taken(timeout=self.poll_interval)

    def _read_notifies(self) -> None:
        notifies = self._conn.notifies
        for notify in notifies:
            self._handle(notify.payload)
        notifies.clear()

    def _handle(self, payload: str) -> None:
        # A job's notification, the commonest by far, has usually come before: what it
        # said is looked up first, before the other kinds are told apart.
        news = self._news.get(payload)
        if news is not None:
            self._wake_for(*news)
            return
        if payload.startswith("cancel:"):
            job_id = payload.partition(":")[2]
            if job_id.isdigit():
                self.cancelled(int(job_id))
            return
        if payload.startswith("pause:"):
            return
        if payload.startswith("resume:"):
            queue = payload.partition(":")[2]
            if not self.queues or queue in self.queues:
                self.wakeup.set()
            return
        if not payload.startswith("{"):
            self.wakeup.set()
            return
        self._wake_for(*self._read_news(payload))

    def _wake_for(self, worker: str | None, due_in: float) -> None:
        """Wake the fetcher for ``worker``'s jobs, due in ``due_in`` seconds (None: not
        a worker this runner serves)."""
        if worker is None:
            return
        if due_in > 0:
            self.wakeup.set_later(due_in, worker)
        else:
            self.wakeup.set(worker)

    def _read_news(self, payload: str) -> tuple[str | None, float]:
        """Which worker's jobs ``payload`` announces (None: not jobs this runner serves),
        and in how many seconds they are due. Under a stream the same few payloads come
        again and again (one per job): what they say is kept, for a bounded number."""
        message = json.loads(payload)
        worker = message.get("worker")
        news = (worker, float(message.get("in") or 0.0))
        if worker not in self.workers or (self.queues and message.get("queue") not in self.queues):
            news = (None, 0.0)
        if len(self._news) >= KNOWN_PAYLOADS:
            self._news.clear()
        self._news[payload] = news
        return news

    def _ping_if_quiet(self) -> None:
        """A connection that only listens hears nothing from a server that went silent
        (or from a proxy that stopped forwarding): ask something when it has been quiet
        for three ``timeout``s, bounded by ``timeout``, so a dead path is noticed and
        replaced. (The other loops notice a silent database sooner: this is for a path
        of the listener's own, ``listen_dsn``.)"""
        if time.monotonic() - self._last_heard < 3 * self.timeout:
            return
        with self._conn.cursor() as cur:
            cur.execute("SELECT 1")
        self._last_heard = time.monotonic()

    def close(self) -> None:
        """Drop the connection (a later step opens a new one)."""
        self.listening = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
