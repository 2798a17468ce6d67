"""A pool of long-lived greenlets per worker, sized by the worker's ``max_concurrency``.

Greenlets are reused from job to job (starting one costs about as much as the rest of a
job's overhead); a pool with unlimited concurrency grows to what it needs and lets
greenlets that stay idle for a minute go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.queue import Empty, Queue

from backy_gevent.job import Job
from backy_gevent.runner.executor import Executor, HandBack, JobRevoked
from backy_gevent.worker import Registration, is_limited

log = logging.getLogger("backy_gevent.pools")

IDLE_GREENLET_SECONDS = 60.0


class WorkerPool:
    """Runs the claimed jobs of one worker, at most ``max_concurrency`` at a time."""

    def __init__(
        self,
        registration: Registration,
        executor: Executor,
        *,
        fetch_limit: int,
        on_slot_free: Callable[[WorkerPool], None],
    ) -> None:
        self.registration = registration
        self.name = registration.name
        self.capacity = registration.cls.max_concurrency
        #: Claimed by the statement that takes turns with other runners (a fleet-wide
        #: ``global_concurrency`` or ``rate_limit``).
        self.limited = is_limited(registration.cls)
        self.fetch_limit = fetch_limit
        self.executor = executor
        self.on_slot_free = on_slot_free
        self.in_flight = 0  # claimed and not finished: waiting in the queue or running
        self.maybe_more = True  # the table may hold more due jobs of this worker
        #: The last claim was cut by a fleet-wide limit (global_concurrency, rate_limit):
        #: due jobs wait, but claiming again at once would find no more room.
        self.capped = False
        self._queue: Queue[Job] = Queue()
        self._idle_greenlets = 0
        self._greenlets: set[gevent.Greenlet] = set()
        #: Set while no job of this pool is in flight.
        self.drained = Event()
        self.drained.set()

    def free_slots(self) -> int:
        """How many jobs to claim now: the free slots, or a batch when unlimited."""
        if self.capacity is None:
            return max(0, self.fetch_limit - self._queue.qsize())
        return max(0, min(self.capacity - self.in_flight, self.fetch_limit))

    def submit(self, job: Job) -> None:
        """Queue a claimed job; a free greenlet (or a new one, within capacity) runs it."""
        self.in_flight += 1
        self.drained.clear()
        self._queue.put(job)
        if self._idle_greenlets < self._queue.qsize() and (
            self.capacity is None or len(self._greenlets) < self.capacity
        ):
            greenlet = gevent.spawn(self._serve)
            self._greenlets.add(greenlet)
            greenlet.link(self._greenlets.discard)

    def _serve(self) -> None:
        while True:
            self._idle_greenlets += 1
            try:
                job = self._queue.get(timeout=IDLE_GREENLET_SECONDS)
            except Empty:
                return
            finally:
                self._idle_greenlets -= 1
            if self.capacity is None and self._queue.qsize() <= self.fetch_limit // 2:
                # An unlimited pool's room is its queue of claimed jobs, not its running
                # ones: with half the batch taken, the next is claimed while the rest
                # start, so the greenlets are not idle while a claim is on its way.
                self.on_slot_free(self)
            try:
                self.executor.run(job, self.registration)
            except gevent.GreenletExit:
                self._finish(job)
                raise
            except (HandBack, JobRevoked):
                # Only thrown into an attempt inside perform, and reported there; one
                # thrown as perform returned is already too late to matter.
                pass
            except BaseException:
                log.exception("the executor failed on job %s; the lease will rescue it", job.id)
            self._finish(job)

    def _finish(self, job: Job) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.drained.set()
        self.on_slot_free(self)

    def take_unstarted(self) -> list[Job]:
        """Remove and return the claimed jobs no greenlet has started (for shutdown)."""
        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except Empty:
                break
        self.in_flight -= len(jobs)
        if not self.in_flight:
            self.drained.set()
        return jobs

    def join(self, timeout: float | None) -> bool:
        """Wait until no job is in flight; True if that happened within ``timeout``."""
        return bool(self.drained.wait(timeout))

    def stop(self) -> None:
        """End the pool's greenlets (after the jobs are drained or handed back)."""
        gevent.killall(list(self._greenlets), block=False)
