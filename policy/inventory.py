"""Inventory edits from the web: devices (with services and maintenance windows),
segments, which devices a vendor organization services, and staff roles.

Biomed owns the device records (criticality, place, maintenance windows) and which
vendor services what; admins create devices and segments and manage staff. As in the
workflow, every change is checked whole before anything is written, a refusal is an
audit event (``policy:SUBJECT:refused``) that leaves the rows as they were, and a
change is recorded with the fields it changed (never a credential's secret).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin
from policy.actor import Actor, AuditSink, refusals_recorded, require_staff
from policy.errors import Conflict, Forbidden, InvalidInput, NotFound
from policy.models import Criticality, Device, DeviceService, Segment, StaffUser, Vendor
from policy.moderation import observer_rule, parse_observer_rule
from policy.sshkeys import parse_public_key
from policy.vault import DEVICE_CREDENTIAL, Vault
from policy.windows import Weekly

ADMIN = frozenset({"admin"})
DEVICE_EDITORS = frozenset({"admin", "biomed"})
# the free-text record fields and their column widths
RECORD_FIELDS = {
    "manufacturer": 200,
    "model": 200,
    "firmware": 100,
    "location": 200,
    "asset_tag": 100,
}
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WINDOW_TEXT = re.compile(
    r"^(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})"
    r"(?:\s+\(24 h\))?\s+(?P<tz>\S+)$"
)

WindowSpec = str | Mapping[str, Any] | Weekly


# --- parsing, shared with the CSV import --------------------------------------------------


def _day(word: str) -> int:
    key = word.strip().lower()
    for number, name in enumerate(_DAYS):
        if key in (name, name[:3]):
            return number
    raise InvalidInput("recurrence-invalid", f"unknown weekday {word!r}; use mon, tue, ... sun")


def _days(text: str) -> list[int]:
    """``mon-fri``, ``sat,sun``, ``fri-mon`` (wrapping), ``daily``."""
    if text.lower() in ("daily", "mon-sun"):
        return list(range(7))
    days: list[int] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not dash:
            days.append(_day(first))
            continue
        a, b = _day(first), _day(last)
        days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
    return days


def parse_window_text(text: str) -> Weekly:
    """A maintenance window as people write it (and ``Weekly.describe`` prints it):
    ``Mon-Fri 06:00-18:00 America/Chicago``, ``sat,sun 22:00-02:00 Europe/Berlin``."""
    m = _WINDOW_TEXT.match(text.strip())
    if not m:
        raise InvalidInput(
            "recurrence-invalid",
            f"{text.strip()!r} is not DAYS HH:MM-HH:MM ZONE (mon-fri 06:00-18:00 America/Chicago)",
        )
    numbers = [str(d) for d in _days(m["days"])]
    return Weekly.from_form(numbers, m["start"], m["end"], m["tz"])


def parse_windows(items: Iterable[WindowSpec]) -> list[dict[str, Any]]:
    """Maintenance windows as stored (``Weekly.to_json``), from text, JSON or ``Weekly``."""
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Weekly):
            weekly = item
        elif isinstance(item, str):
            weekly = parse_window_text(item)
        else:
            weekly = Weekly.parse(item)
        if weekly.to_json() not in out:
            out.append(weekly.to_json())
    return out


def parse_services(items: Iterable[str | admin.ServiceSpec]) -> list[admin.ServiceSpec]:
    specs = [s if isinstance(s, admin.ServiceSpec) else admin.ServiceSpec.parse(s) for s in items]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput("service-duplicate", "each service name may appear once per device")
    return specs


def parse_criticality(text: str | Criticality) -> Criticality:
    try:
        return Criticality(str(text).strip().lower())
    except ValueError:
        allowed = ", ".join(c.value for c in Criticality)
        raise InvalidInput(
            "criticality-invalid", f"criticality {text!r} is not one of {allowed}"
        ) from None


def check_record(values: Mapping[str, str]) -> dict[str, str]:
    """The free-text record fields, stripped, each within its column's width."""
    out = {}
    for key, value in values.items():
        width = RECORD_FIELDS.get(key)
        if width is None:
            raise InvalidInput("field-unknown", f"a device has no field {key!r}")
        value = value.strip()
        if len(value) > width:
            raise InvalidInput("field-too-long", f"{key} is longer than {width} characters")
        out[key] = value
    return out


def check_networks(networks: Iterable[str]) -> list[str]:
    """A segment's networks as normalized CIDRs (host bits must be zero)."""
    cidrs = []
    for cidr in networks:
        if not cidr.strip():
            continue
        try:
            cidrs.append(str(ipaddress.ip_network(cidr.strip(), strict=True)))
        except ValueError as exc:
            raise InvalidInput("network-invalid", f"segment network {cidr!r}: {exc}") from None
    return cidrs


def sync_services(device: Device, specs: Sequence[admin.ServiceSpec]) -> list[str]:
    """Make the device's services exactly ``specs``, updating rows in place (a service
    keeps its row when only its port changes); returns what changed, for the audit."""
    current = {s.name: s for s in device.services}
    wanted = {s.name: s for s in specs}
    changes = [f"-{name}" for name in current if name not in wanted]
    device.services = [s for s in device.services if s.name in wanted]
    for spec in specs:
        row = current.get(spec.name)
        if row is None:
            device.services.append(DeviceService(name=spec.name, port=spec.port))
            changes.append(f"+{spec.name}:{spec.port}")
        elif row.port != spec.port:
            changes.append(f"{spec.name}:{row.port}->{spec.port}")
            row.port = spec.port
    return changes


# --- devices ----------------------------------------------------------------------------


@dataclass
class DeviceInput:
    name: str
    segment: str
    address: str
    criticality: str | Criticality = Criticality.MEDIUM
    services: list[str | admin.ServiceSpec] = field(default_factory=list)  # "ssh:22"
    # sessions need a staff observer: "criticality", "always", "never" (policy.moderation)
    observer: str | bool | None = None
    maintenance: list[WindowSpec] = field(default_factory=list)
    record: dict[str, str] = field(default_factory=dict)  # manufacturer, model, ...
    host_key: str | None = None
    credential: admin.Credential | None = None


@dataclass
class DeviceChanges:
    """What to change on a device; None leaves a field as it is."""

    segment: str | None = None
    address: str | None = None
    criticality: str | Criticality | None = None
    observer: str | None = None  # "criticality", "always" or "never"; None: as it is
    services: list[str | admin.ServiceSpec] | None = None
    maintenance: list[WindowSpec] | None = None
    record: dict[str, str] | None = None
    host_key: str | None = None  # "" removes the pinned key
    credential: admin.Credential | None = None


async def _segment(db: AsyncSession, name: str) -> Segment:
    seg = await db.scalar(select(Segment).where(Segment.name == name.strip()))
    if seg is None:
        raise NotFound("segment-unknown", f"segment {name!r} does not exist")
    return seg


async def load_device(db: AsyncSession, name: str) -> Device:
    device = await db.scalar(
        select(Device)
        .where(Device.name == name)
        .options(selectinload(Device.services), selectinload(Device.segment))
    )
    if device is None:
        raise NotFound("device-unknown", f"device {name!r} does not exist")
    return device


def _seal(device: Device, vault: Vault, credential: admin.Credential) -> None:
    device.credential_username = credential.username
    device.credential_kind = credential.kind
    device.credential_secret = vault.seal_text(credential.secret, DEVICE_CREDENTIAL)


async def create_device(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    vault: Vault,
    data: DeviceInput,
    *,
    now: datetime,
) -> Device:
    """Add a device to the inventory (admin)."""
    async with refusals_recorded(
        db, audit, actor, "policy:device:refused", action="create", device=data.name[:100]
    ):
        await require_staff(db, actor, ADMIN, "adding a device")
        name = admin.check_name("device", data.name.strip())
        if await db.scalar(select(Device.id).where(Device.name == name)) is not None:
            raise Conflict("device-exists", f"device {name!r} already exists")
        device = Device(
            name=name,
            segment=await _segment(db, data.segment),
            address=admin.check_address(data.address),
            criticality=parse_criticality(data.criticality),
            observer_required=parse_observer_rule(data.observer),
            services=[
                DeviceService(name=s.name, port=s.port) for s in parse_services(data.services)
            ],
            maintenance_windows=parse_windows(data.maintenance),
            ssh_host_key=parse_public_key(data.host_key).line if data.host_key else None,
            created_at=now,
            updated_at=now,
            **check_record(data.record),
        )
    if data.credential is not None:
        _seal(device, vault, data.credential)
    db.add(device)
    await db.commit()
    await audit.record(
        "policy:device:created",
        actor=actor.label,
        device=device.name,
        segment=device.segment.name,
        address=device.address,
        criticality=str(device.criticality),
        observer=observer_rule(device.observer_required),
        services=[f"{s.name}:{s.port}" for s in device.services],
        maintenance=[Weekly.parse(w).describe() for w in device.maintenance_windows],
        credential=device.credential_username,
    )
    return device


def _apply_changes(device: Device, changes: DeviceChanges, segment: Segment | None) -> list[str]:
    """Apply checked changes; the names of the fields that really changed."""
    changed: list[str] = []

    def put(field_name: str, value: Any) -> None:
        if getattr(device, field_name) != value:
            setattr(device, field_name, value)
            changed.append(field_name)

    if segment is not None:
        put("segment", segment)
    if changes.address is not None:
        put("address", admin.check_address(changes.address))
    if changes.criticality is not None:
        put("criticality", parse_criticality(changes.criticality))
    if changes.observer is not None:
        put("observer_required", parse_observer_rule(changes.observer))
    if changes.maintenance is not None:
        put("maintenance_windows", parse_windows(changes.maintenance))
    for key, value in check_record(changes.record or {}).items():
        put(key, value)
    if changes.host_key is not None:
        put("ssh_host_key", parse_public_key(changes.host_key).line if changes.host_key else None)
    return changed


async def update_device(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    vault: Vault,
    name: str,
    changes: DeviceChanges,
    *,
    now: datetime,
) -> Device:
    """Change a device record (admin or biomed)."""
    async with refusals_recorded(
        db, audit, actor, "policy:device:refused", action="update", device=name[:100]
    ):
        await require_staff(db, actor, DEVICE_EDITORS, "changing a device")
        device = await load_device(db, name)
        segment = await _segment(db, changes.segment) if changes.segment is not None else None
        specs = parse_services(changes.services) if changes.services is not None else None
        _check_changes(changes)  # every field passes before the first one is set
    changed = _apply_changes(device, changes, segment)
    service_changes = sync_services(device, specs) if specs is not None else []
    if service_changes:
        changed.append("services")
    if changes.credential is not None:
        _seal(device, vault, changes.credential)
        changed.append("credential")
    device.updated_at = now
    await db.commit()
    await audit.record(
        "policy:device:updated",
        actor=actor.label,
        device=device.name,
        changed=changed,
        services=service_changes,
        criticality=str(device.criticality),
        observer=observer_rule(device.observer_required),
        maintenance=[Weekly.parse(w).describe() for w in device.maintenance_windows],
    )
    return device


def _check_changes(changes: DeviceChanges) -> None:
    """Raise the first problem in ``changes`` without touching any device."""
    if changes.address is not None:
        admin.check_address(changes.address)
    if changes.criticality is not None:
        parse_criticality(changes.criticality)
    if changes.observer is not None:
        parse_observer_rule(changes.observer)
    if changes.maintenance is not None:
        parse_windows(changes.maintenance)
    check_record(changes.record or {})
    if changes.host_key:
        parse_public_key(changes.host_key)


# --- segments, vendors, staff -------------------------------------------------------------


async def update_segment(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    name: str,
    *,
    description: str | None = None,
    networks: Sequence[str] | None = None,
) -> Segment:
    """Change a segment's description or networks (admin)."""
    async with refusals_recorded(
        db, audit, actor, "policy:segment:refused", action="update", segment=name[:100]
    ):
        await require_staff(db, actor, ADMIN, "changing a segment")
        segment = await _segment(db, name)
        cidrs = check_networks(networks) if networks is not None else None
    if description is not None:
        segment.description = description.strip()
    if cidrs is not None:
        segment.networks = cidrs
    await db.commit()
    await audit.record(
        "policy:segment:updated",
        actor=actor.label,
        segment=segment.name,
        description=segment.description,
        networks=list(segment.networks),
    )
    return segment


async def set_vendor_devices(
    db: AsyncSession, audit: AuditSink, actor: Actor, vendor: str, devices: Sequence[str]
) -> Vendor:
    """Set the devices an organization services: its users may request only these."""
    wanted = sorted({d.strip() for d in devices if d.strip()})
    async with refusals_recorded(
        db, audit, actor, "policy:vendor:refused", action="set-devices", vendor=vendor[:200]
    ):
        await require_staff(db, actor, DEVICE_EDITORS, "choosing a vendor's devices")
        org = await db.scalar(
            select(Vendor).where(Vendor.name == vendor).options(selectinload(Vendor.devices))
        )
        if org is None:
            raise NotFound("vendor-unknown", f"vendor {vendor!r} does not exist")
        found = list(await db.scalars(select(Device).where(Device.name.in_(wanted))))
        missing = sorted(set(wanted) - {d.name for d in found})
        if missing:
            raise NotFound("device-unknown", f"unknown device(s): {', '.join(missing)}")
    before = {d.name for d in org.devices}
    org.devices = sorted(found, key=lambda d: d.name)
    await db.commit()
    await audit.record(
        "policy:vendor:devices-changed",
        actor=actor.label,
        vendor=org.name,
        added=sorted(set(wanted) - before),
        removed=sorted(before - set(wanted)),
    )
    return org


async def _other_admins(db: AsyncSession, user: StaffUser) -> int:
    """Enabled staff users other than ``user`` who hold the admin role."""
    rows = await db.scalars(
        select(StaffUser).where(StaffUser.id != user.id, StaffUser.disabled.is_(False))
    )
    return sum(1 for other in rows if "admin" in other.roles)


async def _staff(db: AsyncSession, login: str) -> StaffUser:
    user = await db.scalar(select(StaffUser).where(StaffUser.login == login))
    if user is None:
        raise NotFound("login-unknown", f"staff user {login!r} does not exist")
    return user


async def set_staff_roles(
    db: AsyncSession, audit: AuditSink, actor: Actor, login: str, roles: Sequence[str]
) -> StaffUser:
    """Replace a staff user's roles (admin); the last enabled admin keeps the admin role."""
    wanted = sorted(set(roles))
    async with refusals_recorded(
        db, audit, actor, "policy:staff:refused", action="set-roles", login=login[:64]
    ):
        await require_staff(db, actor, ADMIN, "changing staff roles")
        user = await _staff(db, login)
        if not wanted or set(wanted) - admin.STAFF_ROLES:
            allowed = ", ".join(sorted(admin.STAFF_ROLES))
            raise InvalidInput("role-invalid", f"roles must be among {allowed}")
        losing_admin = "admin" in user.roles and "admin" not in wanted
        if losing_admin and not user.disabled and not await _other_admins(db, user):
            raise Conflict("last-admin", "this is the last admin; make someone else admin first")
    before = list(user.roles)
    user.roles = wanted
    await db.commit()
    await audit.record(
        "policy:staff:roles-changed",
        actor=actor.label,
        login=user.login,
        before=before,
        roles=wanted,
    )
    return user


async def set_staff_disabled(
    db: AsyncSession, audit: AuditSink, actor: Actor, login: str, disabled: bool
) -> StaffUser:
    """Disable or re-enable a staff account (admin; not one's own, not the last admin)."""
    async with refusals_recorded(
        db, audit, actor, "policy:staff:refused", action="disable", login=login[:64]
    ):
        await require_staff(db, actor, ADMIN, "disabling staff accounts")
        user = await _staff(db, login)
        if disabled and user.id == actor.id and actor.via != "cli":
            raise Forbidden("self-disable", "you cannot disable your own account")
        if disabled and "admin" in user.roles and not await _other_admins(db, user):
            raise Conflict("last-admin", "this is the last admin; make someone else admin first")
    user.disabled = disabled
    await db.commit()
    tag = "policy:staff:disabled" if disabled else "policy:staff:enabled"
    await audit.record(tag, actor=actor.label, login=user.login)
    return user
