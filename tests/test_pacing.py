"""Pacing: under a stream of wake-ups a runner claims (and writes outcomes) once per gap,
not once per job; an isolated wake-up is claimed at once; a wake-up claims for the
workers it names."""

from __future__ import annotations

import itertools
import time
from typing import Any

import gevent
from gevent.event import Event

from backy_gevent.config import Settings
from backy_gevent.runner.fetcher import STREAM_CLAIMS, Fetcher, Wakeup
from backy_gevent.runner.pacing import CLAIM_GAP, JITTER, STREAM_CLAIM_GAP, Spacing
from backy_gevent.runner.pools import WorkerPool
from backy_gevent.runner.supervision import DatabaseHealth
from backy_gevent.worker import Registration
from tests.test_pools import RecordingExecutor, Unlimited


def test_a_turn_after_a_quiet_spell_starts_at_once_and_the_next_waits_for_the_gap() -> None:
    spacing = Spacing(0.05)
    started = time.monotonic()
    spacing.wait_turn()
    first = time.monotonic() - started
    spacing.wait_turn()
    second = time.monotonic() - started
    gevent.sleep(0.06)
    before_third = time.monotonic()
    spacing.wait_turn()
    third = time.monotonic() - before_third
    assert first < 0.01
    assert 0.045 <= second < 0.09
    assert third < 0.01


def test_a_jittered_gap_varies_within_its_share() -> None:
    spacing = Spacing(0.02, jitter=0.25)
    spacing.wait_turn()
    gaps = []
    for _ in range(8):
        before = time.monotonic()
        spacing.wait_turn()
        gaps.append(time.monotonic() - before)
    assert all(0.015 * 0.99 <= gap < 0.04 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.0005, "every gap was the same"


class CountingFetcher(Fetcher):
    """A Fetcher whose claim records when it was asked, instead of asking a database."""

    def __init__(self, wakeup: Wakeup, *pools: WorkerPool) -> None:
        self.streams: list[bool] = []  # what on_stream was told, in order
        self.wanted: list[set[str]] = []  # the workers each claim was for
        self.quiet_ended: list[int] = []  # at each end_quiet, len(streams)
        super().__init__(
            Settings(), None, None, "test-runner",  # type: ignore[arg-type]
            {pool.name: pool for pool in pools},
            wakeup=wakeup, notified=lambda: True, stopping=Event(), health=DatabaseHealth(),
            on_stream=self.streams.append,
        )
        self.claims: list[float] = []
        #: How many jobs each claim finds (never a full batch).
        self.finds = 0
        #: Whether another runner follows the stream already (start_following says no).
        self.others_follow = False

    def claim(self, wanted: dict[WorkerPool, int]) -> int:
        self.claims.append(time.monotonic())
        self.wanted.append({pool.name for pool in wanted})
        for pool in wanted:
            pool.maybe_more = False
        return self.finds

    def start_following(self) -> bool:
        return not self.others_follow

    def end_quiet(self) -> None:
        # Not asked of a database: how many on_stream calls came before it.
        self.quiet_ended.append(len(self.streams))


def fetcher_loop(*names: str) -> tuple[Wakeup, CountingFetcher, Any]:
    wakeup = Wakeup()
    pools = [WorkerPool(Registration(name, Unlimited, "test"),
                        RecordingExecutor(), fetch_limit=100,  # type: ignore[arg-type]
                        on_slot_free=wakeup.slot_freed)
             for name in names or [str(Unlimited.name)]]
    fetcher = CountingFetcher(wakeup, *pools)

    def loop() -> None:
        while True:
            fetcher.step()

    return wakeup, fetcher, gevent.spawn(loop)


def test_a_stream_of_wake_ups_shares_claims_and_a_lone_one_is_claimed_at_once() -> None:
    wakeup, fetcher, loop = fetcher_loop()
    try:
        gevent.sleep(0.05)
        # 200 notifications in 0.2 s (1,000 a second): one claim per gap, not per job.
        started = time.monotonic()
        for _ in range(200):
            wakeup.set()
            gevent.sleep(0.001)
        gevent.sleep(CLAIM_GAP * 2)
        during = [at for at in fetcher.claims if at >= started]
        elapsed = time.monotonic() - started
        assert 2 <= len(during) <= elapsed / CLAIM_GAP + 2, len(during)
        # The last wake-up of the stream is followed by a claim (none is left waiting).
        assert during[-1] > started + 0.2 - 0.001
        # After a quiet spell, a lone wake-up is claimed at once.
        gevent.sleep(CLAIM_GAP * 3)
        woken = time.monotonic()
        wakeup.set()
        gevent.sleep(CLAIM_GAP / 2)
        assert fetcher.claims[-1] >= woken
        assert fetcher.claims[-1] - woken < CLAIM_GAP / 2
    finally:
        loop.kill()


def test_news_waits_for_the_pending_claim_to_start_and_no_longer() -> None:
    wakeup, fetcher, loop = fetcher_loop()
    try:
        gevent.sleep(0.05)
        wakeup.set()
        gevent.sleep(0)  # the fetcher takes it at once: nothing pending now
        started = time.monotonic()
        wakeup.wait_taken(timeout=1.0)
        assert time.monotonic() - started < 0.005
        wakeup.set()  # within the gap: this one is taken only when the next claim starts
        started = time.monotonic()
        wakeup.wait_taken(timeout=1.0)
        waited = time.monotonic() - started
        # No longer than the gap (varied by up to a quarter), with room for a busy machine.
        assert 0 < waited <= CLAIM_GAP * (1 + JITTER) + 0.01
        assert fetcher.claims[-1] >= started
    finally:
        loop.kill()


def test_a_stream_of_found_jobs_is_followed_without_wake_ups_until_it_thins() -> None:
    wakeup, fetcher, loop = fetcher_loop()
    try:
        gevent.sleep(0.05)
        fetcher.finds = 1
        # Lone wake-ups whose claims find jobs are no stream: nothing changes.
        for _ in range(STREAM_CLAIMS + 1):
            wakeup.set()
            gevent.sleep(CLAIM_GAP * 2)
        assert fetcher.streams == []
        # Nor are wake-ups faster than the claims may start whose claims bring one job
        # each: a trickle, which notifications serve sooner than stream claims would.
        for _ in range(int(STREAM_CLAIMS * CLAIM_GAP * 2 / 0.001)):
            wakeup.set()
            gevent.sleep(0.001)
        assert fetcher.streams == []
        # Wake-ups faster than the claims may start, claims bringing several: a stream.
        fetcher.finds = 5
        for _ in range(int(STREAM_CLAIMS * CLAIM_GAP * 2 / 0.001)):
            wakeup.set()
            gevent.sleep(0.001)
        assert fetcher.streams == [True]
        # Followed with no wake-up at all: a claim about every stream gap, which is
        # longer than the gap of claims woken by notifications.
        before = len(fetcher.claims)
        gevent.sleep(STREAM_CLAIM_GAP * 10)
        followed = fetcher.claims[before:]
        assert 4 <= len(followed) <= 14
        assert min(b - a for a, b in itertools.pairwise(followed)) >= (
            STREAM_CLAIM_GAP * (1 - JITTER) - 0.002)
        # One claim that finds nothing does not end it (a runner sharing the stream with
        # others finds nothing now and then), nor one that finds a single job.
        fetcher.finds = 0
        gevent.sleep(STREAM_CLAIM_GAP * 1.5)
        fetcher.finds = 5
        gevent.sleep(STREAM_CLAIM_GAP * 3)
        fetcher.finds = 1
        gevent.sleep(STREAM_CLAIM_GAP * 1.5)
        fetcher.finds = 5
        gevent.sleep(STREAM_CLAIM_GAP * 3)
        assert fetcher.streams == [True]
        # As many claims in a row as it took to start, each with a job or none (a
        # trickle, which notifications serve sooner), end it.
        fetcher.finds = 1
        gevent.sleep(STREAM_CLAIM_GAP * 1.25 * (STREAM_CLAIMS + 1))
        assert fetcher.streams == [True, False]
        # Enqueues were told to notify again (end_quiet) before the listener was roused.
        assert fetcher.quiet_ended == [1]
        assert fetcher.spacing.gap == CLAIM_GAP  # woken claims are spaced as before
        before = len(fetcher.claims)
        gevent.sleep(CLAIM_GAP * 5)
        assert len(fetcher.claims) == before
    finally:
        loop.kill()


def test_a_stream_another_runner_follows_already_is_left_to_it() -> None:
    wakeup, fetcher, loop = fetcher_loop()
    try:
        gevent.sleep(0.05)
        fetcher.finds = 5
        fetcher.others_follow = True
        for _ in range(int(STREAM_CLAIMS * CLAIM_GAP * 4 / 0.001)):
            wakeup.set()
            gevent.sleep(0.001)
        # Pressed claims that found jobs, several times STREAM_CLAIMS of them: still
        # claiming only when woken, never following.
        assert len(fetcher.claims) > 2 * STREAM_CLAIMS and fetcher.streams == []
        gevent.sleep(CLAIM_GAP * 2)  # the last wake-up's claim
        before = len(fetcher.claims)
        gevent.sleep(STREAM_CLAIM_GAP * 5)
        assert len(fetcher.claims) == before
        # The other runner stopped following: this one may follow now.
        fetcher.others_follow = False
        for _ in range(int(STREAM_CLAIMS * CLAIM_GAP * 2 / 0.001)):
            wakeup.set()
            gevent.sleep(0.001)
        assert fetcher.streams == [True]
    finally:
        loop.kill()


def test_a_wake_up_claims_for_the_workers_it_names_and_an_unnamed_one_for_all() -> None:
    wakeup, fetcher, loop = fetcher_loop("mail", "report", "resize")
    try:
        gevent.sleep(0.05)
        del fetcher.wanted[:]
        wakeup.set("mail")
        gevent.sleep(CLAIM_GAP * 2)
        # Two notifications before the claim: one claim, for both.
        wakeup.set("report")
        wakeup.set("resize")
        gevent.sleep(CLAIM_GAP * 2)
        wakeup.set("report")
        wakeup.set()  # a rescue, a reconnection: any worker's jobs may be due
        gevent.sleep(CLAIM_GAP * 2)
        wakeup.set_later(CLAIM_GAP, "resize")
        gevent.sleep(CLAIM_GAP * 3)
        assert fetcher.wanted == [
            {"mail"}, {"report", "resize"}, {"mail", "report", "resize"}, {"resize"}]
    finally:
        loop.kill()
    # A poll (a wait that nothing woke) is for every worker.
    wakeup = Wakeup()
    wakeup.set("mail")
    assert wakeup.clear() == {"mail"}
    wakeup.wait(timeout=0.001)
    assert wakeup.clear() is None
