"""Access decisions (policy/decide.py): login gate, target gate and live grants."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

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
) -> GrantView:
    return GrantView(
        id=id,
        ticket_ref=ticket or f"CHG{id:07d}",
        devices=frozenset(devices),
        services=frozenset(services),
        window_start=start,
        window_end=end,
        revoked_at=revoked_at,
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


# --- properties -------------------------------------------------------------------------

DEVICES = ["pump-12", "pump-13", "mri-1"]
SERVICES = ["ssh", "sftp", "https"]
BASE = datetime(2025, 1, 1, tzinfo=UTC)
# Small offsets (minutes) so boundaries coincide with ``now`` often.
minutes = st.integers(min_value=-10, max_value=10)


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
    )


def usable(g: GrantView, device: str, service: str, now: datetime) -> bool:
    return (
        device in g.devices
        and service in g.services
        and g.revoked_at is None
        and g.window_start <= now < g.window_end
    )


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
        assert decision.grant.window_end == max(g.window_end for g in covering)
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
    expected = [g for g in grants if g.revoked_at is None and g.window_start <= now < g.window_end]
    assert Counter(result) == Counter(expected)
    ends = [g.window_end for g in result]
    assert ends == sorted(ends)
