"""Approval rules (policy/approval.py): who must approve, who may, and when it is enough."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.approval import (
    APPROVE,
    DENY,
    binding,
    check_approver,
    is_own_request,
    missing_roles,
    required_roles,
    satisfied,
)
from policy.errors import Forbidden, InvalidInput
from policy.models import Criticality

START = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
END = START + timedelta(hours=2)
WEEKLY = {"days": [0, 1, 2, 3, 4], "start": "06:00", "end": "18:00", "tz": "America/Chicago"}
BOTH = frozenset({"biomed", "security"})
BIOMED = frozenset({"biomed"})


@dataclass(frozen=True)
class Vote:
    approver: str
    role: str
    binding: str = "b1"
    decision: str = APPROVE


def bind(**kw: object) -> str:
    args: dict[str, object] = {
        "ticket": "CHG0001234",
        "device_names": ["pump-1", "monitor-2"],
        "services": ["ssh", "https"],
        "window_start": START,
        "window_end": END,
        "recurrence_json": None,
    }
    args.update(kw)
    return binding(**args)  # type: ignore[arg-type]


def check(**kw: object) -> None:
    args: dict[str, object] = {
        "approver": "staff:bea",
        "approver_roles": {"biomed"},
        "role": "biomed",
        "filed_by": "vendor:vic",
        "vendor_login": "vic",
        "required": BOTH,
        "approvals": [],
        "current": "b1",
    }
    args.update(kw)
    check_approver(**args)  # type: ignore[arg-type]


def refused(**kw: object) -> str:
    with pytest.raises(Forbidden) as info:
        check(**kw)
    assert info.value.message
    return info.value.code


# --- required_roles -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ([], BIOMED),
        (["low"], BIOMED),
        (["medium", "low"], BIOMED),
        (["high"], BOTH),
        (["low", "life-sustaining"], BOTH),
        ([Criticality.HIGH, Criticality.MEDIUM], BOTH),
    ],
)
def test_required_roles_by_criticality(levels: list[str], expected: frozenset[str]) -> None:
    assert required_roles(levels) == expected


def test_required_roles_refuses_an_unknown_criticality() -> None:
    with pytest.raises(ValueError, match="critical"):
        required_roles(["critical"])


@given(st.lists(st.sampled_from(list(Criticality))))
def test_two_people_exactly_when_some_device_is_high_or_life_sustaining(
    levels: list[Criticality],
) -> None:
    critical = any(c in (Criticality.HIGH, Criticality.LIFE_SUSTAINING) for c in levels)
    assert required_roles(levels) == (BOTH if critical else BIOMED)


# --- binding ------------------------------------------------------------------------------


def test_binding_is_hex_sha256_and_ignores_order_zone_and_duplicates() -> None:
    base = bind()
    assert len(base) == 64 and int(base, 16) >= 0
    chicago = timezone(timedelta(hours=-6))
    assert bind(device_names=["monitor-2", "pump-1", "pump-1"]) == base
    assert bind(services=["https", "ssh"]) == base
    assert bind(window_start=START.astimezone(chicago), window_end=END.astimezone(chicago)) == base


@pytest.mark.parametrize(
    "change",
    [
        {"ticket": "CHG0001235"},
        {"device_names": ["pump-1"]},
        {"services": ["ssh"]},
        {"window_start": START + timedelta(minutes=1)},
        {"window_end": END - timedelta(microseconds=1)},
        {"recurrence_json": WEEKLY},
        {"vendor_login": "someone-else"},
    ],
)
def test_binding_changes_with_any_part_of_the_content(change: dict[str, object]) -> None:
    assert bind(**change) != bind()


def test_binding_normalizes_the_recurrence() -> None:
    shuffled = {"tz": "America/Chicago", "end": "18:00", "start": "6:00", "days": [4, 3, 2, 1, 0]}
    assert bind(recurrence_json=shuffled) == bind(recurrence_json=WEEKLY)
    other = dict(WEEKLY, end="17:00")
    assert bind(recurrence_json=other) != bind(recurrence_json=WEEKLY)


def test_binding_refuses_naive_times_and_bad_recurrences() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        bind(window_start=START.replace(tzinfo=None))
    with pytest.raises(InvalidInput):
        bind(recurrence_json={"days": [9], "start": "06:00", "end": "18:00", "tz": "UTC"})


# --- check_approver -----------------------------------------------------------------------


def test_a_biomed_approver_with_the_role_may_approve() -> None:
    check()


@pytest.mark.parametrize(
    ("approver", "filed_by", "vendor_login"),
    [
        ("staff:sam", "staff:sam", "vic"),  # filed it on the vendor's behalf
        ("staff:vic", "vendor:vic", "vic"),  # the vendor user's login on a staff account
        ("staff:Vic", "staff:bea", "vic"),  # ... whatever the case
        ("staff:sam", "vendor:SAM", "vic"),
    ],
)
def test_self_approval_is_refused(approver: str, filed_by: str, vendor_login: str) -> None:
    code = refused(
        approver=approver,
        approver_roles=BOTH,
        filed_by=filed_by,
        vendor_login=vendor_login,
    )
    assert code == "self-approval"
    assert is_own_request(approver, filed_by, vendor_login)


def test_someone_else_is_not_self() -> None:
    assert not is_own_request("staff:bea", "staff:sam", "vic")


def test_self_approval_comes_before_role_checks() -> None:
    assert refused(approver="staff:vic", approver_roles=set()) == "self-approval"


def test_approving_as_a_role_one_does_not_hold_is_refused() -> None:
    assert refused(approver_roles={"security"}, role="biomed") == "role-missing"
    assert refused(approver_roles={"admin"}, role="admin") == "role-invalid"


def test_approving_as_a_role_the_request_does_not_need_is_refused() -> None:
    code = refused(approver_roles=BOTH, role="security", required=BIOMED)
    assert code == "role-not-required"
    assert refused(approver_roles={"admin"}, role="biomed", required=BIOMED) == "role-missing"


def test_one_person_cannot_give_both_approvals() -> None:
    first = [Vote("staff:bea", "biomed")]
    code = refused(approver_roles=BOTH, role="security", approvals=first)
    assert code == "already-approved"


def test_a_role_already_approved_by_someone_else_is_satisfied() -> None:
    first = [Vote("staff:bea", "biomed")]
    code = refused(approver="staff:bob", approver_roles=BOTH, role="biomed", approvals=first)
    assert code == "role-satisfied"
    check(approver="staff:bob", approver_roles=BOTH, role="security", approvals=first)


def test_approvals_of_other_content_and_denials_do_not_count() -> None:
    stale = [Vote("staff:bea", "biomed", binding="old"), Vote("staff:bob", "biomed", decision=DENY)]
    check(approvals=stale)  # bea may approve again, and biomed is not yet satisfied


# --- satisfied / missing_roles ------------------------------------------------------------


def test_one_biomed_approval_satisfies_a_low_risk_request() -> None:
    assert satisfied(BIOMED, [Vote("staff:bea", "biomed")], "b1")
    assert not satisfied(BIOMED, [], "b1")
    assert missing_roles(BIOMED, [], "b1") == BIOMED


def test_critical_requests_need_both_roles_by_two_people() -> None:
    one = [Vote("staff:bea", "biomed")]
    assert missing_roles(BOTH, one, "b1") == {"security"}
    two = [*one, Vote("staff:sol", "security")]
    assert satisfied(BOTH, two, "b1")
    same_person = [*one, Vote("staff:bea", "security")]
    assert missing_roles(BOTH, same_person, "b1") == {"security"}


def test_only_approvals_of_the_current_binding_count() -> None:
    votes = [Vote("staff:bea", "biomed", binding="old"), Vote("staff:sol", "security")]
    assert missing_roles(BOTH, votes, "b1") == {"biomed"}
    assert not satisfied(BOTH, [Vote("staff:bea", "biomed", decision=DENY)], "b1")


PEOPLE = ["staff:a", "staff:b", "staff:c"]
ROLES = ["biomed", "security", "admin"]


def brute_force(required: frozenset[str], votes: list[Vote]) -> bool:
    """Is there an assignment of distinct valid approvers to every required role?"""
    valid = [(v.approver, v.role) for v in votes if v.binding == "b1" and v.decision == APPROVE]
    roles = sorted(required)
    people = sorted({p for p, _ in valid})
    for chosen in itertools.permutations(people, len(roles)):
        if all((person, role) in valid for person, role in zip(chosen, roles, strict=True)):
            return True
    return False


@given(
    st.sampled_from([BIOMED, BOTH]),
    st.lists(
        st.builds(
            Vote,
            st.sampled_from(PEOPLE),
            st.sampled_from(ROLES),
            st.sampled_from(["b1", "b0"]),
            st.sampled_from([APPROVE, DENY]),
        ),
        max_size=6,
    ),
)
def test_satisfied_matches_a_brute_force_assignment(
    required: frozenset[str], votes: list[Vote]
) -> None:
    assert satisfied(required, votes, "b1") == brute_force(required, votes)
    assert missing_roles(required, votes, "b1") <= required


@given(st.lists(st.tuples(st.sampled_from(PEOPLE), st.sampled_from(["biomed", "security"]))))
def test_approvals_check_approver_lets_through_never_double_count_a_person(
    attempts: list[tuple[str, str]],
) -> None:
    """Feeding any sequence of attempts through check_approver, whatever is accepted
    satisfies the two-person rule only with two different people."""
    accepted: list[Vote] = []
    for person, role in attempts:
        try:
            check(approver=person, approver_roles=BOTH, role=role, approvals=accepted)
        except Forbidden:
            continue
        accepted.append(Vote(person, role))
    assert len({v.approver for v in accepted}) == len(accepted)
    assert len({v.role for v in accepted}) == len(accepted)
    assert satisfied(BOTH, accepted, "b1") == (len(accepted) == 2)
