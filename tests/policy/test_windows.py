"""Recurring weekly windows (policy/windows.py): parsing, DST, overnight, coverage."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.errors import InvalidInput
from policy.windows import (
    Weekly,
    effective_window,
    intervals,
    next_opening,
    to_utc,
    uncovered,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
H = timedelta(hours=1)
M = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    """An aware instant given as wall time in ``tz``."""
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)  # type: ignore[misc]


def weekly(days: str, start: str, end: str, tz: str = BERLIN) -> Weekly:
    return Weekly.from_form(days.split(","), start, end, tz)


WEEKNIGHTS = weekly("mon,tue,wed,thu,fri", "22:00", "02:00")


# --- parsing ----------------------------------------------------------------------------


def test_parse_round_trips_the_stored_shape() -> None:
    data = {"days": [4, 0, 2], "start": "22:00", "end": "02:00", "tz": BERLIN}
    window = Weekly.parse(data)
    assert window == Weekly(frozenset({0, 2, 4}), time(22), time(2), BERLIN)
    assert window.to_json() == {"days": [0, 2, 4], "start": "22:00", "end": "02:00", "tz": BERLIN}
    assert Weekly.parse(window.to_json()) == window


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"days": [0], "start": "08:00", "end": "09:00"}, "needs tz"),
        ({"days": [0], "start": "08:00", "end": "09:00", "tz": "UTC", "x": 1}, "unknown field"),
        ({"days": [], "start": "08:00", "end": "09:00", "tz": "UTC"}, "at least one weekday"),
        ({"days": [7], "start": "08:00", "end": "09:00", "tz": "UTC"}, "0 (Monday) to 6"),
        ({"days": [-1], "start": "08:00", "end": "09:00", "tz": "UTC"}, "0 (Monday) to 6"),
        ({"days": ["mon"], "start": "08:00", "end": "09:00", "tz": "UTC"}, "weekday numbers"),
        ({"days": [True], "start": "08:00", "end": "09:00", "tz": "UTC"}, "weekday numbers"),
        ({"days": 0, "start": "08:00", "end": "09:00", "tz": "UTC"}, "weekday numbers"),
        ({"days": [0], "start": "24:00", "end": "09:00", "tz": "UTC"}, "not a time of day"),
        ({"days": [0], "start": "08:60", "end": "09:00", "tz": "UTC"}, "not a time of day"),
        ({"days": [0], "start": "8:5", "end": "09:00", "tz": "UTC"}, "HH:MM"),
        ({"days": [0], "start": "08:00:30", "end": "09:00", "tz": "UTC"}, "HH:MM"),
        ({"days": [0], "start": 800, "end": "09:00", "tz": "UTC"}, "HH:MM"),
        ({"days": [0], "start": "08:00", "end": "", "tz": "UTC"}, "end must be"),
        ({"days": [0], "start": "08:00", "end": "09:00", "tz": "Mars/Olympus"}, "time zone"),
        ({"days": [0], "start": "08:00", "end": "09:00", "tz": "../../etc/passwd"}, "time zone"),
        ({"days": [0], "start": "08:00", "end": "09:00", "tz": "/etc/localtime"}, "time zone"),
        ({"days": [0], "start": "08:00", "end": "09:00", "tz": ""}, "time zone"),
        ({"days": [0], "start": "08:00", "end": "09:00", "tz": 1}, "time zone"),
    ],
)
def test_parse_refuses_bad_input_saying_why(data: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Weekly.parse(data)
    assert err.value.code == "recurrence-invalid"
    assert says in err.value.message


def test_parse_refuses_what_is_not_an_object() -> None:
    with pytest.raises(InvalidInput, match="an object"):
        Weekly.parse([0, "08:00"])  # type: ignore[arg-type]


def test_from_form_accepts_short_and_full_names_and_numbers() -> None:
    a = Weekly.from_form(["Mon", " tue ", "WEDNESDAY", "3", "fri"], "7:30", "16:00", BERLIN)
    assert a.days == frozenset({0, 1, 2, 3, 4})
    assert a.start == time(7, 30) and a.end == time(16)
    with pytest.raises(InvalidInput, match="unknown weekday 'funday'") as err:
        Weekly.from_form(["funday"], "07:30", "16:00", BERLIN)
    assert err.value.code == "recurrence-invalid"


@pytest.mark.parametrize(
    ("spec", "days", "span", "tz"),
    [
        ("mon-fri,22:00-02:00,Europe/Berlin", {0, 1, 2, 3, 4}, (time(22), time(2)), BERLIN),
        ("mon,wed,fri,8:00-10:30,UTC", {0, 2, 4}, (time(8), time(10, 30)), "UTC"),
        ("sat-mon,00:00-00:00,America/New_York", {5, 6, 0}, (time(0), time(0)), NEW_YORK),
        ("SUN, 06:00-07:00, Asia/Kolkata", {6}, (time(6), time(7)), "Asia/Kolkata"),
    ],
)
def test_from_spec_the_one_line_form(
    spec: str, days: set[int], span: tuple[time, time], tz: str
) -> None:
    assert Weekly.from_spec(spec) == Weekly(frozenset(days), *span, tz)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("mon-fri 22:00-02:00 UTC", "is not DAYS,HH:MM-HH:MM,TZ"),
        ("mon-fri,22:00,UTC", "is not a time span"),
        ("mon--fri,22:00-23:00,UTC", "unknown weekday"),
        ("someday,22:00-23:00,UTC", "unknown weekday"),
        (",22:00-23:00,UTC", "unknown weekday"),
        ("mon,22:00-25:00,UTC", "not a time of day"),
        ("mon,22:00-23:00,Europe/Nowhere", "unknown time zone"),
    ],
)
def test_from_spec_refuses_saying_why(spec: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as err:
        Weekly.from_spec(spec)
    assert err.value.code == "recurrence-invalid"


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(InvalidInput, match="whole minutes"):
        Weekly(frozenset({0}), time(8, 0, 30), time(9), "UTC")
    with pytest.raises(InvalidInput, match="time zone"):
        Weekly(frozenset({0}), time(8), time(9), "Nowhere/City")


@pytest.mark.parametrize(
    ("window", "text"),
    [
        (WEEKNIGHTS, "Mon-Fri 22:00-02:00 Europe/Berlin"),
        (weekly("sat,sun", "00:00", "00:00", "UTC"), "Sat,Sun 00:00-00:00 (24 h) UTC"),
        (weekly("mon,wed,fri,sat,sun", "08:00", "09:30"), "Wed,Fri-Mon 08:00-09:30 " + BERLIN),
        (weekly("fri-mon", "08:00", "09:30"), "Fri-Mon 08:00-09:30 " + BERLIN),
        (weekly("mon,tue,thu", "08:00", "09:30"), "Mon,Tue,Thu 08:00-09:30 " + BERLIN),
        (weekly("0,1,2,3,4,5,6", "06:00", "07:00", NEW_YORK), "Mon-Sun 06:00-07:00 " + NEW_YORK),
    ],
)
def test_describe(window: Weekly, text: str) -> None:
    assert window.describe() == text


# --- occurrences, overnight -------------------------------------------------------------


def test_overnight_occurrence_runs_into_the_next_day() -> None:
    # Friday 2025-06-06 22:00 CEST to Saturday 02:00
    friday = (local(BERLIN, 2025, 6, 6, 22), local(BERLIN, 2025, 6, 7, 2))
    assert WEEKNIGHTS.occurrence_at(local(BERLIN, 2025, 6, 7, 1, 59)) == friday
    assert WEEKNIGHTS.occurrence_at(friday[0]) == friday
    assert WEEKNIGHTS.occurrence_at(friday[1]) is None  # the end is not inside
    assert WEEKNIGHTS.occurrence_at(local(BERLIN, 2025, 6, 7, 23)) is None  # Saturday night
    assert WEEKNIGHTS.occurrence_at(local(BERLIN, 2025, 6, 9, 1)) is None  # Sunday night
    assert WEEKNIGHTS.occurrence_at(local(BERLIN, 2025, 6, 9, 22, 30)) is not None  # Monday
    assert WEEKNIGHTS.next_start(local(BERLIN, 2025, 6, 7, 1)) == local(BERLIN, 2025, 6, 9, 22)
    assert WEEKNIGHTS.next_start(friday[0]) == friday[0]  # at or after


def test_occurrences_of_a_week_in_order_unclipped() -> None:
    week = list(WEEKNIGHTS.occurrences(local(BERLIN, 2025, 6, 9, 1), local(BERLIN, 2025, 6, 16)))
    # Sunday 8th has none, so the first is Monday; Friday's runs into Saturday
    assert [s.astimezone(ZoneInfo(BERLIN)).day for s, _ in week] == [9, 10, 11, 12, 13]
    assert all(e - s == 4 * H for s, e in week)
    # an occurrence that only overlaps the range's start comes out whole
    first = next(
        WEEKNIGHTS.occurrences(local(BERLIN, 2025, 6, 10, 1), local(BERLIN, 2025, 6, 10, 2))
    )
    assert first == (local(BERLIN, 2025, 6, 9, 22), local(BERLIN, 2025, 6, 10, 2))
    assert list(WEEKNIGHTS.occurrences(utc(2025, 6, 10), utc(2025, 6, 10))) == []


def test_naive_datetimes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        WEEKNIGHTS.occurrence_at(datetime(2025, 6, 9, 22))


# --- DST --------------------------------------------------------------------------------


def test_berlin_spring_gap_moves_forward_to_the_jump() -> None:
    # 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC)
    daily = weekly("0,1,2,3,4,5,6", "02:30", "04:00")
    assert daily.occurrence_at(utc(2025, 3, 30, 1, 30)) == (
        utc(2025, 3, 30, 1),
        utc(2025, 3, 30, 2),
    )
    assert daily.occurrence_at(utc(2025, 3, 30, 0, 59)) is None
    assert daily.occurrence_at(utc(2025, 3, 29, 2)) == (
        utc(2025, 3, 29, 1, 30),
        utc(2025, 3, 29, 3),
    )
    assert daily.occurrence_at(utc(2025, 3, 31, 1)) == (
        utc(2025, 3, 31, 0, 30),
        utc(2025, 3, 31, 2),
    )


def test_berlin_window_inside_the_gap_does_not_happen_that_day() -> None:
    gap = weekly("sun", "02:00", "02:45")
    assert gap.next_start(utc(2025, 3, 29)) == local(BERLIN, 2025, 4, 6, 2)
    assert list(gap.occurrences(utc(2025, 3, 29), utc(2025, 3, 31))) == []
    assert gap.next_start(utc(2025, 3, 22)) == local(BERLIN, 2025, 3, 23, 2)


def test_berlin_autumn_fold_means_the_first_time() -> None:
    # 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice
    short = weekly("sun", "01:00", "02:30")
    assert short.occurrence_at(utc(2025, 10, 26, 0)) == (
        utc(2025, 10, 25, 23),
        utc(2025, 10, 26, 0, 30),
    )
    night = weekly("sat", "22:00", "06:00")  # one hour longer that night
    occurrence = night.occurrence_at(utc(2025, 10, 26, 3))
    assert occurrence == (utc(2025, 10, 25, 20), utc(2025, 10, 26, 5))
    assert occurrence[1] - occurrence[0] == 9 * H


def test_new_york_spring_and_autumn() -> None:
    # 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00 UTC)
    early = weekly("sun", "02:15", "03:30", NEW_YORK)
    assert early.occurrence_at(utc(2025, 3, 9, 7, 10)) == (
        utc(2025, 3, 9, 7),
        utc(2025, 3, 9, 7, 30),
    )
    # 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:30 is first EDT (05:30 UTC)
    fold = weekly("sun", "01:30", "03:00", NEW_YORK)
    assert fold.occurrence_at(utc(2025, 11, 2, 6)) == (utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 8))
    overnight = weekly("sat", "23:00", "01:00", NEW_YORK)
    assert overnight.occurrence_at(utc(2025, 11, 2, 4)) == (
        utc(2025, 11, 2, 3),
        utc(2025, 11, 2, 5),
    )
    # a plain summer day: 09:00 EDT is 13:00 UTC, a winter day 14:00 UTC
    nine = weekly("mon", "09:00", "10:00", NEW_YORK)
    assert nine.next_start(utc(2025, 7, 1)) == utc(2025, 7, 7, 13)
    assert nine.next_start(utc(2025, 12, 1)) == utc(2025, 12, 1, 14)


def test_to_utc_in_lord_howe_half_hour_gap() -> None:
    # Australia/Lord_Howe 2025-10-05: 02:00 +10:30 jumps to 02:30 +11:00 (15:30 UTC)
    zone = ZoneInfo("Australia/Lord_Howe")
    assert to_utc(datetime(2025, 10, 5, 2, 15), zone) == utc(2025, 10, 4, 15, 30)
    assert to_utc(datetime(2025, 10, 5, 2, 30), zone) == utc(2025, 10, 4, 15, 30)
    assert to_utc(datetime(2025, 10, 5, 1, 59), zone) == utc(2025, 10, 4, 15, 29)


# --- effective windows, openings, intervals ---------------------------------------------


def test_effective_window_without_recurrence_is_the_grant_window() -> None:
    start, end = utc(2025, 6, 9), utc(2025, 6, 20)
    assert effective_window(start, end, None, utc(2025, 6, 10)) == (start, end)
    assert effective_window(start, end, None, end) is None
    assert effective_window(start, end, None, start - M) is None


def test_effective_window_is_the_occurrence_clipped_to_the_grant() -> None:
    start, end = local(BERLIN, 2025, 6, 9, 23), local(BERLIN, 2025, 6, 12, 1)
    monday = local(BERLIN, 2025, 6, 9, 23, 30)
    assert effective_window(start, end, WEEKNIGHTS, monday) == (
        start,
        local(BERLIN, 2025, 6, 10, 2),
    )
    wednesday = local(BERLIN, 2025, 6, 11, 23)
    assert effective_window(start, end, WEEKNIGHTS, wednesday) == (
        local(BERLIN, 2025, 6, 11, 22),
        end,
    )
    assert effective_window(start, end, WEEKNIGHTS, local(BERLIN, 2025, 6, 10, 12)) is None


def test_touching_occurrences_are_one_window() -> None:
    weekend = weekly("sat,sun", "00:00", "00:00", "UTC")
    start, end = utc(2025, 6, 1), utc(2025, 7, 1)
    assert effective_window(start, end, weekend, utc(2025, 6, 7, 10)) == (
        utc(2025, 6, 7),
        utc(2025, 6, 9),
    )
    always = weekly("0,1,2,3,4,5,6", "06:00", "06:00", "UTC")
    assert effective_window(start, end, always, utc(2025, 6, 7, 10)) == (utc(2025, 6, 7, 6), end)


def test_next_opening() -> None:
    start, end = utc(2025, 6, 9, 12), utc(2025, 6, 11, 12)
    assert next_opening(start, end, None, utc(2025, 6, 1)) == start
    assert next_opening(start, end, None, utc(2025, 6, 10)) == utc(2025, 6, 10)
    assert next_opening(start, end, None, end) is None
    assert next_opening(start, end, WEEKNIGHTS, utc(2025, 6, 1)) == local(BERLIN, 2025, 6, 9, 22)
    assert next_opening(start, end, WEEKNIGHTS, utc(2025, 6, 10, 22)) == utc(2025, 6, 10, 22)
    assert next_opening(start, end, WEEKNIGHTS, utc(2025, 6, 11, 1)) is None  # none left


def test_intervals_are_clipped_occurrences_and_bounded() -> None:
    start, end = local(BERLIN, 2025, 6, 9, 23), local(BERLIN, 2025, 6, 12, 1)
    assert intervals(start, end, WEEKNIGHTS) == [
        (start, local(BERLIN, 2025, 6, 10, 2)),
        (local(BERLIN, 2025, 6, 10, 22), local(BERLIN, 2025, 6, 11, 2)),
        (local(BERLIN, 2025, 6, 11, 22), end),
    ]
    assert intervals(start, end, None) == [(start, end)]
    assert intervals(end, start, WEEKNIGHTS) == []
    # 261 weekdays in 2025, plus Tuesday 2024-12-31's night clipped to its last hour
    year = intervals(utc(2025, 1, 1), utc(2026, 1, 1), WEEKNIGHTS, limit=300)
    assert len(year) == 262 and year[0] == (utc(2025, 1, 1), utc(2025, 1, 1, 1))
    with pytest.raises(InvalidInput) as err:
        intervals(utc(2025, 1, 1), utc(2026, 1, 1), WEEKNIGHTS, limit=100)
    assert err.value.code == "recurrence-too-long" and "100" in err.value.message


def test_uncovered_uses_the_union_of_maintenance_windows() -> None:
    evening = weekly("mon", "20:00", "23:00")
    late = weekly("mon", "23:00", "03:00")
    wanted = [(local(BERLIN, 2025, 6, 9, 21), local(BERLIN, 2025, 6, 10, 2))]
    assert uncovered(wanted, []) is None  # no maintenance windows: no restriction
    assert uncovered(wanted, [evening]) == wanted[0]
    assert uncovered(wanted, [evening, late]) is None
    # the same hours asked for in New York time are outside them
    asked = intervals(utc(2025, 6, 9), utc(2025, 6, 17), weekly("mon", "15:00", "16:00", NEW_YORK))
    assert uncovered(asked, [evening, late]) is None  # 21:00-22:00 Berlin
    asked = intervals(utc(2025, 6, 9), utc(2025, 6, 17), weekly("mon", "13:30", "14:30", NEW_YORK))
    assert uncovered(asked, [evening, late]) == asked[0]  # 19:30 Berlin is too early
    gap = [(local(BERLIN, 2025, 6, 9, 22), local(BERLIN, 2025, 6, 9, 23, 30))]
    assert uncovered(gap, [evening, weekly("mon", "23:10", "23:59")]) == gap[0]


# --- properties -------------------------------------------------------------------------

ZONES = [
    "UTC",
    BERLIN,
    NEW_YORK,
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Santiago",  # DST at midnight
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Europe/London",
]


def _transitions(tz: str) -> Iterator[datetime]:
    zone = ZoneInfo(tz)
    at = utc(2025, 1, 1)
    offset = at.astimezone(zone).utcoffset()
    while at < utc(2026, 1, 1):
        at += H / 2
        now = at.astimezone(zone).utcoffset()
        if now != offset:
            offset = now
            yield at


TRANSITIONS = sorted({t for tz in ZONES for t in _transitions(tz)})


@st.composite
def weeklies(draw: st.DrawFn) -> Weekly:
    minute = st.integers(min_value=0, max_value=24 * 60 - 1)
    start, end = draw(minute), draw(minute)
    if draw(st.booleans()):  # round hours and half hours are what people type
        start, end = start // 30 * 30, end // 30 * 30
    return Weekly(
        frozenset(draw(st.sets(st.integers(0, 6), min_size=1))),
        time(start // 60, start % 60),
        time(end // 60, end % 60),
        draw(st.sampled_from(ZONES)),
    )


# anywhere in 2024-2027, and often within a few hours of a DST change
instants = st.one_of(
    st.datetimes(
        min_value=datetime(2024, 1, 1),
        max_value=datetime(2027, 1, 1),
        timezones=st.just(UTC),
    ),
    st.builds(
        lambda t, minutes: t + timedelta(minutes=minutes),
        st.sampled_from(TRANSITIONS),
        st.integers(min_value=-30 * 60, max_value=30 * 60),
    ),
)


@given(window=weeklies())
def test_property_json_round_trip(window: Weekly) -> None:
    assert Weekly.parse(window.to_json()) == window


@given(window=weeklies(), now=instants)
def test_property_occurrence_at_contains_now_and_only_then(window: Weekly, now: datetime) -> None:
    found = window.occurrence_at(now)
    around = list(window.occurrences(now - 3 * 24 * H, now + 3 * 24 * H))
    containing = [o for o in around if o[0] <= now < o[1]]
    assert containing == ([found] if found else [])


@given(window=weeklies(), now=instants)
def test_property_occurrences_are_ordered_disjoint_and_on_their_days(
    window: Weekly, now: datetime
) -> None:
    found = list(window.occurrences(now, now + 9 * 24 * H))
    assert found, "every weekday set has an occurrence within nine days"
    for begin, end in found:
        assert begin < end <= begin + 26 * H
        assert begin.tzinfo is UTC and end.tzinfo is UTC
        begin_local = begin.astimezone(window.zone)
        # the start is on a listed day at the start time, or where a DST gap pushed it
        on_time = begin_local.time() == window.start
        pushed = begin_local.time() > window.start and _in_gap(window, begin_local.date())
        assert begin_local.weekday() in window.days
        assert on_time or pushed
    for (_, end), (begin, _) in itertools.pairwise(found):
        assert end <= begin


def _in_gap(window: Weekly, day: date) -> bool:
    wall = datetime.combine(day, window.start)
    zone = window.zone
    return wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall


@given(window=weeklies(), now=instants)
def test_property_next_start_is_the_first_start_from_now(window: Weekly, now: datetime) -> None:
    start = window.next_start(now)
    assert start is not None and start >= now
    assert window.occurrence_at(start) is not None
    assert window.occurrence_at(start)[0] == start  # type: ignore[index]
    between = [o for o in window.occurrences(now, start) if now <= o[0] < start]
    assert between == []


@given(
    window=weeklies(),
    now=instants,
    before=st.integers(min_value=0, max_value=10 * 24 * 60),
    after=st.integers(min_value=1, max_value=10 * 24 * 60),
)
def test_property_effective_window_inside_grant_and_occurrences(
    window: Weekly, now: datetime, before: int, after: int
) -> None:
    start, end = now - before * M, now + after * M
    effective = effective_window(start, end, window, now)
    if window.occurrence_at(now) is None:
        assert effective is None
        return
    assert effective is not None
    begin, finish = effective
    assert start <= begin <= now < finish <= end
    # every minute of it is inside some occurrence, and it ends where they do
    assert all(window.occurrence_at(t) for t in (begin, finish - M, now))
    assert finish == end or window.occurrence_at(finish) is None


@given(window=weeklies(), now=instants, days=st.integers(min_value=0, max_value=40))
def test_property_intervals_are_covered_by_their_own_window(
    window: Weekly, now: datetime, days: int
) -> None:
    start, end = now, now + days * 24 * H + 90 * M
    found = intervals(start, end, window)
    assert all(start <= b < e <= end for b, e in found)
    assert all(e1 <= b2 for (_, e1), (b2, _) in itertools.pairwise(found))
    assert all(window.occurrence_at(b) is not None for b, _ in found)
    assert uncovered(found, [window]) is None
    if found:
        assert next_opening(start, end, window, start) == found[0][0]


@given(window=weeklies())
def test_property_describe_names_exactly_the_days(window: Weekly) -> None:
    days = window.describe().split(" ")[0]
    spec = f"{days},{window.start:%H:%M}-{window.end:%H:%M},{window.tz}"
    assert Weekly.from_spec(spec) == window
