"""The hub guard re-arms faulthandler's timer about once a second, not at every beat:
each re-arm holds the GIL while it joins the old timer thread and starts a new one,
which stalls the whole hub for milliseconds when the cores are busy. (That a hub stuck
in C still ends the process is tests/acceptance/test_quarantine.py's.)"""

from __future__ import annotations

import faulthandler
import itertools
import time
from typing import Any, cast

import pytest

from backy_gevent.runner.guard import CHECK_EVERY, REARM_EVERY, HubGuard


def test_beats_rearm_faulthandler_about_once_a_second_for_stuck_after_plus_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    armed: list[tuple[float, float]] = []  # (when, timeout)
    monkeypatch.setattr(faulthandler, "dump_traceback_later",
                        lambda timeout, exit=False: armed.append((time.monotonic(), timeout)))
    guard = HubGuard(cast(Any, None), stuck_after=6.0)
    started = time.monotonic()
    beats = 0
    while len(armed) < 3 and time.monotonic() - started < 10:  # as the hub's timer beats
        guard._beat()
        beats += 1
        time.sleep(CHECK_EVERY / 2)
    assert len(armed) == 3  # at the first beat, then about a second apart
    assert beats >= 2 * REARM_EVERY / (CHECK_EVERY / 2) * 0.5  # most beats did not re-arm
    assert all(timeout == 6.0 + REARM_EVERY for _, timeout in armed)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(armed)]
    assert all(REARM_EVERY <= gap < REARM_EVERY + 0.5 for gap in gaps), gaps
