"""Reading access requests and grants for the portal and the API: lists, one request with
everything a decision needs (each device's criticality, place, maintenance windows and
whether the request fits them, the vendor user's recent sessions), and the devices a
vendor user may ask for. The writes are in ``policy.workflow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy.actor import Actor
from policy.approval import APPROVE, missing_roles, required_roles
from policy.errors import NotFound
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
from policy.models import Session as SessionRow
from policy.windows import Weekly, intervals
from policy.workflow import Coverage, coverage, current_binding


@dataclass(frozen=True)
class RequestSummary:
    """A request in a list, with who it is for and which approvals it still needs."""

    request: AccessRequest  # devices and approvals loaded
    vendor_login: str
    vendor_name: str
    required_roles: frozenset[str]
    missing_roles: frozenset[str]


@dataclass(frozen=True)
class PastSession:
    id: str
    kind: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None


@dataclass(frozen=True)
class DeviceContext:
    name: str
    criticality: str
    location: str
    segment: str
    manufacturer: str
    model: str
    firmware: str
    asset_tag: str
    services: list[str]  # "ssh:22"
    maintenance: list[str]  # described: "Mon-Fri 06:00-18:00 America/Chicago"
    coverage: Coverage
    past_sessions: list[PastSession]  # the vendor user's last ones on this device


@dataclass(frozen=True)
class RequestDetail:
    request: AccessRequest
    vendor_login: str
    vendor_name: str
    devices: list[DeviceContext]
    schedule: str  # "once" or the weekly window described
    required_roles: frozenset[str]
    approvals: list[Approval]  # the valid approvals of the current content
    missing_roles: frozenset[str]
    binding: str
    grants: list[Grant]  # made from this request


PAST_SESSIONS = 10


def _request_query() -> Any:
    return select(AccessRequest).options(
        selectinload(AccessRequest.devices), selectinload(AccessRequest.approvals)
    )


async def _summaries(db: AsyncSession, requests: Sequence[AccessRequest]) -> list[RequestSummary]:
    ids = {r.vendor_user_id for r in requests}
    rows = await db.execute(
        select(VendorUser.id, VendorUser.login, Vendor.name)
        .join(Vendor, Vendor.id == VendorUser.vendor_id)
        .where(VendorUser.id.in_(ids))
    )
    who = {uid: (login, org) for uid, login, org in rows}
    out = []
    for req in requests:
        login, org = who[req.vendor_user_id]
        required = required_roles(d.criticality for d in req.devices)
        current = current_binding(req, login)
        missing = missing_roles(required, req.approvals, current)
        out.append(RequestSummary(req, login, org, required, missing))
    return out


async def list_requests(
    db: AsyncSession,
    *,
    status: RequestStatus | None = None,
    vendor_user_id: int | None = None,
    request_id: int | None = None,
    limit: int = 200,
) -> list[RequestSummary]:
    """Requests, newest first, optionally of one status, one vendor user, or one id."""
    query = _request_query().order_by(AccessRequest.created_at.desc(), AccessRequest.id.desc())
    if request_id is not None:
        query = query.where(AccessRequest.id == request_id)
    if status is not None:
        query = query.where(AccessRequest.status == status)
    if vendor_user_id is not None:
        query = query.where(AccessRequest.vendor_user_id == vendor_user_id)
    return await _summaries(db, list(await db.scalars(query.limit(limit))))


async def pending_requests(db: AsyncSession) -> list[RequestSummary]:
    """Pending requests, the soonest window first."""
    found = await db.scalars(
        _request_query()
        .where(AccessRequest.status == RequestStatus.PENDING)
        .order_by(AccessRequest.window_start, AccessRequest.id)
    )
    return await _summaries(db, list(found))


async def requests_for_vendor_user(db: AsyncSession, vendor_user_id: int) -> list[RequestSummary]:
    """Every request for one vendor user, newest first."""
    found = await db.scalars(
        _request_query()
        .where(AccessRequest.vendor_user_id == vendor_user_id)
        .order_by(AccessRequest.created_at.desc(), AccessRequest.id.desc())
    )
    return await _summaries(db, list(found))


async def _past_sessions(
    db: AsyncSession, vendor_user_id: int, device_id: int
) -> list[PastSession]:
    rows = await db.scalars(
        select(SessionRow)
        .where(SessionRow.vendor_user_id == vendor_user_id, SessionRow.device_id == device_id)
        .order_by(SessionRow.started_at.desc())
        .limit(PAST_SESSIONS)
    )
    return [PastSession(s.id, s.kind, s.started_at, s.ended_at, s.end_reason) for s in rows]


async def _device_context(
    db: AsyncSession,
    device: Device,
    vendor_user_id: int,
    spans: Sequence[tuple[datetime, datetime]],
) -> DeviceContext:
    return DeviceContext(
        name=device.name,
        criticality=str(device.criticality),
        location=device.location,
        segment=device.segment.name,
        manufacturer=device.manufacturer,
        model=device.model,
        firmware=device.firmware,
        asset_tag=device.asset_tag,
        services=[f"{s.name}:{s.port}" for s in device.services],
        maintenance=[Weekly.parse(w).describe() for w in device.maintenance_windows or []],
        coverage=coverage(device, spans),
        past_sessions=await _past_sessions(db, vendor_user_id, device.id),
    )


async def request_detail(
    db: AsyncSession, request_id: int, *, viewer: Actor | None = None
) -> RequestDetail:
    """Everything a decision on the request needs. With ``viewer``, a vendor user may see
    only their own requests."""
    req = await db.scalar(
        select(AccessRequest)
        .where(AccessRequest.id == request_id)
        .options(
            selectinload(AccessRequest.devices).selectinload(Device.services),
            selectinload(AccessRequest.devices).selectinload(Device.segment),
            selectinload(AccessRequest.approvals),
        )
    )
    if req is None or (viewer is not None and viewer.is_vendor and viewer.id != req.vendor_user_id):
        raise NotFound("request-unknown", f"request {request_id} does not exist")
    summary = (await _summaries(db, [req]))[0]
    weekly = Weekly.parse(req.recurrence) if req.recurrence else None
    spans = intervals(req.window_start, req.window_end, weekly)
    devices = [
        await _device_context(db, d, req.vendor_user_id, spans)
        for d in sorted(req.devices, key=lambda d: d.name)
    ]
    current = current_binding(req, summary.vendor_login)
    valid = [a for a in req.approvals if a.decision == APPROVE and a.binding == current]
    grants = await db.scalars(
        select(Grant).where(Grant.request_id == req.id).options(selectinload(Grant.devices))
    )
    return RequestDetail(
        request=req,
        vendor_login=summary.vendor_login,
        vendor_name=summary.vendor_name,
        devices=devices,
        schedule=weekly.describe() if weekly else "once",
        required_roles=summary.required_roles,
        approvals=sorted(valid, key=lambda a: a.decided_at),
        missing_roles=summary.missing_roles,
        binding=current,
        grants=list(grants),
    )


def _grant_query(now: datetime) -> Any:
    return (
        select(Grant)
        .where(Grant.revoked_at.is_(None), Grant.window_end > now)
        .options(
            selectinload(Grant.devices),
            selectinload(Grant.user).selectinload(VendorUser.vendor),
        )
        .order_by(Grant.window_start, Grant.id)
    )


async def active_grants(db: AsyncSession, now: datetime) -> list[Grant]:
    """Grants not revoked whose window has not ended (running or still to come)."""
    return list(await db.scalars(_grant_query(now)))


async def grants_for_vendor_user(
    db: AsyncSession, vendor_user_id: int, now: datetime
) -> list[Grant]:
    return list(await db.scalars(_grant_query(now).where(Grant.vendor_user_id == vendor_user_id)))


def like_pattern(text: str) -> str:
    """A LIKE pattern (escape ``\\``) matching ``text`` anywhere, its ``%`` and ``_`` taken
    literally: people search for device names like ``lab_7``."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_devices(query: Select[Device], search: str) -> Select[Device]:
    """``query`` narrowed to the devices whose name, model or location holds ``search``
    (case-blind); a blank search narrows nothing. Vendors and the API search alike."""
    if not search.strip():
        return query
    pattern = like_pattern(search.strip())
    return query.where(
        Device.name.ilike(pattern, escape="\\")
        | Device.model.ilike(pattern, escape="\\")
        | Device.location.ilike(pattern, escape="\\")
    )


async def devices_for_vendor_user(
    db: AsyncSession, vendor_user_id: int, search: str = "", *, limit: int | None = None
) -> list[Device]:
    """The devices the user's organization services (what they may request), by name;
    ``search`` matches name, model or location, case-blind."""
    user = await db.get(VendorUser, vendor_user_id)
    if user is None:
        return []
    query = (
        select(Device)
        .join(vendor_device, vendor_device.c.device_id == Device.id)
        .where(vendor_device.c.vendor_id == user.vendor_id)
        .options(selectinload(Device.services), selectinload(Device.segment))
        .order_by(Device.name)
    )
    query = search_devices(query, search)
    if limit is not None:
        query = query.limit(limit)
    return list(await db.scalars(query))
