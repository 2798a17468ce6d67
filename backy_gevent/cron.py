"""Five-field cron expressions: parse them, and find a schedule's ticks in its time zone.

Written here rather than taken from a library: the grammar is small, and the rules a
job queue needs (daylight saving, the classic day-of-month/day-of-week rule, a clear
error naming the bad field) are easier to state and test in one short module.

``Schedule.parse("*/5 * * * *", "Europe/Berlin").next_after(moment)`` is the first tick
strictly after ``moment`` (an aware datetime), as an aware UTC datetime. Ticks are wall
times in the schedule's zone:

- a wall time that does not exist (the spring-forward gap) fires at the first instant
  after the gap, once however many of the schedule's times fall in the gap;
- a wall time that happens twice (the fall-back hour) fires once, at its first
  occurrence; except that a schedule whose hour field is ``*`` (it is about every hour,
  not a time of day) fires in both occurrences of the repeated hour.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import zoneinfo

UTC = dt.timezone.utc
MINUTE = dt.timedelta(minutes=1)
#: How old a missed tick may be and still be enqueued when a runner comes back.
CATCH_UP_SECONDS = 3600.0
#: A schedule is ticked while a runner that beat within this long has its worker.
ALIVE_SECONDS = 60.0
#: A schedule that has no tick within this many years never fires (0 0 30 2 * ...).
_SEARCH_YEARS = 10

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Longest day of each month (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class CronError(ValueError):
    """A cron expression or time zone that can't be used; the message names the field."""


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int  # the largest value written (7 for day-of-week: Sunday again)
    names: tuple[str, ...] = ()
    names_start: int = 0  # the value of names[0]


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day-of-week", 0, 7, _DAYS, 0),
)


def _value(text: str, field: _Field) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.names.index(lowered) + field.names_start
    if not text.isdigit():
        raise CronError(f"{field.name} field: {text!r} is not a number"
                        + (f" or a name ({', '.join(field.names)})" if field.names else ""))
    number = int(text)
    if not field.low <= number <= field.high:
        raise CronError(f"{field.name} field: {number} is out of range"
                        f" {field.low}-{field.high}")
    return number


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    """The values one field allows: ``*``, lists, ranges, steps and names."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{field.name} field: empty item in {text!r}")
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field.name} field: step {step_text!r} must be a whole"
                                " number of at least 1")
            step = int(step_text)
        if span == "*":
            low, high = field.low, field.high if field.name != "day-of-week" else 6
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _value(first, field), _value(last, field)
            if low > high:
                raise CronError(f"{field.name} field: range {span!r} runs backwards")
        else:
            low = _value(span, field)
            high = field.high if slash else low  # "5/15": from 5 to the end, every 15
        values.update(range(low, high + 1, step))
    if field.name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)  # 7 is Sunday too
    return frozenset(values)


@functools.lru_cache(maxsize=256)
def zone_of(name: str) -> dt.tzinfo:
    """The time zone called ``name`` (IANA, such as ``Europe/Berlin``); ``CronError`` if
    unknown. ``UTC`` needs no time zone database."""
    if name in ("UTC", "Etc/UTC"):
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r} (an IANA name such as"
                        " 'Europe/Berlin'; without a system database, pip install tzdata)"
                        ) from exc


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed cron expression in a time zone. Build it with ``Schedule.parse``."""

    expression: str
    timezone: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    #: Whether the day fields are restricted (not starting with ``*``): when both are,
    #: a day matching either one matches (the classic cron rule).
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> Schedule:
        """Parse ``minute hour day-of-month month day-of-week`` (or ``@daily`` and the
        like); ``CronError`` names the field that is wrong."""
        if not isinstance(expression, str):
            raise CronError(f"a cron expression is a string, not {expression!r}")
        if not isinstance(timezone, str):
            raise CronError(f"a time zone is a name, not {timezone!r}")
        zone_of(timezone)
        text = _MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"{expression!r} has {len(parts)} fields; a cron expression has"
                            " five: minute hour day-of-month month day-of-week")
        minutes, hours, days, months, weekdays = (
            _parse_field(part, field) for part, field in zip(parts, _FIELDS, strict=True))
        schedule = cls(expression, timezone, minutes, hours, days, months, weekdays,
                       days_restricted=not parts[2].startswith("*"),
                       weekdays_restricted=not parts[4].startswith("*"))
        if not (schedule.weekdays_restricted and schedule.days_restricted) and all(
            min(schedule.days) > _MONTH_DAYS[month - 1] for month in schedule.months
        ):
            raise CronError(f"{expression!r}: day-of-month field never falls in the months"
                            " of the month field")
        return schedule

    @property
    def zone(self) -> dt.tzinfo:
        return zone_of(self.timezone)

    # -- finding ticks ------------------------------------------------------------------

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``moment`` (aware), as an aware UTC datetime."""
        if moment.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        moment = moment.astimezone(UTC)
        local = moment.astimezone(self.zone)
        wall = local.replace(tzinfo=None, second=0, microsecond=0)
        best = self._first_from(wall + MINUTE, moment)
        overlap = _overlap(wall, self.zone)
        if overlap and local.fold == 0 and self._both_folds:
            # In the first pass of a repeated hour: the second pass, at earlier wall
            # times, may come before the next later wall time of this pass.
            best = min(best, self._first_from(wall - overlap, moment))
        return best

    def latest_tick(self, after: dt.datetime, until: dt.datetime) -> dt.datetime | None:
        """The last tick in ``(after, until]``, or None when there is none."""
        latest = None
        tick = self.next_after(after)
        while tick <= until:
            latest = tick
            tick = self.next_after(tick)
        return latest

    @property
    def _both_folds(self) -> bool:
        return len(self.hours) == 24

    def _first_from(self, wall: dt.datetime, moment: dt.datetime) -> dt.datetime:
        """The earliest instant after ``moment`` of the first matching wall time from
        ``wall`` on that has one."""
        while True:
            wall = self._next_wall(wall)
            later = [instant for instant in self._instants(wall) if instant > moment]
            if later:
                return min(later)
            wall += MINUTE

    def _instants(self, wall: dt.datetime) -> list[dt.datetime]:
        """The instants a matching wall time fires at (see the module docstring)."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if first < second:  # the wall time happens twice
            return [first, second] if self._both_folds else [first]
        return [_transition(second, first, self.zone)]  # in the gap

    def _day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def _next_wall(self, wall: dt.datetime) -> dt.datetime:
        """The first naive wall time from ``wall`` on that the fields match."""
        give_up = wall.year + _SEARCH_YEARS
        while wall.year <= give_up:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self._day_matches(wall.date()):
                wall = dt.datetime.combine(wall.date() + dt.timedelta(days=1), dt.time())
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0) + dt.timedelta(hours=1)
            elif wall.minute not in self.minutes:
                later = [m for m in self.minutes if m > wall.minute]
                wall = (wall.replace(minute=min(later)) if later
                        else wall.replace(minute=0) + dt.timedelta(hours=1))
            else:
                return wall
        raise CronError(f"{self.expression!r} has no tick within {_SEARCH_YEARS} years")


def due_tick(schedule: Schedule, last_tick: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """The tick a job queue should enqueue at ``now`` given the last one it enqueued:
    the latest tick after ``last_tick`` and not after ``now``, if it is at most
    ``CATCH_UP_SECONDS`` old (one job for a missed stretch, never a burst); else None."""
    window = now - dt.timedelta(seconds=CATCH_UP_SECONDS)
    return schedule.latest_tick(max(last_tick, window), now)


def next_run(schedule: Schedule, last_tick: dt.datetime, now: dt.datetime) -> dt.datetime:
    """When the schedule's next job is due: its ``due_tick`` (at or before ``now``: to
    be enqueued at once), else its first tick after ``now``."""
    return due_tick(schedule, last_tick, now) or schedule.next_after(now)


def _first_of_next_month(wall: dt.datetime) -> dt.datetime:
    if wall.month == 12:
        return dt.datetime(wall.year + 1, 1, 1)
    return dt.datetime(wall.year, wall.month + 1, 1)


def _overlap(wall: dt.datetime, zone: dt.tzinfo) -> dt.timedelta:
    """How long the repeated period is, when ``wall`` falls in one; else zero."""
    first = wall.replace(tzinfo=zone, fold=0).utcoffset() or dt.timedelta()
    second = wall.replace(tzinfo=zone, fold=1).utcoffset() or dt.timedelta()
    return max(first - second, dt.timedelta())


def _transition(before: dt.datetime, after: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """The instant the zone's offset changes between ``before`` and ``after`` (UTC):
    the first instant after a spring-forward gap."""
    offset = before.astimezone(zone).utcoffset()
    while after - before > dt.timedelta(seconds=1):
        middle = before + (after - before) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            before = middle
        else:
            after = middle
    return after.replace(microsecond=0)
