"""backy_gevent.backoff: exponential retry delays with jitter and a cap, usable as a
worker's class attribute and as the config file's ``retry_delay``."""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

import gevent
import pytest

import backy_gevent as backy
from backy_gevent.backoff import ExponentialBackoff, exponential
from backy_gevent.config import Settings, load_settings
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.job import Job
from backy_gevent.runner.executor import Executor
from backy_gevent.worker import Registration


def test_without_jitter_each_retry_waits_factor_times_longer_up_to_the_cap() -> None:
    backoff = exponential(base=1.0, factor=2.0, cap=300.0, jitter=0)
    assert [backoff(retry) for retry in range(1, 12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert exponential(base=5, factor=3, cap=100, jitter=0)(3) == 45.0


def test_the_defaults_spread_ten_retries_over_about_a_quarter_of_an_hour() -> None:
    assert repr(exponential()) == "exponential(base=1, factor=2, cap=300, jitter=0.1)"
    backoff = exponential(jitter=0)
    assert sum(backoff(retry) for retry in range(1, 11)) == 811.0  # 1 + 2 + ... + 256 + 300


@pytest.mark.parametrize("seed", range(20))
def test_jitter_stays_within_its_fraction_and_never_passes_the_cap(seed: int) -> None:
    jitter, cap = 0.25, 100.0
    backoff = exponential(base=3.0, factor=2.0, cap=cap, jitter=jitter,
                          rng=random.Random(seed).random)
    for retry in range(1, 40):
        delay = backoff.delay(retry)
        chosen = backoff(retry)
        assert delay * (1 - jitter) <= chosen <= min(delay * (1 + jitter), cap)


def test_the_random_source_picks_the_point_in_the_range() -> None:
    def at(point: float) -> ExponentialBackoff:
        return exponential(base=10.0, factor=2.0, cap=1000.0, jitter=0.1, rng=lambda: point)

    assert at(0.0)(1) == pytest.approx(9.0)
    assert at(0.5)(1) == pytest.approx(10.0)
    assert at(0.999999)(1) == pytest.approx(11.0)
    # At the cap the range is cut there, not piled up on it: [900, 1000], evenly.
    assert at(0.0)(20) == pytest.approx(900.0)
    assert at(0.5)(20) == pytest.approx(950.0)
    assert at(0.999999)(20) == pytest.approx(1000.0)
    # A source that strays outside [0, 1) can't break the bounds.
    assert at(7.0)(1) == pytest.approx(11.0) and at(-1.0)(1) == pytest.approx(9.0)


def test_an_injected_random_source_makes_delays_repeatable() -> None:
    first = exponential(rng=random.Random(42).random)
    second = exponential(rng=random.Random(42).random)
    assert [first(retry) for retry in range(1, 10)] == [second(retry) for retry in range(1, 10)]


def test_retry_numbers_far_past_the_cap_give_the_cap() -> None:
    backoff = exponential(base=1.0, factor=2.0, cap=60.0, jitter=0)
    assert backoff(5000) == backoff(1_000_000) == 60.0  # 2.0 ** 999_999 would overflow


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"base": -1}, "base must be a number from 0 to 10,000,000,000, not -1"),
        ({"factor": 0.5}, "factor must be a number of at least 1, not 0.5"),
        ({"cap": float("nan")}, "cap must be a number from 0 to 10,000,000,000, not nan"),
        ({"cap": 1e11}, "cap must be a number from 0 to 10,000,000,000"),
        ({"jitter": 1.5}, "jitter must be a number from 0 to 1, not 1.5"),
        ({"base": True}, "base must be a number"),
        ({"base": "1"}, "base must be a number"),
        ({"factor": float("inf")}, "factor must be a number of at least 1, not inf"),
        ({"factor": 10**400}, "factor must be a number of at least 1"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^exponential: " + message.replace(".", r"\.")):
        exponential(**arguments)


def test_it_reads_back_as_it_was_written() -> None:
    assert repr(exponential(base=5, cap=600)) == (
        "exponential(base=5, factor=2, cap=600, jitter=0.1)")


class CallsAnApi(backy.Worker):
    name = "calls_an_api"
    retry_count = 8
    retry_delay = exponential(base=5.0, cap=600.0, jitter=0)

    def perform(self, job: Job, args: dict[str, Any]) -> None:
        raise ConnectionError("the service is down")


def test_as_a_worker_class_attribute_it_is_not_turned_into_a_method() -> None:
    assert CallsAnApi().retry_delay(3) == 20.0  # no self passed as the retry number


class Sink:
    def __init__(self) -> None:
        self.retries: list[float | None] = []

    def failed(self, job: Job, error: dict[str, Any], retry_in: float | None) -> None:
        self.retries.append(retry_in)


def test_the_executor_schedules_retries_with_the_workers_backoff() -> None:
    sink = Sink()
    hooks = Hooks(build_plugin_manager(load_entry_points=False))
    executor = Executor(Settings(), hooks, sink)  # type: ignore[arg-type]
    now = datetime.datetime.now(datetime.timezone.utc)
    for attempt in (1, 2, 3, 8):
        job = Job(id=attempt, worker="calls_an_api", args={}, queue="default", priority=0,
                  state="running", attempt=attempt, max_attempts=9, run_at=now,
                  enqueued_at=now)
        gevent.spawn(executor.run, job, Registration("calls_an_api", CallsAnApi, "t")).join()
    assert sink.retries == [5.0, 10.0, 20.0, 600.0]


@pytest.mark.parametrize(
    "source",
    [
        "from backy_gevent.backoff import exponential\n"
        "retry_delay = exponential(base=2.0, cap=600.0, jitter=0)\n",
        "import backy_gevent as backy\n"
        "retry_delay = backy.backoff.exponential(base=2.0, cap=600.0, jitter=0)\n",
    ],
)
def test_as_the_config_files_retry_delay(tmp_path: Path, source: str) -> None:
    config = tmp_path / "backy.conf.py"
    config.write_text(source)
    settings = load_settings(environ={}, config_file=config)
    assert isinstance(settings.retry_delay, ExponentialBackoff)
    assert [settings.retry_delay(retry) for retry in (1, 2, 3, 20)] == [2.0, 4.0, 8.0, 600.0]


def test_the_default_retry_delay_stays_backys() -> None:
    assert [round(Settings().retry_delay(retry), 3) for retry in (1, 2, 3)] == [
        0.101, 0.108, 0.127]
