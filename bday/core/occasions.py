"""Occasion arithmetic: which local date a greeting belongs to and the UTC instant it is due.

Pure functions, no I/O. The rules (docs/contract.md, "Behaviour that must hold" 1 and 2):

* The occasion is celebrated on the user's *local* calendar date; its send instant is
  SEND_TIME on the local wall clock of that date, in the user's IANA zone. The UTC date is
  never consulted.
* SEND_TIME inside a DST gap (a wall time that never happens that day) means the first instant
  after the gap, i.e. the instant of the transition itself. SEND_TIME inside an overlap (a wall
  time that happens twice) means the first occurrence.
* A Feb 29 date is celebrated on Feb 29 in leap years and, per FEB29_POLICY, on Feb 28 or
  Mar 1 in other years.
* Year N's occasion exists for N > the year of the original date (the day itself is a birth or
  a first working day, not an anniversary of it).
"""

from __future__ import annotations

import calendar
import enum
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

# Every real UTC offset lies within +-15 h (present-day zones span -12..+14; a DST gap shifts
# an instant by at most a day, which the margin below also absorbs). Used to turn a UTC window
# into the local calendar dates that could fall inside it.
_OFFSET_MARGIN = timedelta(hours=15)
_DAY = timedelta(days=1)

# Names zoneinfo lists that do not name a place: "localtime" is whatever this host uses,
# "Factory" is a placeholder zone whose abbreviation is "-00".
_NOT_PLACES = frozenset({"localtime", "Factory", "posixrules"})


class Kind(enum.StrEnum):
    BIRTHDAY = "BIRTHDAY"
    ANNIVERSARY = "ANNIVERSARY"


TEXTS = {
    Kind.BIRTHDAY: "Hey, {first_name} {last_name} it's your birthday",
    Kind.ANNIVERSARY: "Hey, {first_name} {last_name} it's your work anniversary",
}


@dataclass(frozen=True, slots=True)
class Occasion:
    """One greeting owed: its kind, the local date it celebrates and its UTC send instant."""

    kind: Kind
    local_date: date
    send_at: datetime


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_PLACES


def is_known_zone(name: str) -> bool:
    """True for a name in the IANA database as zoneinfo ships it (`UTC`, `Etc/GMT+12`, ...)."""
    return name in _zone_names()


@functools.cache
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for a known name; raises KeyError for an unknown one."""
    if not is_known_zone(name):
        raise KeyError(name)
    return ZoneInfo(name)


def message_text(kind: Kind | str, first_name: str, last_name: str) -> str:
    """The exact greeting text of the contract."""
    return TEXTS[Kind(kind)].format(first_name=first_name, last_name=last_name)


def occasion_date(original: date, year: int, feb29_policy: str = "feb28") -> date:
    """The local date on which `original`'s occasion is celebrated in `year`."""
    if original.month == 2 and original.day == 29 and not calendar.isleap(year):
        return date(year, 3, 1) if feb29_policy == "mar1" else date(year, 2, 28)
    return original.replace(year=year)


def send_instant(local_date: date, tz: ZoneInfo, send_time: time) -> datetime:
    """The UTC instant at which `send_time` first happens on `local_date` in `tz`.

    A wall time that exists once maps to that instant; one that exists twice (DST overlap)
    maps to its first occurrence; one that does not exist (DST gap) maps to the end of the
    gap, the first instant of the new offset.
    """
    wall = datetime.combine(local_date, send_time)
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    # In a gap, fold=0 reads the wall time with the offset from before the transition, which
    # lands after the transition; fold=1 uses the later offset and lands before it.
    return _transition_between(wall.replace(tzinfo=tz, fold=1).astimezone(UTC), instant, tz)


def _transition_between(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in (before, after] whose UTC offset equals `after`'s, to the second."""
    target = after.astimezone(tz).utcoffset()
    low, high = before, after
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(tz).utcoffset() == target:
            high = middle
        else:
            low = middle
    return high


def occasion_in_year(
    kind: Kind, original: date, year: int, tz: ZoneInfo, send_time: time, feb29_policy: str
) -> Occasion | None:
    """Year `year`'s occasion of `original`, or None for years not after the original's."""
    if year <= original.year:
        return None
    local = occasion_date(original, year, feb29_policy)
    return Occasion(kind, local, send_instant(local, tz, send_time))


def occasions_between(
    kind: Kind,
    original: date,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    *,
    send_time: time,
    feb29_policy: str = "feb28",
) -> list[Occasion]:
    """The occasions of `original` whose send instant lies in [start, end), in order."""
    found = []
    for year in range((start - _OFFSET_MARGIN).year, (end + _OFFSET_MARGIN).year + 1):
        occasion = occasion_in_year(kind, original, year, tz, send_time, feb29_policy)
        if occasion is not None and start <= occasion.send_at < end:
            found.append(occasion)
    return found


def local_dates_near(start: datetime, end: datetime, send_time: time) -> Iterator[date]:
    """Every calendar date whose SEND_TIME, in some zone, could fall in [start, end)."""
    since_midnight = timedelta(hours=send_time.hour, minutes=send_time.minute)
    day = (start - _OFFSET_MARGIN - since_midnight).date()
    last = (end + _OFFSET_MARGIN - since_midnight).date()
    while day <= last:
        yield day
        day += _DAY


def month_days_near(
    start: datetime, end: datetime, send_time: time, feb29_policy: str = "feb28"
) -> set[int]:
    """Month-day keys (month * 100 + day) of the original dates that may be due in the window.

    The planner uses this to fetch candidate users by index; the exact filter is
    `occasions_between`. A Feb 29 original is included whenever the window touches the day it
    is celebrated on in a non-leap year.
    """
    keys = set()
    for day in local_dates_near(start, end, send_time):
        keys.add(day.month * 100 + day.day)
        if not calendar.isleap(day.year) and (day.month, day.day) == _FEB29_STANDIN[feb29_policy]:
            keys.add(229)
    return keys


_FEB29_STANDIN = {"feb28": (2, 28), "mar1": (3, 1)}
