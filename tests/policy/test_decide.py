"""Access decisions (policy/decide.py): login gate, target gate and live grants."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.decide import (
    Decision,
    GrantView,
    Reason,
    UserView,
    decide_login,
    decide_target,
    live_grants,
)
from policy.windows import Weekly

NOW = datetime(2025, 3, 14, 9, 30, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def grant(
    id: int = 1,
    *,
    devices: tuple[str, ...] = ("pump-12",),
    services: tuple[str, ...] = ("ssh",),
    start: datetime = NOW - HOUR,
    end: datetime = NOW + HOUR,
    revoked_at: datetime | None = None,
    ticket: str | None = None,
    recurrence: Weekly | None = None,
) -> GrantView:
    return GrantView(
        id=id,
        ticket_ref=ticket or f"CHG{id:07d}",
        devices=frozenset(devices),
        services=frozenset(services),
        window_start=start,
        window_end=end,
        revoked_at=revoked_at,
        recurrence=recurrence,
    )


def target(grants: list[GrantView], now: datetime = NOW, **kw: object) -> Decision:
    device = str(kw.get("device", "pump-12"))
    service = str(kw.get("service", "ssh"))
    known = bool(kw.get("known", True))
    return decide_target(device, known, service, grants, now)


# --- decide_login -----------------------------------------------------------------------


def test_login_unknown_user_denied() -> None:
    d = decide_login(None, NOW)
    assert not d.allow
    assert d.reason is Reason.UNKNOWN_USER
    assert d.grant is None


def test_login_disabled_user_denied() -> None:
    d = decide_login(UserView("vendor1", disabled=True, locked_until=None), NOW)
    assert not d.allow
    assert d.reason is Reason.USER_DISABLED


def test_login_disabled_wins_over_expired_lock() -> None:
    d = decide_login(UserView("vendor1", disabled=True, locked_until=NOW - HOUR), NOW)
    assert (d.allow, d.reason) == (False, Reason.USER_DISABLED)


def test_login_locked_until_future_denied_and_names_the_end() -> None:
    until = NOW + timedelta(minutes=15)
    d = decide_login(UserView("vendor1", disabled=False, locked_until=until), NOW)
    assert not d.allow
    assert d.reason is Reason.USER_LOCKED
    assert "09:45:00" in d.detail
    assert any("09:45:00" in r for r in d.reasons)


@pytest.mark.parametrize("ago", [timedelta(seconds=1), HOUR, timedelta(days=30)])
def test_login_lock_in_the_past_no_longer_applies(ago: timedelta) -> None:
    d = decide_login(UserView("vendor1", disabled=False, locked_until=NOW - ago), NOW)
    assert d.allow
    assert d.reason is Reason.ALLOWED


def test_login_lock_ends_exactly_at_locked_until() -> None:
    d = decide_login(UserView("vendor1", disabled=False, locked_until=NOW), NOW)
    assert d.allow


def test_login_ok() -> None:
    d = decide_login(UserView("vendor1", disabled=False, locked_until=None), NOW)
    assert d.allow
    assert d.reason is Reason.ALLOWED
    assert d.reasons  # the audit trail says why


# --- decide_target ----------------------------------------------------------------------


def test_target_unknown_device() -> None:
    d = target([grant()], device="ghost-1", known=False)
    assert not d.allow
    assert d.reason is Reason.DEVICE_UNKNOWN
    assert d.detail == "ghost-1"


def test_target_unknown_device_even_with_a_grant_naming_it() -> None:
    d = target([grant(devices=("pump-12",))], known=False)
    assert (d.allow, d.reason) == (False, Reason.DEVICE_UNKNOWN)


def test_target_no_grant_at_all() -> None:
    d = target([])
    assert (d.allow, d.reason) == (False, Reason.NO_GRANT)
    assert d.detail == "pump-12"


def test_target_no_grant_for_this_device() -> None:
    d = target([grant(devices=("pump-13", "monitor-1"))])
    assert (d.allow, d.reason) == (False, Reason.NO_GRANT)


def test_target_service_not_granted() -> None:
    d = target([grant(services=("sftp",))], service="ssh")
    assert not d.allow
    assert d.reason is Reason.SERVICE_NOT_GRANTED
    assert d.detail == "ssh on pump-12"


def test_target_window_not_started_names_the_start() -> None:
    start = datetime(2025, 3, 14, 13, 5, tzinfo=UTC)
    d = target([grant(start=start, end=start + HOUR)])
    assert not d.allow
    assert d.reason is Reason.WINDOW_NOT_STARTED
    assert "2025-03-14 13:05" in d.detail


def test_target_window_not_started_names_the_soonest_start() -> None:
    soon = datetime(2025, 3, 14, 11, 0, tzinfo=UTC)
    later = datetime(2025, 3, 15, 8, 0, tzinfo=UTC)
    d = target([grant(1, start=later, end=later + HOUR), grant(2, start=soon, end=soon + HOUR)])
    assert d.reason is Reason.WINDOW_NOT_STARTED
    assert "2025-03-14 11:00" in d.detail


def test_target_window_ended_names_the_end() -> None:
    end = datetime(2025, 3, 14, 8, 0, tzinfo=UTC)
    d = target([grant(start=end - HOUR, end=end)])
    assert not d.allow
    assert d.reason is Reason.WINDOW_ENDED
    assert "2025-03-14 08:00" in d.detail


def test_target_revoked() -> None:
    d = target([grant(revoked_at=NOW - timedelta(minutes=5))])
    assert not d.allow
    assert d.reason is Reason.GRANT_REVOKED


def test_target_revoked_later_in_the_window_still_denies() -> None:
    # revoked_at is a fact, not a time bound: a revoked grant never allows.
    d = target([grant(revoked_at=NOW + timedelta(minutes=5))])
    assert (d.allow, d.reason) == (False, Reason.GRANT_REVOKED)


def test_target_allowed_at_exactly_window_start() -> None:
    g = grant(start=NOW, end=NOW + HOUR)
    d = target([g])
    assert d.allow
    assert d.reason is Reason.ALLOWED
    assert d.grant == g


def test_target_denied_at_exactly_window_end() -> None:
    g = grant(start=NOW - HOUR, end=NOW)
    d = target([g])
    assert not d.allow
    assert d.reason is Reason.WINDOW_ENDED
    assert d.grant is None


def test_target_allowed_one_microsecond_before_end() -> None:
    d = target([grant(start=NOW - HOUR, end=NOW + timedelta(microseconds=1))])
    assert d.allow


def test_target_allowed_decision_names_grant_and_ticket() -> None:
    g = grant(7, ticket="CHG0001234")
    d = target([g])
    assert d.allow
    assert d.grant == g
    assert any("CHG0001234" in r for r in d.reasons)


def test_target_live_grant_wins_over_ended_one() -> None:
    ended = grant(1, start=NOW - 3 * HOUR, end=NOW - HOUR)
    live = grant(2, start=NOW - HOUR, end=NOW + HOUR)
    for grants in ([ended, live], [live, ended]):
        d = target(grants)
        assert d.allow
        assert d.grant == live


def test_target_live_grant_wins_over_revoked_and_upcoming() -> None:
    revoked = grant(1, revoked_at=NOW - HOUR, end=NOW + 5 * HOUR)
    upcoming = grant(2, start=NOW + HOUR, end=NOW + 9 * HOUR)
    live = grant(3)
    d = target([revoked, upcoming, live])
    assert d.allow
    assert d.grant == live


def test_target_picks_the_live_grant_with_the_latest_end() -> None:
    short = grant(1, end=NOW + HOUR)
    longest = grant(2, end=NOW + 8 * HOUR)
    medium = grant(3, end=NOW + 2 * HOUR)
    d = target([short, longest, medium])
    assert d.allow
    assert d.grant == longest


def test_target_grant_for_other_service_does_not_help() -> None:
    sftp_only = grant(1, services=("sftp",))
    ssh_ended = grant(2, services=("ssh",), start=NOW - 2 * HOUR, end=NOW - HOUR)
    d = target([sftp_only, ssh_ended], service="ssh")
    assert (d.allow, d.reason) == (False, Reason.WINDOW_ENDED)


def test_target_upcoming_reported_before_ended() -> None:
    ended = grant(1, start=NOW - 2 * HOUR, end=NOW - HOUR)
    upcoming = grant(2, start=NOW + HOUR, end=NOW + 2 * HOUR)
    d = target([ended, upcoming])
    assert d.reason is Reason.WINDOW_NOT_STARTED


def test_target_revoked_plus_ended_reports_ended() -> None:
    revoked = grant(1, revoked_at=NOW - HOUR)
    ended = grant(2, start=NOW - 2 * HOUR, end=NOW - HOUR)
    d = target([revoked, ended])
    assert d.reason is Reason.WINDOW_ENDED


def test_target_accepts_a_one_shot_iterable() -> None:
    g = grant()
    d = decide_target("pump-12", True, "ssh", iter([g]), NOW)
    assert d.allow
    assert d.grant == g


def test_denials_carry_a_reason_line() -> None:
    d = target([])
    assert not d.allow
    assert d.reasons and d.reasons[0].startswith(str(Reason.NO_GRANT))


def test_target_plain_grant_session_ends_with_the_window() -> None:
    g = grant(end=NOW + 3 * HOUR)
    assert target([g]).window_end == NOW + 3 * HOUR


# --- decide_target with recurring windows -----------------------------------------------
# NOW is Friday 2025-03-14 09:30 UTC, 10:30 in Berlin (CET, UTC+1).

MONTH = (NOW - timedelta(days=1), NOW + timedelta(days=30))
MORNINGS = Weekly.from_form(["mon", "tue", "wed", "thu", "fri"], "10:00", "12:00", "Europe/Berlin")
NIGHTS = Weekly.from_form(["mon", "tue", "wed", "thu", "fri"], "22:00", "02:00", "Europe/Berlin")


def test_target_recurring_inside_an_occurrence_allows_until_its_end() -> None:
    g = grant(start=MONTH[0], end=MONTH[1], recurrence=MORNINGS)
    d = target([g])
    assert d.allow and d.grant == g
    assert d.window_end == datetime(2025, 3, 14, 11, 0, tzinfo=UTC)  # 12:00 CET


def test_target_recurring_occurrence_is_clipped_to_the_grant_window() -> None:
    d = target([grant(start=MONTH[0], end=NOW + HOUR / 2, recurrence=MORNINGS)])
    assert d.allow and d.window_end == NOW + HOUR / 2


def test_target_recurring_between_occurrences_names_the_next_one() -> None:
    d = target([grant(start=MONTH[0], end=MONTH[1], recurrence=NIGHTS)])
    assert (d.allow, d.reason) == (False, Reason.OUTSIDE_RECURRING_WINDOW)
    assert "next occurrence starts 2025-03-14 21:00 UTC" in d.detail
    assert "Mon-Fri 22:00-02:00 Europe/Berlin" in d.detail
    assert d.grant is None and d.window_end is None


def test_target_recurring_not_started_names_the_first_occurrence() -> None:
    sunday = datetime(2025, 3, 16, tzinfo=UTC)
    d = target([grant(start=sunday, end=sunday + timedelta(days=7), recurrence=NIGHTS)])
    assert d.reason is Reason.WINDOW_NOT_STARTED
    assert "window starts 2025-03-17 21:00 UTC" in d.detail  # Monday 22:00 CET
    assert "Mon-Fri 22:00-02:00" in d.detail


def test_target_recurring_with_no_occurrence_left_says_so() -> None:
    mondays = Weekly.from_form(["mon"], "22:00", "23:00", "Europe/Berlin")
    g = grant(start=MONTH[0], end=NOW + 2 * HOUR, recurrence=mondays)
    d = target([g])
    assert d.reason is Reason.OUTSIDE_RECURRING_WINDOW
    assert "no further occurrence of Mon 22:00-23:00 Europe/Berlin" in d.detail
    assert "2025-03-14 11:30 UTC" in d.detail


def test_target_recurring_soonest_reopening_wins() -> None:
    nightly = grant(1, start=MONTH[0], end=MONTH[1], recurrence=NIGHTS)  # reopens 21:00 UTC
    tomorrow = grant(2, start=NOW + 20 * HOUR, end=NOW + 22 * HOUR)
    assert target([tomorrow, nightly]).reason is Reason.OUTSIDE_RECURRING_WINDOW
    in_an_hour = grant(3, start=NOW + HOUR, end=NOW + 2 * HOUR)
    d = target([nightly, in_an_hour])
    assert d.reason is Reason.WINDOW_NOT_STARTED and "2025-03-14 10:30" in d.detail


def test_target_recurring_and_plain_the_longer_session_wins() -> None:
    plain = grant(1, end=NOW + HOUR)
    mornings = grant(2, start=MONTH[0], end=MONTH[1], recurrence=MORNINGS)  # until 11:00
    d = target([plain, mornings])
    assert d.grant == mornings and d.window_end == NOW + 1.5 * HOUR
    longer = grant(3, end=NOW + 2 * HOUR)
    d = target([plain, mornings, longer])
    assert d.grant == longer and d.window_end == NOW + 2 * HOUR


def test_target_revoked_recurring_grant_reports_revoked() -> None:
    g = grant(start=MONTH[0], end=MONTH[1], recurrence=NIGHTS, revoked_at=NOW - HOUR)
    assert target([g]).reason is Reason.GRANT_REVOKED


# --- live_grants ------------------------------------------------------------------------


def test_live_grants_filters_and_sorts_soonest_ending_first() -> None:
    late = grant(1, end=NOW + 5 * HOUR)
    soon = grant(2, end=NOW + HOUR)
    ended = grant(3, start=NOW - 2 * HOUR, end=NOW - HOUR)
    upcoming = grant(4, start=NOW + HOUR, end=NOW + 2 * HOUR)
    revoked = grant(5, revoked_at=NOW - timedelta(minutes=1))
    at_end = grant(6, start=NOW - HOUR, end=NOW)
    at_start = grant(7, start=NOW, end=NOW + 3 * HOUR)
    result = live_grants([late, soon, ended, upcoming, revoked, at_end, at_start], NOW)
    assert result == [soon, at_start, late]


def test_live_grants_empty() -> None:
    assert live_grants([], NOW) == []


def test_live_grants_sorted_by_the_current_occurrence_end() -> None:
    plain = grant(1, end=NOW + 2 * HOUR)
    mornings = grant(2, start=MONTH[0], end=MONTH[1], recurrence=MORNINGS)  # until 11:00
    nights = grant(3, start=MONTH[0], end=MONTH[1], recurrence=NIGHTS)  # not open now
    assert live_grants([plain, nights, mornings], NOW) == [mornings, plain]


# --- properties -------------------------------------------------------------------------

DEVICES = ["pump-12", "pump-13", "mri-1"]
SERVICES = ["ssh", "sftp", "https"]
BASE = datetime(2025, 1, 1, tzinfo=UTC)
# Small offsets (minutes) so boundaries coincide with ``now`` often.
minutes = st.integers(min_value=-10, max_value=10)


def near_midnight(minute: int) -> time:
    return time(minute % 1440 // 60, minute % 60)


# UTC weekly windows starting and ending within minutes of BASE's midnight, so that
# occurrence boundaries, window boundaries and ``now`` collide often
recurrences = st.one_of(
    st.none(),
    st.builds(
        Weekly,
        st.frozensets(st.integers(0, 6), min_size=1),
        minutes.map(near_midnight),
        minutes.map(near_midnight),
        st.just("UTC"),
    ),
)


@st.composite
def grant_views(draw: st.DrawFn) -> GrantView:
    start = draw(minutes)
    length = draw(st.integers(min_value=0, max_value=10))
    revoked = draw(st.one_of(st.none(), minutes))
    return GrantView(
        id=draw(st.integers(min_value=1, max_value=10_000)),
        ticket_ref=draw(st.sampled_from(["CHG1", "CHG2", "INC3"])),
        devices=frozenset(draw(st.sets(st.sampled_from(DEVICES), max_size=3))),
        services=frozenset(draw(st.sets(st.sampled_from(SERVICES), max_size=3))),
        window_start=BASE + timedelta(minutes=start),
        window_end=BASE + timedelta(minutes=start + length),
        revoked_at=None if revoked is None else BASE + timedelta(minutes=revoked),
        recurrence=draw(recurrences),
    )


def open_until(g: GrantView, now: datetime) -> datetime | None:
    """An oracle for UTC windows, written out longhand: where a session at ``now`` ends."""
    if g.revoked_at is not None or not g.window_start <= now < g.window_end:
        return None
    rule = g.recurrence
    if rule is None:
        return g.window_end
    length = timedelta(
        minutes=(rule.end.hour * 60 + rule.end.minute - rule.start.hour * 60 - rule.start.minute)
        % 1440
        or 1440
    )
    for day in (now.date() - timedelta(days=1), now.date()):
        begin = datetime.combine(day, rule.start, UTC)
        if day.weekday() in rule.days and begin <= now < begin + length:
            end = begin + length
            while end < g.window_end and end.weekday() in rule.days and end.time() == rule.start:
                end += length  # whole days back to back
            return min(end, g.window_end)
    return None


def usable(g: GrantView, device: str, service: str, now: datetime) -> bool:
    return device in g.devices and service in g.services and open_until(g, now) is not None


@given(
    grants=st.lists(grant_views(), max_size=8),
    device=st.sampled_from(DEVICES),
    service=st.sampled_from(SERVICES),
    offset=minutes,
)
def test_property_allow_iff_some_grant_covers_now(
    grants: list[GrantView], device: str, service: str, offset: int
) -> None:
    now = BASE + timedelta(minutes=offset)
    decision = decide_target(device, True, service, grants, now)
    covering = [g for g in grants if usable(g, device, service, now)]
    assert decision.allow == bool(covering)
    if decision.allow:
        assert decision.reason is Reason.ALLOWED
        assert decision.grant is not None
        assert usable(decision.grant, device, service, now)
        ends = [open_until(g, now) for g in covering]
        assert decision.window_end == max(e for e in ends if e is not None)
        assert now < decision.window_end <= decision.grant.window_end
    else:
        assert decision.reason is not Reason.ALLOWED
        assert decision.grant is None


@given(
    grants=st.lists(grant_views(), max_size=8),
    device=st.sampled_from(DEVICES),
    service=st.sampled_from(SERVICES),
    offset=minutes,
)
def test_property_unknown_device_never_allowed(
    grants: list[GrantView], device: str, service: str, offset: int
) -> None:
    d = decide_target(device, False, service, grants, BASE + timedelta(minutes=offset))
    assert (d.allow, d.reason) == (False, Reason.DEVICE_UNKNOWN)


@given(grants=st.lists(grant_views(), max_size=8), offset=minutes)
def test_property_live_grants_are_exactly_the_live_ones(
    grants: list[GrantView], offset: int
) -> None:
    now = BASE + timedelta(minutes=offset)
    result = live_grants(grants, now)
    expected = [g for g in grants if open_until(g, now) is not None]
    assert Counter(result) == Counter(expected)
    ends = [open_until(g, now) for g in result]
    assert ends == sorted(ends)  # type: ignore[type-var]
