"""Approval rules: who must approve a request, who may, and when it is approved (pure).

- A request needs a biomed approval; if any of its devices is of high or life-sustaining
  criticality it also needs a security approval, and the two must come from two different
  people, even when one person holds both roles.
- Nobody approves a request they filed or one for their own vendor account.
- An approval binds the exact content it approved (``binding``: ticket, vendor user,
  devices, services, window, recurrence). Any change to the content makes earlier
  approvals count for nothing; the workflow also deletes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from policy.errors import Forbidden
from policy.models import Criticality
from policy.windows import Weekly

APPROVE = "approve"
DENY = "deny"
ONE_PERSON = frozenset({"biomed"})
TWO_PERSON = frozenset({"biomed", "security"})
APPROVER_ROLES = TWO_PERSON  # the roles approvals are given as
CRITICAL = frozenset({Criticality.HIGH, Criticality.LIFE_SUSTAINING})
BINDING_VERSION = 1


class ApprovalLike(Protocol):
    """An approval as the rules see it (``policy.models.Approval`` is one)."""

    @property
    def approver(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def decision(self) -> str: ...

    @property
    def binding(self) -> str: ...


def required_roles(criticalities: Iterable[Criticality | str]) -> frozenset[str]:
    """The roles that must approve a request for devices of these criticalities."""
    levels = {Criticality(c) for c in criticalities}
    return TWO_PERSON if levels & CRITICAL else ONE_PERSON


def _utc(value: datetime, name: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def binding(
    ticket: str,
    device_names: Iterable[str],
    services: Iterable[str],
    window_start: datetime,
    window_end: datetime,
    recurrence_json: Mapping[str, Any] | None,
    *,
    vendor_login: str = "",
) -> str:
    """SHA-256 (hex) of the canonical JSON of what an approval approves.

    Lists are sorted and de-duplicated, times are UTC ISO 8601 with microseconds, and the
    recurrence is normalized through ``Weekly``, so equal content always hashes equally
    whatever order or zone it was given in.
    """
    recurrence = Weekly.parse(recurrence_json).to_json() if recurrence_json is not None else None
    content = {
        "version": BINDING_VERSION,
        "ticket": ticket,
        "vendor": vendor_login,
        "devices": sorted(set(device_names)),
        "services": sorted(set(services)),
        "start": _utc(window_start, "window_start"),
        "end": _utc(window_end, "window_end"),
        "recurrence": recurrence,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _login(label: str) -> str:
    """``staff:alice`` -> ``alice`` (a bare login stays as it is), compared case-blind."""
    return label.partition(":")[2].casefold() if ":" in label else label.casefold()


def is_own_request(approver: str, filed_by: str, vendor_login: str) -> bool:
    """Did ``approver`` file the request, or is it for their own vendor account?

    The same login on both sides counts as the same person, whatever kind of account each
    is: a wrong refusal costs a second approver, a wrong approval costs the rule.
    """
    return _login(approver) in (_login(filed_by), vendor_login.casefold())


def _valid(approvals: Iterable[ApprovalLike], current: str) -> list[ApprovalLike]:
    return [a for a in approvals if a.decision == APPROVE and a.binding == current]


def check_approver(
    *,
    approver: str,
    approver_roles: Iterable[str],
    role: str,
    filed_by: str,
    vendor_login: str,
    required: frozenset[str],
    approvals: Sequence[ApprovalLike],
    current: str,
) -> None:
    """Raise Forbidden unless ``approver`` may approve as ``role`` now.

    ``approvals`` are the request's approvals so far and ``current`` the binding of its
    content now; approvals of other content are ignored.
    """
    if is_own_request(approver, filed_by, vendor_login):
        raise Forbidden("self-approval", "nobody approves a request they filed or are named in")
    if role not in APPROVER_ROLES:
        raise Forbidden("role-invalid", "approvals are given as biomed or as security")
    if role not in set(approver_roles):
        raise Forbidden("role-missing", f"you do not hold the {role} role")
    if role not in required:
        needed = " and ".join(sorted(required))
        raise Forbidden("role-not-required", f"this request needs approval as {needed} only")
    valid = _valid(approvals, current)
    if any(a.approver == approver for a in valid):
        raise Forbidden(
            "already-approved",
            "you already approved this request; a second approval must come from someone else",
        )
    if any(a.role == role for a in valid):
        raise Forbidden("role-satisfied", f"the {role} approval has already been given")


def _best_cover(
    roles: tuple[str, ...], votes: Mapping[str, frozenset[str]], used: frozenset[str]
) -> frozenset[str]:
    """The largest set of ``roles`` that distinct approvers (not in ``used``) can cover;
    of equally large sets, the one covering the roles earliest in ``roles``."""
    if not roles:
        return frozenset()
    first, rest = roles[0], roles[1:]
    best: frozenset[str] = frozenset()
    for person in sorted(votes.get(first, frozenset()) - used):
        covered = _best_cover(rest, votes, used | {person}) | {first}
        if len(covered) > len(best):
            best = covered
    without = _best_cover(rest, votes, used)  # leaving ``first`` open wins only if larger
    return without if len(without) > len(best) else best


def missing_roles(
    required: frozenset[str], approvals: Iterable[ApprovalLike], current: str
) -> frozenset[str]:
    """The required roles still without an approval of the current content, each role by a
    different person."""
    votes: dict[str, set[str]] = {}
    for a in _valid(approvals, current):
        if a.role in required:
            votes.setdefault(a.role, set()).add(a.approver)
    frozen = {role: frozenset(people) for role, people in votes.items()}
    return required - _best_cover(tuple(sorted(required)), frozen, frozenset())


def satisfied(required: frozenset[str], approvals: Iterable[ApprovalLike], current: str) -> bool:
    """Is every required role approved, for the current content, by distinct people?"""
    return not missing_roles(required, approvals, current)
