"""Five-field cron schedules (minute hour day-of-month month day-of-week), in UTC.

Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of
those; months and weekdays also take three-letter names (`jan`, `mon`), and weekday 7 is
Sunday like 0. As in Vixie cron, when both day fields are restricted a day matches if
either does. No seconds field, no `@daily` shorthands, no time zones: what is not
supported is refused, not approximated.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tidelog.errors import ConfigError

__all__ = ["CronSchedule"]

_MONTHS = {n: i + 1 for i, n in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}
# (name, lowest, highest, names allowed for values)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))
_SEARCH_DAYS = 366 * 8  # every valid expression fires within 8 years (Feb 29 + weekday)


def _value(text: str, lo: int, hi: int, names: dict[str, int], expr: str, what: str) -> int:
    raw = names.get(text.lower(), text)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"cron {expr!r}: {what} {text!r} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"cron {expr!r}: {what} {value} is outside {lo}-{hi}")
    return value


def _field(text: str, lo: int, hi: int, names: dict[str, int], expr: str, what: str
           ) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            step = _value(step_text, 1, hi - lo + 1, {}, expr, f"{what} step")
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = (_value(a, lo, hi, names, expr, what),
                          _value(b, lo, hi, names, expr, what))
            if start > end:
                raise ConfigError(f"cron {expr!r}: {what} range {base} runs backwards")
        else:
            start = _value(base, lo, hi, names, expr, what)
            end = hi if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) != 5:
            raise ConfigError(f"cron {expression!r} needs five fields: minute hour "
                              "day-of-month month day-of-week, e.g. '0 3 * * *'")
        sets = [_field(p, lo, hi, names, expression, what)
                for p, (what, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        schedule = cls(expression, sets[0], sets[1], sets[2], sets[3], weekdays,
                       parts[2] != "*", parts[4] != "*")
        schedule.next(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # refuses e.g. '0 0 31 2 *'
        return schedule

    def _day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def matches(self, at: dt.datetime) -> bool:
        at = at.astimezone(dt.UTC)
        return (self._day_matches(at.date()) and at.hour in self.hours
                and at.minute in self.minutes)

    def previous(self, at: dt.datetime) -> dt.datetime:
        """The latest firing time at or before `at`."""
        at = at.astimezone(dt.UTC).replace(second=0, microsecond=0)
        for back in range(_SEARCH_DAYS):
            day = at.date() - dt.timedelta(days=back)
            if not self._day_matches(day):
                continue
            limit = (at.hour, at.minute) if back == 0 else (23, 59)
            times = [(h, m) for h in self.hours for m in self.minutes if (h, m) <= limit]
            if times:
                h, m = max(times)
                return dt.datetime(day.year, day.month, day.day, h, m, tzinfo=dt.UTC)
        raise ConfigError(f"cron {self.expression!r} never fires (checked 8 years back)")

    def next(self, after: dt.datetime) -> dt.datetime:
        """The first firing time strictly after `after`."""
        after = after.astimezone(dt.UTC).replace(second=0, microsecond=0)
        for ahead in range(_SEARCH_DAYS):
            day = after.date() + dt.timedelta(days=ahead)
            if not self._day_matches(day):
                continue
            floor = (after.hour, after.minute) if ahead == 0 else (-1, -1)
            times = [(h, m) for h in self.hours for m in self.minutes if (h, m) > floor]
            if times:
                h, m = min(times)
                return dt.datetime(day.year, day.month, day.day, h, m, tzinfo=dt.UTC)
        raise ConfigError(f"cron {self.expression!r} never fires (checked 8 years ahead)")
