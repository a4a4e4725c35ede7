"""next_action: what happens to a live session, for every kind of fact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from policy.supervise import Limits, LiveFacts, next_action

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LIMITS = Limits(warnings=(900, 300, 60), idle_timeout=600, max_session=3600)


def facts(**kw: object) -> LiveFacts:
    base: dict[str, object] = {
        "now": NOW,
        "started": NOW - timedelta(minutes=5),
        "last_activity": NOW,
        "window_end": NOW + timedelta(hours=1),
    }
    base.update(kw)
    return LiveFacts(**base)  # type: ignore[arg-type]


def test_a_quiet_session_in_its_window_is_left_alone() -> None:
    action = next_action(facts(), LIMITS)
    assert action.end_reason is None and not action.warned


def test_kill_beats_everything_and_names_who() -> None:
    action = next_action(facts(killed_by="security1", revoked="biomed1"), LIMITS)
    assert action.end_reason == "killed" and "security1" in action.message


def test_revocation_ends_the_session() -> None:
    assert next_action(facts(revoked="biomed1"), LIMITS).end_reason == "revoked"


def test_window_end_is_exclusive() -> None:
    assert next_action(facts(window_end=NOW), LIMITS).end_reason == "window-ended"
    before = next_action(facts(window_end=NOW + timedelta(seconds=1)), LIMITS)
    assert before.end_reason is None


def test_idle_and_max_length_use_the_grant_over_the_defaults() -> None:
    idle = facts(last_activity=NOW - timedelta(seconds=601))
    assert next_action(idle, LIMITS).end_reason == "idle-timeout"
    assert (
        next_action(
            facts(last_activity=NOW - timedelta(seconds=601), idle_timeout=900), LIMITS
        ).end_reason
        is None
    )
    long = facts(started=NOW - timedelta(hours=2))
    assert next_action(long, LIMITS).end_reason == "max-session-length"
    assert (
        next_action(
            facts(started=NOW - timedelta(hours=2), max_session=3 * 3600), LIMITS
        ).end_reason
        is None
    )


def test_warnings_come_once_each_and_late_ones_fold_together() -> None:
    at_14m = facts(window_end=NOW + timedelta(minutes=14))
    first = next_action(at_14m, LIMITS)
    assert first.warned == (900,) and "14 min" in first.message
    assert not next_action(
        facts(window_end=NOW + timedelta(minutes=14), warned=frozenset({900})), LIMITS
    ).warned
    # the gateway looked away past two thresholds: one message, both marked
    late = next_action(
        facts(window_end=NOW + timedelta(seconds=50), warned=frozenset({900})), LIMITS
    )
    assert set(late.warned) == {300, 60}


@given(
    st.integers(-7200, 7200),
    st.integers(0, 7200),
    st.integers(0, 7200),
    st.booleans(),
    st.booleans(),
)
def test_a_session_past_any_limit_is_never_left_running(
    window_left: int, age: int, idle: int, revoked: bool, killed: bool
) -> None:
    f = facts(
        window_end=NOW + timedelta(seconds=window_left),
        started=NOW - timedelta(seconds=age),
        last_activity=NOW - timedelta(seconds=idle),
        revoked="x" if revoked else None,
        killed_by="y" if killed else None,
    )
    action = next_action(f, LIMITS)
    must_end = window_left <= 0 or age >= 3600 or idle >= 600 or revoked or killed
    assert (action.end_reason is not None) == must_end


def test_limits_from_settings() -> None:
    import pytest

    from policy.errors import ConfigError
    from policy.supervise import limits_from

    assert limits_from(("60", "900", "300"), 1800, 0) == Limits((900, 300, 60), 1800, None)
    with pytest.raises(ConfigError, match="window_warnings"):
        limits_from(("15m",), 1800, 3600)
    with pytest.raises(ConfigError, match="positive"):
        limits_from(("0",), 1800, 3600)


def test_each_occurrence_of_a_recurring_grant_is_warned_and_closed_like_a_window() -> None:
    """Drive a session minute by minute: the grant runs a month, the occurrence two hours."""
    from policy.decide import GrantView, decide_target
    from policy.windows import Weekly

    mornings = Weekly.from_form(["mon"], "08:00", "10:00", "Europe/Berlin")  # 07:00-09:00 UTC
    monday = datetime(2026, 11, 23, 7, 30, tzinfo=UTC)
    grant = GrantView(
        1, "CHG1", frozenset({"pump-12"}), frozenset({"ssh"}),
        monday - timedelta(days=7), monday + timedelta(days=21), recurrence=mornings,
    )  # fmt: skip
    decision = decide_target("pump-12", True, "ssh", [grant], monday)
    assert decision.allow and decision.window_end == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    warned: set[int] = set()
    events: list[tuple[datetime, str]] = []
    now = monday
    while True:
        action = next_action(
            LiveFacts(now, monday, now, decision.window_end, warned=frozenset(warned)),
            Limits(idle_timeout=None, max_session=None),
        )
        if action.warned:
            warned.update(action.warned)
            events.append((now, action.message))
        if action.end_reason is not None:
            events.append((now, action.end_reason))
            break
        now += timedelta(seconds=30)
    at = [t.strftime("%H:%M:%S") for t, _ in events]
    assert at == ["08:45:00", "08:55:00", "08:59:00", "09:00:00"]
    assert "ends in 15 min (at 09:00 UTC)" in events[0][1]
    assert events[-1][1] == "window-ended"
    # the grant is not over: refused between occurrences, open again next Monday
    later = decide_target("pump-12", True, "ssh", [grant], events[-1][0])
    assert not later.allow and "2026-11-30 07:00 UTC" in later.detail
    assert decide_target("pump-12", True, "ssh", [grant], monday + timedelta(days=7)).allow
