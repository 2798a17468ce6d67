"""The cron parser and tick finder (pure: the fast tier, no database)."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
from typing import Any

import pytest

import backy_gevent as backy
from backy_gevent.cron import CronError, Schedule, due_tick, next_run
from backy_gevent.errors import WorkerError
from backy_gevent.worker import Registry, check_worker_class

UTC = dt.timezone.utc
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def at(*fields: int) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=UTC)


def ticks(expression: str, timezone: str, start: dt.datetime, count: int) -> list[dt.datetime]:
    schedule = Schedule.parse(expression, timezone)
    found, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(moment)
    return found


def walls(expression: str, timezone: str, start: dt.datetime, count: int) -> list[str]:
    """The ticks as wall times with their offset, in the schedule's zone."""
    zone = Schedule.parse(expression, timezone).zone
    return [t.astimezone(zone).strftime("%m-%d %H:%M%z")
            for t in ticks(expression, timezone, start, count)]


# -- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "field", "values"), [
    ("*/5 * * * *", "minutes", set(range(0, 60, 5))),
    ("1-10/2 * * * *", "minutes", {1, 3, 5, 7, 9}),
    ("5/20 * * * *", "minutes", {5, 25, 45}),
    ("0,15,30-32 * * * *", "minutes", {0, 15, 30, 31, 32}),
    ("0 9-17 * * *", "hours", set(range(9, 18))),
    ("0 0 1,15 * *", "days", {1, 15}),
    ("0 0 * jan,JUL-sep *", "months", {1, 7, 8, 9}),
    ("0 0 * */3 *", "months", {1, 4, 7, 10}),
    ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
    ("0 0 * * 7", "weekdays", {0}),
    ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
    ("0 0 * * Sun,sat", "weekdays", {0, 6}),
    ("0 0 * * *", "weekdays", set(range(7))),
])
def test_fields_parse(expression: str, field: str, values: set[int]) -> None:
    assert getattr(Schedule.parse(expression), field) == values


@pytest.mark.parametrize(("macro", "expression"), [
    ("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *"),
])
def test_macros_are_their_expressions(macro: str, expression: str) -> None:
    start = at(2026, 5, 17, 13, 7)
    assert ticks(macro, "UTC", start, 3) == ticks(expression, "UTC", start, 3)


@pytest.mark.parametrize(("expression", "words"), [
    ("61 * * * *", "minute field: 61 is out of range 0-59"),
    ("* 24 * * *", "hour field: 24 is out of range 0-23"),
    ("* * 0 * *", "day-of-month field: 0 is out of range 1-31"),
    ("* * * 13 *", "month field: 13 is out of range 1-12"),
    ("* * * * 8", "day-of-week field: 8 is out of range 0-7"),
    ("* * * foo *", "month field: 'foo' is not a number or a name"),
    ("* * * * mon-xyz", "day-of-week field: 'xyz'"),
    ("*/0 * * * *", "minute field: step '0'"),
    ("1-2/x * * * *", "minute field: step 'x'"),
    ("5-1 * * * *", "minute field: range '5-1' runs backwards"),
    ("1,,2 * * * *", "minute field: empty item"),
    ("-1 * * * *", "minute field"),
    ("* * * *", "has 4 fields; a cron expression has five"),
    ("* * * * * *", "has 6 fields"),
    ("", "has 0 fields"),
    ("0 0 30 2 *", "day-of-month field never falls in the months"),
])
def test_a_bad_expression_names_its_field(expression: str, words: str) -> None:
    with pytest.raises(CronError) as raised:
        Schedule.parse(expression)
    assert words in str(raised.value)


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        Schedule.parse("* * * * *", "Mars/Olympus")


def test_february_29_is_allowed_and_comes_every_leap_year() -> None:
    assert ticks("0 0 29 2 *", "UTC", at(2026, 1, 1), 2) == [at(2028, 2, 29), at(2032, 2, 29)]


# -- ticks ----------------------------------------------------------------------------


def test_next_after_is_strictly_after() -> None:
    schedule = Schedule.parse("*/5 * * * *")
    assert schedule.next_after(at(2026, 1, 1, 12, 3, 59)) == at(2026, 1, 1, 12, 5)
    assert schedule.next_after(at(2026, 1, 1, 12, 5)) == at(2026, 1, 1, 12, 10)
    assert schedule.next_after(at(2026, 12, 31, 23, 59)) == at(2027, 1, 1)


def test_next_after_takes_any_aware_datetime_and_refuses_a_naive_one() -> None:
    schedule = Schedule.parse("0 * * * *")
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert schedule.next_after(dt.datetime(2026, 1, 1, 12, 30, tzinfo=plus_two)) == at(
        2026, 1, 1, 11)
    with pytest.raises(ValueError, match="aware"):
        schedule.next_after(dt.datetime(2026, 1, 1))


def test_both_day_fields_restricted_either_matches() -> None:
    # January 2026: the Fridays are the 2nd, 9th and 16th; the 13th is a Tuesday.
    assert ticks("0 0 13 * fri", "UTC", at(2026, 1, 1), 4) == [
        at(2026, 1, 2), at(2026, 1, 9), at(2026, 1, 13), at(2026, 1, 16)]


def test_one_day_field_restricted_both_must_match() -> None:
    # A day field starting with "*" (even "*/2") is not restricted: both must match.
    assert ticks("0 0 * * fri", "UTC", at(2026, 1, 1), 2) == [at(2026, 1, 2), at(2026, 1, 9)]
    assert ticks("0 0 13 * *", "UTC", at(2026, 1, 1), 2) == [at(2026, 1, 13), at(2026, 2, 13)]
    assert ticks("0 0 */2 * fri", "UTC", at(2026, 1, 1), 2) == [at(2026, 1, 9),
                                                                 at(2026, 1, 23)]


def test_the_schedule_is_in_its_time_zone() -> None:
    assert ticks("0 9 * * mon-fri", NEW_YORK, at(2026, 1, 2, 15), 2) == [
        at(2026, 1, 5, 14), at(2026, 1, 6, 14)]
    assert ticks("0 9 * * *", BERLIN, at(2026, 7, 1), 1) == [at(2026, 7, 1, 7)]


# -- daylight saving --------------------------------------------------------------------


def test_berlin_spring_gap_fires_at_the_first_instant_after_it() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    assert walls("30 2 * * *", BERLIN, at(2026, 3, 27), 4) == [
        "03-27 02:30+0100", "03-28 02:30+0100", "03-29 03:00+0200", "03-30 02:30+0200"]


def test_many_times_in_the_gap_fire_once() -> None:
    assert walls("*/15 2 * * *", BERLIN, at(2026, 3, 28, 1, 40), 3) == [
        "03-28 02:45+0100", "03-29 03:00+0200", "03-30 02:00+0200"]
    # Every half hour: 02:00 and 02:30 both fall in the gap, and 03:00 exists: one tick.
    assert walls("0,30 * * * *", BERLIN, at(2026, 3, 29, 0, 15), 3) == [
        "03-29 01:30+0100", "03-29 03:00+0200", "03-29 03:30+0200"]


def test_berlin_fall_back_fires_once_at_the_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    assert walls("30 2 * * *", BERLIN, at(2026, 10, 23), 4) == [
        "10-23 02:30+0200", "10-24 02:30+0200", "10-25 02:30+0200", "10-26 02:30+0100"]
    schedule = Schedule.parse("30 2 * * *", BERLIN)
    second_pass = at(2026, 10, 25, 1, 10)  # 02:10 CET, before the second 02:30
    assert schedule.next_after(second_pass) == at(2026, 10, 26, 1, 30)


def test_an_every_hour_schedule_runs_through_the_repeated_hour() -> None:
    # An hour field of "*" is about elapsed time: both passes of 02:xx fire.
    assert walls("*/20 * * * *", BERLIN, at(2026, 10, 24, 23, 30), 8) == [
        "10-25 01:40+0200", "10-25 02:00+0200", "10-25 02:20+0200", "10-25 02:40+0200",
        "10-25 02:00+0100", "10-25 02:20+0100", "10-25 02:40+0100", "10-25 03:00+0100"]
    # ... and a restricted hour does not repeat.
    assert walls("*/20 2 * * *", BERLIN, at(2026, 10, 24, 23, 30), 4) == [
        "10-25 02:00+0200", "10-25 02:20+0200", "10-25 02:40+0200", "10-26 02:00+0100"]


def test_new_york_gap_and_repeat() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    assert walls("30 2 * * *", NEW_YORK, at(2026, 3, 7), 3) == [
        "03-07 02:30-0500", "03-08 03:00-0400", "03-09 02:30-0400"]
    assert walls("30 1 * * *", NEW_YORK, at(2026, 10, 31), 3) == [
        "10-31 01:30-0400", "11-01 01:30-0400", "11-02 01:30-0500"]


@pytest.mark.parametrize("timezone", [BERLIN, NEW_YORK])
def test_a_daily_schedule_fires_once_a_day_all_year(timezone: str) -> None:
    found = ticks("30 2 * * *", timezone, at(2026, 1, 1), 365)
    zone = Schedule.parse("* * * * *", timezone).zone
    days = collections.Counter(t.astimezone(zone).date() for t in found)
    assert len(days) == 365 and set(days.values()) == {1}
    assert found == sorted(set(found))


@pytest.mark.parametrize("timezone", [BERLIN, NEW_YORK])
def test_an_hourly_schedule_keeps_an_hour_apart_across_both_changes(timezone: str) -> None:
    found = ticks("0 * * * *", timezone, at(2026, 1, 1), 24 * 365)
    gaps = {later - earlier for earlier, later in itertools.pairwise(found)}
    assert gaps == {dt.timedelta(hours=1)}


# -- what a runner enqueues -----------------------------------------------------------


def test_due_tick_is_the_latest_missed_tick_within_the_hour() -> None:
    schedule = Schedule.parse("*/10 * * * *")
    now = at(2026, 1, 1, 12, 34, 5)
    assert due_tick(schedule, at(2026, 1, 1, 12, 30), now) is None
    assert due_tick(schedule, at(2026, 1, 1, 12, 20), now) == at(2026, 1, 1, 12, 30)
    assert due_tick(schedule, at(2026, 1, 1, 3), now) == at(2026, 1, 1, 12, 30)
    assert next_run(schedule, at(2026, 1, 1, 12, 30), now) == at(2026, 1, 1, 12, 40)
    assert next_run(schedule, at(2026, 1, 1, 3), now) == at(2026, 1, 1, 12, 30)


def test_a_missed_tick_older_than_an_hour_is_skipped() -> None:
    daily = Schedule.parse("0 6 * * *")
    last = at(2026, 1, 1, 6)
    assert due_tick(daily, last, at(2026, 1, 2, 6, 59)) == at(2026, 1, 2, 6)
    assert due_tick(daily, last, at(2026, 1, 2, 7, 1)) is None
    assert next_run(daily, last, at(2026, 1, 2, 7, 1)) == at(2026, 1, 3, 6)


# -- workers ----------------------------------------------------------------------------


def worker(**attributes: Any) -> type[backy.Worker]:
    def perform(self: Any, job: Any, args: Any) -> None:
        return None

    return type("Periodic", (backy.Worker,), {"name": "periodic", "perform": perform,
                                             **attributes})


def test_a_worker_with_a_good_cron_registers() -> None:
    cls = worker(cron="*/5 * * * *", cron_timezone=BERLIN)
    assert "periodic" in Registry.from_classes(cls)


@pytest.mark.parametrize(("attributes", "words"), [
    ({"cron": "*/5 * * *"}, "cron='*/5 * * *'"),
    ({"cron": "0 25 * * *"}, "hour field: 25 is out of range"),
    ({"cron": 5}, "a cron expression is a string"),
    ({"cron": "* * * * *", "cron_timezone": "Nowhere/Land"}, "unknown time zone"),
    ({"cron_timezone": "Nowhere/Land"}, "unknown time zone"),
])
def test_a_worker_with_a_bad_cron_is_refused(attributes: dict[str, Any], words: str) -> None:
    with pytest.raises(WorkerError, match="Periodic has bad settings") as raised:
        check_worker_class(worker(**attributes), "here")
    assert words in str(raised.value)
    with pytest.raises(WorkerError):
        Registry.from_classes(worker(**attributes))
