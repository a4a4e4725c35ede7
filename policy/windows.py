"""Recurring weekly windows: "Mon-Fri 22:00-02:00 Europe/Berlin".

A grant or request may carry a weekly window inside its overall [window_start, window_end):
sessions may then run only inside an occurrence of it. Devices carry maintenance windows of
the same shape, and a request's intervals must lie inside them.

Rules, fixed here so every caller agrees:

- ``days`` are the weekdays (0 = Monday) on which an occurrence *starts*, in the window's
  own time zone. ``end <= start`` means the occurrence runs past midnight into the next
  day (``start == end`` is a whole day).
- Local times are wall-clock times in ``tz``. A local time that does not exist (the spring
  DST gap) moves forward to the instant the clocks jump; a local time that happens twice
  (the autumn fold) means the first one. Both rules keep the local-to-UTC mapping
  monotonic, so occurrences never overlap and come out in order; an occurrence that
  becomes empty (e.g. 02:00-02:30 on the day that skips 02:00-03:00) does not happen.
- Every datetime in and out is timezone-aware; out means UTC.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policy.errors import InvalidInput

INVALID = "recurrence-invalid"
TOO_LONG = "recurrence-too-long"

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_WORDS = {
    **{name.lower(): i for i, name in enumerate(DAY_NAMES)},
    **{
        word: i
        for i, word in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
    **{str(i): i for i in range(7)},
}
_KEYS = frozenset({"days", "start", "end", "tz"})
# An occurrence lasts at most a day and a DST shift; looking this far back and ahead of a
# local date always finds the occurrences that can contain an instant on it.
_LOOK_BACK = timedelta(days=2)
_LOOK_AHEAD = timedelta(days=1)
# No weekday set can leave a longer stretch without an occurrence start.
_NEXT_START_HORIZON = timedelta(days=15)


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(INVALID, message)


@lru_cache(maxsize=256)
def _zone(key: str) -> ZoneInfo:
    """The zone for an IANA key; InvalidInput names a bad one instead of a lookup error."""
    if not key or key.startswith(("/", ".")) or ".." in key or "\\" in key:
        raise _invalid(f"unknown time zone {key!r}; use an IANA name such as Europe/Berlin")
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _invalid(
            f"unknown time zone {key!r}; use an IANA name such as Europe/Berlin"
        ) from None


def _day_numbers(word: str) -> list[int]:
    """One weekday or a range of them, as Python weekday numbers."""
    first, sep, last = word.strip().lower().partition("-")
    ends = [first, last] if sep else [first]
    for end in ends:
        if end.strip() not in _DAY_WORDS:
            raise _invalid(f"unknown weekday {word!r}; use mon, tue, ... sun, 0 to 6, or mon-fri")
    numbers = [_DAY_WORDS[end.strip()] for end in ends]
    if len(numbers) == 1:
        return numbers
    span = (numbers[1] - numbers[0]) % 7
    return [(numbers[0] + i) % 7 for i in range(span + 1)]


def _parse_time(value: Any, field: str) -> time:
    """``HH:MM`` (24-hour), nothing finer: windows are planned in minutes."""
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a time as HH:MM, got {value!r}")
    hours, sep, minutes = value.strip().partition(":")
    if (
        not sep
        or not (hours.isdigit() and minutes.isdigit())
        or not (1 <= len(hours) <= 2 and len(minutes) == 2)
    ):
        raise _invalid(f"{field} must be a time as HH:MM, got {value!r}")
    if int(hours) > 23 or int(minutes) > 59:
        raise _invalid(f"{field} {value!r} is not a time of day (00:00 to 23:59)")
    return time(int(hours), int(minutes))


def _check_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _gap_end(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant the clocks jump over ``local``, a wall time that does not exist.

    PEP 495 maps a gap time with fold=1 before the jump and with fold=0 after it; the jump
    lies between, so a binary search over whole seconds finds it (transitions fall on
    whole seconds).
    """
    lo = int(local.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(local.replace(tzinfo=zone, fold=0).timestamp())
    lo, hi = min(lo, hi), max(lo, hi)
    after = datetime.fromtimestamp(hi, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall time in ``zone`` as an aware UTC instant, by the module's DST rules.

    PEP 495 tells the cases apart: both folds give one offset for an ordinary time; for a
    repeated time fold=0 gives the larger (earlier instant, which we want); for a time in
    a gap fold=0 gives the smaller, pointing past the jump.
    """
    first = local.replace(tzinfo=zone, fold=0).utcoffset()
    second = local.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None  # a ZoneInfo always has an offset
    if first < second:
        return _gap_end(local, zone)
    return (local - first).replace(tzinfo=UTC)


def _format_days(days: frozenset[int]) -> str:
    """Runs of three or more days as ranges, across the weekend too: ``Mon-Fri``,
    ``Fri-Mon``, ``Mon,Wed,Fri``."""
    if len(days) == len(DAY_NAMES):
        return "Mon-Sun"
    first = min(d for d in days if (d - 1) % 7 not in days)  # a run's first day
    ordered = [(first + i) % 7 for i in range(7) if (first + i) % 7 in days]
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == (ordered[j] + 1) % 7:
            j += 1
        if j - i >= 2:
            parts.append(f"{DAY_NAMES[ordered[i]]}-{DAY_NAMES[ordered[j]]}")
        else:
            parts.extend(DAY_NAMES[d] for d in ordered[i : j + 1])
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Weekly:
    """A weekly recurring window; see the module docstring for its exact meaning."""

    days: frozenset[int]
    start: time
    end: time
    tz: str

    def __post_init__(self) -> None:
        if not self.days:
            raise _invalid("a recurring window needs at least one weekday")
        if any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in self.days):
            raise _invalid(f"weekdays must be 0 (Monday) to 6 (Sunday), got {sorted(self.days)}")
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None or value.second or value.microsecond:
                raise _invalid(f"{name} must be a local wall time in whole minutes")
        _zone(self.tz)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Weekly:
        """The stored JSON shape ``{"days": [0..6], "start": "HH:MM", "end": "HH:MM", "tz"}``."""
        if not isinstance(data, Mapping):
            raise _invalid("a recurring window must be an object with days, start, end and tz")
        missing = sorted(_KEYS - data.keys())
        if missing:
            raise _invalid(f"a recurring window needs {', '.join(missing)}")
        extra = sorted(str(k) for k in data.keys() - _KEYS)
        if extra:
            raise _invalid(f"unknown field(s) in a recurring window: {', '.join(extra)}")
        days = data["days"]
        if not isinstance(days, list | tuple) or any(
            isinstance(d, bool) or not isinstance(d, int) for d in days
        ):
            raise _invalid("days must be a list of weekday numbers, 0 (Monday) to 6 (Sunday)")
        tz = data["tz"]
        if not isinstance(tz, str):
            raise _invalid(f"tz must be an IANA time zone name, got {tz!r}")
        return cls(
            frozenset(days),
            _parse_time(data["start"], "start"),
            _parse_time(data["end"], "end"),
            tz,
        )

    @classmethod
    def from_form(cls, days: Sequence[str], start: str, end: str, tz: str) -> Weekly:
        """From form or CLI fields: days as ``mon``..``sun`` (or full names), ``0``..``6``,
        or ranges such as ``mon-fri`` (``fri-mon`` wraps over the weekend)."""
        numbers: set[int] = set()
        for word in days:
            numbers.update(_day_numbers(word))
        return cls(
            frozenset(numbers), _parse_time(start, "start"), _parse_time(end, "end"), tz.strip()
        )

    @classmethod
    def from_spec(cls, text: str) -> Weekly:
        """The one-line form ``DAYS,HH:MM-HH:MM,TZ``: ``mon-fri,22:00-02:00,Europe/Berlin``
        or ``mon,wed,fri,08:00-10:00,UTC`` (time zone names never hold a comma)."""
        parts = text.split(",")
        if len(parts) < 3:
            raise _invalid(
                f"{text!r} is not DAYS,HH:MM-HH:MM,TZ (e.g. mon-fri,22:00-02:00,Europe/Berlin)"
            )
        *days, span, tz = parts
        start, sep, end = span.partition("-")
        if not sep:
            raise _invalid(f"{span!r} is not a time span HH:MM-HH:MM")
        return cls.from_form(days, start, end, tz)

    def to_json(self) -> dict[str, Any]:
        return {
            "days": sorted(self.days),
            "start": f"{self.start:%H:%M}",
            "end": f"{self.end:%H:%M}",
            "tz": self.tz,
        }

    def describe(self) -> str:
        """For people: ``Mon-Fri 22:00-02:00 Europe/Berlin``."""
        span = f"{self.start:%H:%M}-{self.end:%H:%M}"
        if self.start == self.end:
            span += " (24 h)"
        return f"{_format_days(self.days)} {span} {self.tz}"

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)

    def _starting_on(self, day: date) -> tuple[datetime, datetime] | None:
        """The occurrence that starts on local ``day``, or None (not a day, or DST-empty)."""
        if day.weekday() not in self.days:
            return None
        return _occurrence_on(self, day)

    def occurrences(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Every occurrence overlapping [start, end), unclipped, in order."""
        _check_aware(start, "start")
        _check_aware(end, "end")
        if start >= end:
            return
        zone = self.zone
        day = start.astimezone(zone).date() - _LOOK_BACK
        last = end.astimezone(zone).date() + _LOOK_AHEAD
        while day <= last:
            occurrence = self._starting_on(day)
            if occurrence is not None and occurrence[1] > start and occurrence[0] < end:
                yield occurrence
            day += timedelta(days=1)

    def occurrence_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence with start <= now < end, or None between occurrences.

        Only occurrences starting on now's local date or the day before can hold it: one
        ends by the next day's wall time, and wall time maps to instants in order.
        """
        _check_aware(now, "now")
        today = now.astimezone(self.zone).date()
        for day in (today, today - timedelta(days=1)):
            occurrence = self._starting_on(day)
            if occurrence is not None and occurrence[0] <= now < occurrence[1]:
                return occurrence
        return None

    def next_start(self, after: datetime) -> datetime | None:
        """The first occurrence start at or after ``after`` (None only if none within weeks)."""
        _check_aware(after, "after")
        for begin, _ in self.occurrences(after, after + _NEXT_START_HORIZON):
            if begin >= after:
                return begin
        return None


@lru_cache(maxsize=4096)
def _occurrence_on(window: Weekly, day: date) -> tuple[datetime, datetime] | None:
    """Weekly._starting_on's arithmetic, cached: every channel open asks about the same
    few days of the same few windows."""
    zone = window.zone
    end_day = day if window.end > window.start else day + timedelta(days=1)
    begin = to_utc(datetime.combine(day, window.start), zone)
    finish = to_utc(datetime.combine(end_day, window.end), zone)
    return (begin, finish) if begin < finish else None


def effective_window(
    window_start: datetime,
    window_end: datetime,
    recurrence: Weekly | None,
    now: datetime,
) -> tuple[datetime, datetime] | None:
    """The interval a session may run in at ``now``, or None when ``now`` is outside.

    Without a recurrence that is the whole grant window; with one it is the occurrence
    containing ``now`` clipped to the grant window, so a session ends at whichever comes
    first. Occurrences that touch (whole days, ``00:00-00:00`` on Sat and Sun) count as
    one: closing a session at midnight only to allow it again at once helps nobody.
    """
    if not window_start <= now < window_end:
        return None
    if recurrence is None:
        return (window_start, window_end)
    occurrence = recurrence.occurrence_at(now)
    if occurrence is None:
        return None
    begin, finish = occurrence
    for _ in range(len(DAY_NAMES)):
        if finish >= window_end:
            break
        following = recurrence.occurrence_at(finish)
        if following is None:
            break
        finish = following[1]
    else:  # a week of touching occurrences: the window never closes
        finish = window_end
    return (max(begin, window_start), min(finish, window_end))


def next_opening(
    window_start: datetime,
    window_end: datetime,
    recurrence: Weekly | None,
    after: datetime,
) -> datetime | None:
    """The first instant at or after ``after`` at which a session may run, or None.

    What a refusal tells the vendor: when to come back.
    """
    at = max(after, window_start)
    if at >= window_end:
        return None
    if recurrence is None or recurrence.occurrence_at(at) is not None:
        return at
    start = recurrence.next_start(at)
    return start if start is not None and start < window_end else None


def intervals(
    window_start: datetime,
    window_end: datetime,
    recurrence: Weekly | None,
    limit: int = 1000,
) -> list[tuple[datetime, datetime]]:
    """The intervals a request or grant covers, clipped to its window, in order.

    Refuses a window with more than ``limit`` occurrences: checks against it would grow
    without bound, and nobody plans vendor access years ahead week by week.
    """
    if window_start >= window_end:
        return []
    if recurrence is None:
        return [(window_start, window_end)]
    found: list[tuple[datetime, datetime]] = []
    for begin, finish in recurrence.occurrences(window_start, window_end):
        if len(found) >= limit:
            raise InvalidInput(
                TOO_LONG,
                f"the window holds more than {limit} occurrences of {recurrence.describe()};"
                " shorten the overall window",
            )
        found.append((max(begin, window_start), min(finish, window_end)))
    return found


def _covered(begin: datetime, finish: datetime, allowed: Sequence[Weekly]) -> bool:
    """Is [begin, finish) inside the union of the allowed windows' occurrences?"""
    pieces = sorted(o for window in allowed for o in window.occurrences(begin, finish))
    reached = begin
    for start, end in pieces:
        if start > reached:
            return False
        reached = max(reached, end)
        if reached >= finish:
            return True
    return reached >= finish


def uncovered(
    interval_list: Sequence[tuple[datetime, datetime]],
    allowed: Sequence[Weekly],
) -> tuple[datetime, datetime] | None:
    """The first interval not entirely inside the allowed windows, or None.

    No allowed windows means no restriction (a device without maintenance windows may be
    worked on at any time), so that returns None too.
    """
    if not allowed:
        return None
    for begin, finish in interval_list:
        if begin < finish and not _covered(begin, finish, allowed):
            return (begin, finish)
    return None
