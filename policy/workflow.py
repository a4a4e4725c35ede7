"""Access requests from filing to grant: file, edit, cancel, approve, deny, revoke.

Each action checks everything before it writes. A refusal rolls the session back, is
recorded as an audit event (``policy:request:refused`` / ``policy:grant:refused`` with
the code) and raised as a ``PolicyError`` whose code is stable and whose message tells
the person what to change; the database is left as it was. A success commits, then
records ``policy:request:filed|edited|cancelled|approved|denied`` and
``policy:grant:created|revoked``.

Actions on an existing request begin by locking its row (a no-op UPDATE: a row lock on
PostgreSQL, the write lock on SQLite) and reading it afresh, so two approvers clicking at
once are serialized: the second sees the first approval, and exactly one grant results.

The read helpers at the end give the portal what a decision needs on one page: each
device's criticality, place, maintenance windows and whether the request fits them, and
the vendor user's recent sessions on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin
from policy.actor import (
    Actor,
    AuditSink,
    record_refusal,
    refusals_recorded,
    require_active_vendor,
    require_staff,
)
from policy.approval import (
    APPROVE,
    APPROVER_ROLES,
    DENY,
    binding,
    check_approver,
    missing_roles,
    required_roles,
)
from policy.config import Settings
from policy.errors import Conflict, Forbidden, InvalidInput, NotFound, PolicyError
from policy.models import (
    AccessRequest,
    Approval,
    Device,
    Grant,
    RequestStatus,
    Vendor,
    VendorUser,
    vendor_device,
)
from policy.windows import Weekly, intervals, uncovered

REQUEST_REFUSED = "policy:request:refused"
GRANT_REFUSED = "policy:grant:refused"
START_GRACE = timedelta(minutes=5)  # a window may start this far in the past (clock skew)
STAFF_ROLES = admin.STAFF_ROLES
REVOKER_ROLES = STAFF_ROLES  # biomed, security and admin may all cut access
DEFAULT_TICKET_PATTERN: str = Settings.workflow_ticket_pattern
TICKET_MAX = 64


@dataclass
class RequestInput:
    ticket_ref: str
    devices: list[str]
    services: list[str]
    window_start: datetime
    window_end: datetime
    recurrence: dict[str, Any] | None
    reason: str
    # staff and integrations filing on behalf of a vendor user name them; a vendor files
    # for themself (and may leave this empty or give their own login)
    vendor_login: str | None = None


@dataclass(frozen=True)
class ApprovalOutcome:
    request: AccessRequest
    grant: Grant | None
    missing_roles: frozenset[str]


@dataclass(frozen=True)
class _Content:
    """Request content that passed every check."""

    user: VendorUser
    ticket: str
    devices: list[Device]
    services: list[str]
    start: datetime
    end: datetime
    recurrence: Weekly | None
    reason: str


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _names(items: Iterable[str]) -> list[str]:
    """Stripped, blanks dropped, duplicates dropped, first order kept."""
    return list(dict.fromkeys(s.strip() for s in items if s.strip()))


# --- checks -----------------------------------------------------------------------------


def check_ticket(ticket: str, pattern: str) -> str:
    ticket = ticket.strip()
    if len(ticket) > TICKET_MAX or not re.fullmatch(pattern, ticket):
        raise InvalidInput(
            "ticket-invalid",
            f"ticket reference {ticket!r} does not have the expected format {pattern}",
        )
    return ticket


def check_window(
    start: datetime, end: datetime, recurrence: dict[str, Any] | None, now: datetime
) -> Weekly | None:
    """The parsed recurrence, once the window and recurrence make a usable request."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("window-invalid", "window times need a time zone (e.g. ...Z)")
    if end <= start:
        raise InvalidInput("window-invalid", "the window must end after it starts")
    if start < now - START_GRACE:
        raise InvalidInput(
            "window-past",
            f"the window starts {iso(start)}, in the past; it may start at {iso(now)} at the"
            " earliest",
        )
    weekly = Weekly.parse(recurrence) if recurrence is not None else None
    if weekly is not None and not intervals(start, end, weekly):
        raise InvalidInput(
            "recurrence-empty",
            f"{weekly.describe()} never falls between {iso(start)} and {iso(end)}",
        )
    return weekly


async def _vendor_user_for(db: AsyncSession, actor: Actor, login: str | None) -> VendorUser:
    """The vendor user a new request is for: the actor itself, or the one staff names."""
    if actor.is_vendor:
        user = await require_active_vendor(db, actor)
        if login and login != user.login:
            raise Forbidden("vendor-other", "a vendor user files requests for their own account")
        return user
    await require_staff(db, actor, STAFF_ROLES, "filing a request")
    if not login:
        raise InvalidInput("vendor-login-missing", "name the vendor user the request is for")
    named = await db.scalar(select(VendorUser).where(VendorUser.login == login))
    if named is None:
        raise NotFound("login-unknown", f"vendor user {login!r} does not exist")
    if named.disabled:
        raise Conflict("vendor-disabled", f"vendor user {login!r} is disabled")
    return named


async def serviced_device_ids(db: AsyncSession, vendor_id: int) -> set[int]:
    rows = await db.scalars(
        select(vendor_device.c.device_id).where(vendor_device.c.vendor_id == vendor_id)
    )
    return set(rows)


async def _check_devices(
    db: AsyncSession, user: VendorUser, names: Sequence[str], *, vendor_view: bool
) -> list[Device]:
    """The named devices, each serviced by the user's organization.

    A vendor is not told which names exist elsewhere in the inventory: to them an unknown
    device and another organization's device read the same.
    """
    wanted = _names(names)
    if not wanted:
        raise InvalidInput("devices-missing", "name at least one device")
    found = list(
        await db.scalars(
            select(Device)
            .where(Device.name.in_(wanted))
            .options(selectinload(Device.services), selectinload(Device.segment))
        )
    )
    by_name = {d.name: d for d in found}
    unknown = [n for n in wanted if n not in by_name]
    if unknown and not vendor_view:
        raise NotFound("device-unknown", f"unknown device(s): {', '.join(unknown)}")
    serviced = await serviced_device_ids(db, user.vendor_id)
    outside = unknown + [n for n in wanted if n in by_name and by_name[n].id not in serviced]
    if outside:
        org = await db.get(Vendor, user.vendor_id)
        raise Forbidden(
            "device-not-serviced",
            f"{', '.join(outside)}: not a device {org.name if org else 'the vendor'} services",
        )
    return [by_name[n] for n in wanted]


def check_services(devices: Sequence[Device], services: Iterable[str]) -> list[str]:
    wanted = sorted(set(_names(services)))
    if not wanted:
        raise InvalidInput("services-missing", "name at least one service (ssh, https, ...)")
    for device in devices:
        offered = {s.name for s in device.services}
        lacking = [s for s in wanted if s not in offered]
        if lacking:
            has = ", ".join(sorted(offered)) or "no services"
            raise InvalidInput(
                "service-unknown",
                f"device {device.name} has no service {', '.join(lacking)} (it offers {has})",
            )
    return wanted


async def _check_content(
    db: AsyncSession,
    actor: Actor,
    user: VendorUser,
    data: RequestInput,
    pattern: str,
    now: datetime,
) -> _Content:
    ticket = check_ticket(data.ticket_ref, pattern)
    devices = await _check_devices(db, user, data.devices, vendor_view=actor.is_vendor)
    services = check_services(devices, data.services)
    weekly = check_window(data.window_start, data.window_end, data.recurrence, now)
    reason = data.reason.strip()
    if not reason:
        raise InvalidInput("reason-missing", "say what the work is for")
    start, end = data.window_start.astimezone(UTC), data.window_end.astimezone(UTC)
    return _Content(user, ticket, devices, services, start, end, weekly, reason)


def _content_detail(req: AccessRequest, vendor_login: str) -> dict[str, Any]:
    """The request's content for an audit event."""
    return {
        "ticket": req.ticket_ref,
        "vendor_user": vendor_login,
        "devices": sorted(d.name for d in req.devices),
        "services": list(req.services),
        "window_start": iso(req.window_start),
        "window_end": iso(req.window_end),
        "recurrence": Weekly.parse(req.recurrence).describe() if req.recurrence else None,
        "revision": req.revision,
    }


def _apply(req: AccessRequest, content: _Content) -> None:
    req.ticket_ref = content.ticket
    req.devices = list(content.devices)
    req.services = content.services
    req.window_start, req.window_end = content.start, content.end
    req.recurrence = content.recurrence.to_json() if content.recurrence else None
    req.reason = content.reason


def current_binding(req: AccessRequest, vendor_login: str) -> str:
    return binding(
        req.ticket_ref,
        [d.name for d in req.devices],
        req.services,
        req.window_start,
        req.window_end,
        req.recurrence,
        vendor_login=vendor_login,
    )


# --- filing, editing, cancelling -----------------------------------------------------------


async def file_request(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    data: RequestInput,
    *,
    ticket_pattern: str,
    now: datetime,
) -> AccessRequest:
    """File a new pending request (returned with ``devices`` and ``approvals`` loaded)."""
    async with refusals_recorded(
        db, audit, actor, REQUEST_REFUSED, action="file", ticket=data.ticket_ref[:80]
    ):
        user = await _vendor_user_for(db, actor, data.vendor_login)
        content = await _check_content(db, actor, user, data, ticket_pattern, now)
    req = AccessRequest(
        vendor_user_id=user.id,
        status=RequestStatus.PENDING,
        filed_by=actor.label,
        revision=1,
        approvals=[],
        created_at=now,
        updated_at=now,
    )
    _apply(req, content)
    db.add(req)
    await db.commit()
    await audit.record(
        "policy:request:filed",
        actor=actor.label,
        request_id=req.id,
        via=actor.via,
        reason=req.reason,
        **_content_detail(req, user.login),
    )
    return req


async def lock_request(db: AsyncSession, request_id: int) -> AccessRequest:
    """Lock the request row for this transaction, then read it (devices, approvals) afresh."""
    await db.execute(
        update(AccessRequest)
        .where(AccessRequest.id == request_id)
        .values(revision=AccessRequest.revision)
        .execution_options(synchronize_session=False)
    )
    req = await db.scalar(
        select(AccessRequest)
        .where(AccessRequest.id == request_id)
        .options(
            selectinload(AccessRequest.devices).selectinload(Device.services),
            selectinload(AccessRequest.devices).selectinload(Device.segment),
            selectinload(AccessRequest.approvals),
        )
        .execution_options(populate_existing=True)
    )
    if req is None:
        raise NotFound("request-unknown", f"request {request_id} does not exist")
    return req


def check_revision(req: AccessRequest, seen: int | None) -> None:
    """Refuse a decision or edit of a pending request made on a revision other than the
    one the person saw (``seen``; None: not stated). A decided request is left for the
    action itself to refuse as such."""
    if seen is not None and req.status is RequestStatus.PENDING and seen != req.revision:
        raise Conflict(
            "request-changed",
            f"request {req.id} changed since you opened it (revision {seen}, now"
            f" {req.revision}); review it again before deciding",
        )


def _require_pending(req: AccessRequest) -> None:
    if req.status is not RequestStatus.PENDING:
        raise Conflict(
            "request-not-pending", f"request {req.id} is already {req.status}; nothing to change"
        )


async def _require_owner(db: AsyncSession, actor: Actor, req: AccessRequest) -> None:
    """Only the person who filed a request, or its vendor user, may change or cancel it."""
    if actor.is_vendor:
        await require_active_vendor(db, actor)
        if actor.id == req.vendor_user_id:
            return
    else:
        await require_staff(db, actor, STAFF_ROLES, "changing a request")
        if actor.label == req.filed_by:
            return
    raise Forbidden(
        "not-yours", f"request {req.id} can be changed only by who filed it or its vendor user"
    )


async def _vendor_user(db: AsyncSession, req: AccessRequest) -> VendorUser:
    user = await db.get(VendorUser, req.vendor_user_id)
    assert user is not None  # a foreign key
    return user


async def edit_request(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    request_id: int,
    data: RequestInput,
    *,
    now: datetime,
    ticket_pattern: str = DEFAULT_TICKET_PATTERN,
) -> AccessRequest:
    """Change a pending request: a new revision, and every approval so far is deleted."""
    async with refusals_recorded(
        db, audit, actor, REQUEST_REFUSED, action="edit", request_id=request_id
    ):
        req = await lock_request(db, request_id)
        await _require_owner(db, actor, req)
        _require_pending(req)
        user = await _vendor_user(db, req)
        if data.vendor_login and data.vendor_login != user.login:
            raise InvalidInput(
                "vendor-change", "a request stays with its vendor user; cancel it and file anew"
            )
        content = await _check_content(db, actor, user, data, ticket_pattern, now)
    before = {**_content_detail(req, user.login), "reason": req.reason}
    cleared = len(req.approvals)
    req.approvals.clear()
    _apply(req, content)
    req.revision += 1
    req.override_reason = None
    req.updated_at = now
    await db.commit()
    after = {**_content_detail(req, user.login), "reason": req.reason}
    await audit.record(
        "policy:request:edited",
        actor=actor.label,
        request_id=req.id,
        approvals_cleared=cleared,
        changed=sorted(k for k in after if after[k] != before[k] and k != "revision"),
        **after,
    )
    return req


async def cancel_request(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    request_id: int,
    *,
    reason: str = "",
    now: datetime,
) -> AccessRequest:
    """Withdraw a pending request (by who filed it or its vendor user)."""
    async with refusals_recorded(
        db, audit, actor, REQUEST_REFUSED, action="cancel", request_id=request_id
    ):
        req = await lock_request(db, request_id)
        await _require_owner(db, actor, req)
        _require_pending(req)
    req.status = RequestStatus.CANCELLED
    req.decision_reason = reason.strip()
    req.updated_at = now
    await db.commit()
    await audit.record(
        "policy:request:cancelled",
        actor=actor.label,
        request_id=req.id,
        ticket=req.ticket_ref,
        reason=req.decision_reason,
    )
    return req


# --- approving and denying ------------------------------------------------------------------


@dataclass(frozen=True)
class _ApprovalPlan:
    start: datetime
    end: datetime
    services: list[str]
    narrowed: bool
    binding: str
    required: frozenset[str]
    override: str | None  # the override reason to store, when one was needed and given
    gap: str | None  # the maintenance-window gap that the override covers


def _narrow(
    req: AccessRequest,
    start: datetime | None,
    end: datetime | None,
    services: Sequence[str] | None,
    now: datetime,
) -> tuple[datetime, datetime, list[str]]:
    """The approved window and services: the request's, or a part of them."""
    for value in (start, end):
        if value is not None and value.tzinfo is None:
            raise InvalidInput("window-invalid", "window times need a time zone (e.g. ...Z)")
    new_start = (start or req.window_start).astimezone(UTC)
    new_end = (end or req.window_end).astimezone(UTC)
    if new_start < req.window_start or new_end > req.window_end:
        raise InvalidInput(
            "narrow-only",
            f"an approval may only shorten the window ({iso(req.window_start)} to"
            f" {iso(req.window_end)}), never extend it",
        )
    if new_end <= new_start:
        raise InvalidInput("window-invalid", "the window must end after it starts")
    if new_end <= now:
        raise InvalidInput("window-over", f"the window ended at {iso(new_end)}; nothing to grant")
    new_services = sorted(set(_names(services))) if services is not None else list(req.services)
    if not new_services:
        raise InvalidInput("services-missing", "an approval keeps at least one service")
    extra = sorted(set(new_services) - set(req.services))
    if extra:
        raise InvalidInput(
            "narrow-only",
            f"an approval may only narrow the services; {', '.join(extra)} was not requested",
        )
    return new_start, new_end, new_services


@dataclass(frozen=True)
class Coverage:
    """Whether the request's intervals lie inside a device's maintenance windows; if not,
    the first stretch outside them."""

    covered: bool
    gap: tuple[datetime, datetime] | None
    message: str


def _first_gap(
    span: tuple[datetime, datetime], allowed: Sequence[Weekly]
) -> tuple[datetime, datetime]:
    """The first part of ``span`` outside every allowed window (``span`` has one)."""
    begin, finish = span
    reached = begin
    for start, end in sorted(o for w in allowed for o in w.occurrences(begin, finish)):
        if start > reached:
            return reached, min(start, finish)
        reached = max(reached, end)
    return reached, finish


def coverage(device: Device, spans: Sequence[tuple[datetime, datetime]]) -> Coverage:
    allowed = [Weekly.parse(w) for w in device.maintenance_windows or []]
    if not allowed:
        return Coverage(True, None, f"{device.name} has no maintenance windows: any time")
    windows = "; ".join(w.describe() for w in allowed)
    outside = uncovered(spans, allowed)
    if outside is None:
        return Coverage(True, None, f"inside {device.name}'s maintenance windows ({windows})")
    gap = _first_gap(outside, allowed)
    zone = allowed[0].zone
    a, b = gap[0].astimezone(zone), gap[1].astimezone(zone)
    local = f"{a:%a %H:%M}-{b:%H:%M}" if a.date() == b.date() else f"{a:%a %H:%M}-{b:%a %H:%M}"
    local += f" {zone.key}"
    return Coverage(
        False,
        gap,
        f"device {device.name} allows vendor work only {windows}; {iso(gap[0])} to"
        f" {iso(gap[1])} ({local}) is outside it",
    )


def _maintenance_gap(
    devices: Sequence[Device], spans: Sequence[tuple[datetime, datetime]]
) -> str | None:
    """For the first device whose maintenance windows do not cover ``spans``: why not."""
    for device in sorted(devices, key=lambda d: d.name):
        result = coverage(device, spans)
        if not result.covered:
            return result.message
    return None


def _plan_approval(
    req: AccessRequest,
    vendor_login: str,
    actor: Actor,
    roles: frozenset[str],
    role: str,
    window: tuple[datetime, datetime, list[str]],
    override_reason: str | None,
) -> _ApprovalPlan:
    start, end, services = window
    narrowed = (start, end, services) != (req.window_start, req.window_end, sorted(req.services))
    weekly = Weekly.parse(req.recurrence) if req.recurrence else None
    spans = intervals(start, end, weekly)
    if weekly is not None and not spans:
        raise InvalidInput(
            "recurrence-empty",
            f"{weekly.describe()} never falls between {iso(start)} and {iso(end)}",
        )
    names = [d.name for d in req.devices]
    current = binding(
        req.ticket_ref, names, services, start, end, req.recurrence, vendor_login=vendor_login
    )
    required = required_roles(d.criticality for d in req.devices)
    check_approver(
        approver=actor.label,
        approver_roles=roles,
        role=role,
        filed_by=req.filed_by,
        vendor_login=vendor_login,
        required=required,
        approvals=[] if narrowed else req.approvals,
        current=current,
    )
    gap = _maintenance_gap(req.devices, spans)
    given = (override_reason or "").strip()
    # an override given by an earlier approver of this same content stands: the later
    # approver sees it on the request, and approving is agreeing to it
    standing = None if narrowed else req.override_reason
    if gap is not None and not (given or standing):
        raise InvalidInput(
            "outside-maintenance-window",
            f"{gap}. Shorten the window, or approve with an override reason.",
        )
    override = (given or None) if gap is not None else None
    return _ApprovalPlan(start, end, services, narrowed, current, required, override, gap)


async def _recheck_devices(db: AsyncSession, req: AccessRequest, services: list[str]) -> None:
    """The inventory may have changed since filing: the vendor's organization must still
    service every device, and every device must still offer the services."""
    user = await _vendor_user(db, req)
    serviced = await serviced_device_ids(db, user.vendor_id)
    gone = sorted(d.name for d in req.devices if d.id not in serviced)
    if gone:
        raise Forbidden(
            "device-not-serviced",
            f"the vendor's organization no longer services {', '.join(gone)}",
        )
    check_services(req.devices, services)


def approved_by(approvals: Iterable[Approval], current: str) -> str:
    """``biomed:alice,security:bob``: who approved the content that became a grant."""
    valid = sorted(
        (a for a in approvals if a.decision == APPROVE and a.binding == current),
        key=lambda a: a.role,
    )
    return ",".join(f"{a.role}:{a.approver.partition(':')[2] or a.approver}" for a in valid)


async def approve(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    request_id: int,
    *,
    role: str,
    comment: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    services: Sequence[str] | None = None,
    override_reason: str | None = None,
    observer_required: bool = False,
    now: datetime,
) -> ApprovalOutcome:
    """Approve a pending request as ``role``, perhaps shortening its window or dropping
    services (which makes a new revision the other approvals must see again). The last
    approval the rules need creates the grant; it requires a staff observer
    (``policy.moderation``) when any approval of its content asked for one."""
    async with refusals_recorded(
        db, audit, actor, REQUEST_REFUSED, action="approve", request_id=request_id, role=role
    ):
        roles = await require_staff(db, actor, APPROVER_ROLES, "approving a request")
        req = await lock_request(db, request_id)
        _require_pending(req)
        vendor_login = (await _vendor_user(db, req)).login
        window = _narrow(req, start, end, services, now)
        plan = _plan_approval(req, vendor_login, actor, roles, role, window, override_reason)
        await _recheck_devices(db, req, plan.services)
    before = _content_detail(req, vendor_login)
    cleared = 0
    if plan.narrowed:
        cleared = len(req.approvals)
        req.approvals.clear()
        req.window_start, req.window_end, req.services = plan.start, plan.end, plan.services
        req.revision += 1
        req.override_reason = None
    if plan.override is not None:
        req.override_reason = plan.override
    req.approvals.append(
        Approval(
            approver=actor.label,
            staff_user_id=None if actor.via == "cli" else actor.id,
            role=role,
            decision=APPROVE,
            binding=plan.binding,
            comment=comment.strip(),
            observer_required=observer_required,
            decided_at=now,
        )
    )
    missing = missing_roles(plan.required, req.approvals, plan.binding)
    grant = None
    if not missing:
        grant = Grant(
            request_id=req.id,
            vendor_user_id=req.vendor_user_id,
            ticket_ref=req.ticket_ref,
            services=list(plan.services),
            window_start=plan.start,
            window_end=plan.end,
            recurrence=req.recurrence,
            approved_by=approved_by(req.approvals, plan.binding),
            observer_required=any(
                a.observer_required
                for a in req.approvals
                if a.decision == APPROVE and a.binding == plan.binding
            ),
            devices=list(req.devices),
            created_at=now,
        )
        db.add(grant)
        req.status = RequestStatus.APPROVED
        req.decision_reason = comment.strip()
    req.updated_at = now
    await db.commit()
    await _record_approval(audit, actor, req, vendor_login, plan, before, cleared, missing, grant)
    return ApprovalOutcome(req, grant, missing)


async def _record_approval(
    audit: AuditSink,
    actor: Actor,
    req: AccessRequest,
    vendor_login: str,
    plan: _ApprovalPlan,
    before: dict[str, Any],
    cleared: int,
    missing: frozenset[str],
    grant: Grant | None,
) -> None:
    content = _content_detail(req, vendor_login)
    if plan.narrowed:
        await audit.record(
            "policy:request:edited",
            actor=actor.label,
            request_id=req.id,
            by_approval=True,
            approvals_cleared=cleared,
            changed=sorted(k for k in content if content[k] != before[k] and k != "revision"),
            **content,
        )
    approval = req.approvals[-1]
    await audit.record(
        "policy:request:approved",
        actor=actor.label,
        request_id=req.id,
        role=approval.role,
        comment=approval.comment,
        observer_required=approval.observer_required,
        binding=plan.binding,
        revision=req.revision,
        missing_roles=sorted(missing),
        override_reason=plan.override,
        maintenance_gap=plan.gap,
    )
    if grant is not None:
        await audit.record(
            "policy:grant:created",
            actor=actor.label,
            request_id=req.id,
            grant_id=grant.id,
            approved_by=grant.approved_by,
            observer_required=grant.observer_required,
            **{k: v for k, v in content.items() if k != "revision"},
        )


async def deny(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    request_id: int,
    reason: str,
    *,
    now: datetime,
    role: str | None = None,
) -> AccessRequest:
    """Turn a pending request down, saying why (the vendor reads the reason)."""
    async with refusals_recorded(
        db, audit, actor, REQUEST_REFUSED, action="deny", request_id=request_id
    ):
        roles = await require_staff(db, actor, APPROVER_ROLES, "denying a request")
        as_role = role or sorted(roles & APPROVER_ROLES)[0]
        if as_role not in roles & APPROVER_ROLES:
            raise Forbidden("role-missing", f"you do not hold the {as_role} role")
        if not reason.strip():
            raise InvalidInput("reason-missing", "say why the request is denied")
        req = await lock_request(db, request_id)
        _require_pending(req)
        vendor_login = (await _vendor_user(db, req)).login
    req.approvals.append(
        Approval(
            approver=actor.label,
            staff_user_id=None if actor.via == "cli" else actor.id,
            role=as_role,
            decision=DENY,
            binding=current_binding(req, vendor_login),
            comment=reason.strip(),
            decided_at=now,
        )
    )
    req.status = RequestStatus.DENIED
    req.decision_reason = reason.strip()
    req.updated_at = now
    await db.commit()
    await audit.record(
        "policy:request:denied",
        actor=actor.label,
        request_id=req.id,
        role=as_role,
        ticket=req.ticket_ref,
        reason=req.decision_reason,
    )
    return req


async def revoke_grant(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    grant_id: int,
    reason: str,
    *,
    now: datetime,
) -> Grant:
    """Revoke a grant at once; the gateways end its live sessions within a second."""
    try:
        await require_staff(db, actor, REVOKER_ROLES, "revoking a grant")
        if not reason.strip():
            raise InvalidInput("reason-missing", "say why the grant is revoked")
        grant = await admin.revoke_grant(db, grant_id, actor.label, reason.strip(), now)
    except PolicyError as exc:
        # admin reports a second revocation as bad input; to the workflow it is a state
        refusal = Conflict(exc.code, exc.message) if exc.code == "grant-revoked" else exc
        await record_refusal(
            db, audit, actor, GRANT_REFUSED, refusal, action="revoke", grant_id=grant_id
        )
        if refusal is exc:
            raise
        raise refusal from None
    await audit.record(
        "policy:grant:revoked",
        actor=actor.label,
        request_id=grant.request_id,
        grant_id=grant.id,
        ticket=grant.ticket_ref,
        reason=grant.revoke_reason,
        requested_at=iso(now),
    )
    return grant
