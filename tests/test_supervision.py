"""The supervisor of the runner's loops, without a database: what it retries, what it
counts, what it reports, and when it gives up."""

from __future__ import annotations

import gevent
import psycopg2
from gevent.event import Event

from backy_gevent.runner.supervision import Backoff, DatabaseHealth, Supervisor


def supervisor(give_up_after: float = 60.0) -> tuple[Supervisor, list[str]]:
    given_up: list[str] = []
    return (
        Supervisor(DatabaseHealth(), give_up_after=give_up_after,
                   on_give_up=lambda loop, exc: given_up.append(f"{loop}: {exc}")),
        given_up,
    )


def test_a_bug_is_retried_counted_reported_then_given_up() -> None:
    sup, given_up = supervisor(give_up_after=0.5)
    calls = []

    def step() -> None:
        calls.append(1)
        raise ValueError("a bug")

    loop = gevent.spawn(sup.run, "claiming jobs", step, stop=Event())
    gevent.sleep(0.2)
    trouble = sup.trouble()
    assert trouble is not None and trouble.startswith("claiming jobs failing for")
    assert trouble.endswith(": a bug")
    loop.join(5)
    assert loop.dead and given_up == ["claiming jobs: a bug"]
    assert sup.failures["claiming jobs"] == len(calls) >= 3  # with backoff, not spinning
    assert len(calls) < 10


def test_a_lost_database_is_retried_for_ever_and_never_given_up() -> None:
    sup, given_up = supervisor(give_up_after=0.1)

    def step() -> None:
        raise psycopg2.OperationalError("server closed the connection")

    stop = Event()
    loop = gevent.spawn(sup.run, "listening", step, stop=stop)
    gevent.sleep(0.5)
    assert not loop.dead and given_up == []
    assert sup.database.error == "server closed the connection"
    assert sup.trouble() is None and sup.failures == {}
    stop.set()
    loop.join(5)
    assert loop.dead


def test_a_step_that_succeeds_again_clears_the_trouble() -> None:
    sup, _ = supervisor()
    outcomes = iter([ValueError("once"), None, None])

    def step() -> float:
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome
        return 0.05

    stop = Event()
    loop = gevent.spawn(sup.run, "maintenance", step, stop=stop)
    gevent.sleep(0.3)
    assert sup.trouble() is None and sup.failures["maintenance"] == 1
    stop.set()
    loop.join(5)


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next_delay() == 0.1
