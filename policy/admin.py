"""Inventory and access administration: the writes behind the CLI (and later the web).

Every function validates its input and raises ``InvalidInput``/``NotFound`` with a
reason before it writes anything, so a refused change leaves the database as it was.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import totp
from policy.errors import Conflict, InvalidInput, NotFound
from policy.models import (
    CredentialKind,
    Criticality,
    Device,
    DeviceService,
    Grant,
    Segment,
    Session,
    StaffUser,
    Vendor,
    VendorKey,
    VendorUser,
    utcnow,
)
from policy.passwords import hash_password
from policy.sshkeys import PublicKey, parse_public_key
from policy.store import notify_supervisors
from policy.vault import DEVICE_CREDENTIAL, TOTP_SECRET, Vault
from policy.windows import Weekly, intervals

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TRANSFER_RULES = ("read-write", "download-only", "upload-only", "none")
SERVICE = re.compile(r"^(?P<name>[a-z][a-z0-9-]{0,30}):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ServiceSpec:
        m = SERVICE.match(text.strip())
        if not m or not 0 < int(m["port"]) < 65536:
            raise InvalidInput("service-invalid", f"service {text!r} is not NAME:PORT (ssh:22)")
        return cls(m["name"], int(m["port"]))


@dataclass(frozen=True)
class Credential:
    username: str
    kind: CredentialKind
    secret: str


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name) or _is_address(name):
        raise InvalidInput(
            f"{kind}-name-invalid",
            f"{kind} name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)",
        )
    return name


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_address(address: str) -> str:
    """Devices are reached by the IP address in the inventory, never by a DNS lookup."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise InvalidInput(
            "address-invalid", f"device address {address!r} must be an IP address (no DNS)"
        ) from None


async def add_segment(
    db: AsyncSession, name: str, description: str = "", networks: Sequence[str] = ()
) -> Segment:
    cidrs = []
    for cidr in networks:
        try:
            cidrs.append(str(ipaddress.ip_network(cidr.strip(), strict=True)))
        except ValueError as exc:
            raise InvalidInput("network-invalid", f"segment network {cidr!r}: {exc}") from None
    segment = Segment(name=check_name("segment", name), description=description, networks=cidrs)
    db.add(segment)
    await _commit(db, f"segment {name!r} already exists")
    return segment


async def add_device(
    db: AsyncSession,
    vault: Vault,
    *,
    name: str,
    segment: str,
    address: str,
    services: Sequence[ServiceSpec],
    credential: Credential | None,
    host_key: str | None,
    criticality: Criticality = Criticality.MEDIUM,
    **record: str,
) -> Device:
    check_name("device", name)
    address = check_address(address)
    seg = await db.scalar(select(Segment).where(Segment.name == segment))
    if seg is None:
        raise NotFound("segment-unknown", f"segment {segment!r} does not exist")
    if len({s.name for s in services}) != len(services):
        raise InvalidInput("service-duplicate", "each service name may appear once")
    if host_key is not None:
        host_key = parse_public_key(host_key).line
    device = Device(
        name=name,
        segment=seg,
        address=address,
        criticality=criticality,
        ssh_host_key=host_key,
        services=[DeviceService(name=s.name, port=s.port) for s in services],
        **record,
    )
    if credential is not None:
        device.credential_username = credential.username
        device.credential_kind = credential.kind
        device.credential_secret = vault.seal_text(credential.secret, DEVICE_CREDENTIAL)
    db.add(device)
    await _commit(db, f"device {name!r} already exists")
    return device


async def add_vendor(db: AsyncSession, name: str) -> Vendor:
    vendor = Vendor(name=name.strip())
    if not vendor.name:
        raise InvalidInput("vendor-name-invalid", "vendor organization name is empty")
    db.add(vendor)
    await _commit(db, f"vendor {name!r} already exists")
    return vendor


async def add_vendor_user(
    db: AsyncSession,
    vault: Vault,
    *,
    login: str,
    vendor: str,
    public_keys: Sequence[str] = (),
    password: str | None = None,
    display_name: str = "",
    email: str = "",
) -> tuple[VendorUser, str]:
    """Create a vendor user; returns it and its new TOTP secret (shown once, for enrollment)."""
    check_name("login", login)
    org = await db.scalar(select(Vendor).where(Vendor.name == vendor))
    if org is None:
        raise NotFound("vendor-unknown", f"vendor {vendor!r} does not exist")
    keys = [parse_public_key(k) for k in public_keys]
    if not keys and not password:
        raise InvalidInput("credential-missing", "a vendor user needs an SSH key or a password")
    secret = totp.new_secret()
    user = VendorUser(
        vendor=org,
        login=login,
        display_name=display_name,
        email=email,
        password_hash=hash_password(password) if password else None,
        totp_secret=vault.seal_text(secret, TOTP_SECRET),
        keys=[
            VendorKey(public_key=k.line, fingerprint=k.fingerprint, comment=k.comment) for k in keys
        ],
    )
    db.add(user)
    await _commit(db, f"login {login!r} or one of its keys already exists")
    return user, secret


async def add_grant(
    db: AsyncSession,
    *,
    login: str,
    devices: Sequence[str],
    services: Sequence[str],
    ticket: str,
    start: datetime,
    end: datetime,
    approved_by: str,
    transfers: str = "read-write",
    recurrence: Weekly | None = None,
    observer_required: bool = False,
) -> Grant:
    """An approved grant made by an administrator (the web workflow makes them from requests).
    With ``observer_required`` its sessions are moderated (``policy.moderation``).

    With ``recurrence`` sessions may run only inside its occurrences within [start, end);
    a window that holds none, or too many to check, is refused.
    """
    if not ticket.strip():
        raise InvalidInput("ticket-missing", "a grant needs a ticket reference")
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("window-invalid", "window times need a time zone (e.g. ...Z)")
    if end <= start:
        raise InvalidInput("window-invalid", "the window must end after it starts")
    if not devices or not services:
        raise InvalidInput("grant-empty", "a grant names at least one device and one service")
    if transfers not in TRANSFER_RULES:
        allowed = ", ".join(TRANSFER_RULES)
        raise InvalidInput("transfers-invalid", f"transfers must be one of: {allowed}")
    user = await db.scalar(select(VendorUser).where(VendorUser.login == login))
    if user is None:
        raise NotFound("login-unknown", f"vendor user {login!r} does not exist")
    found = list(
        await db.scalars(
            select(Device).where(Device.name.in_(devices)).options(selectinload(Device.services))
        )
    )
    missing = sorted(set(devices) - {d.name for d in found})
    if missing:
        raise NotFound("device-unknown", f"unknown device(s): {', '.join(missing)}")
    for device in found:
        offered = {s.name for s in device.services}
        lacking = sorted(set(services) - offered)
        if lacking:
            raise InvalidInput(
                "service-unknown", f"device {device.name!r} has no service {', '.join(lacking)}"
            )
    if recurrence is not None and not intervals(start, end, recurrence):
        raise InvalidInput(
            "recurrence-empty",
            f"the window {start.astimezone(UTC):%Y-%m-%d %H:%M} to "
            f"{end.astimezone(UTC):%Y-%m-%d %H:%M} UTC holds no "
            f"occurrence of {recurrence.describe()}",
        )
    grant = Grant(
        vendor_user_id=user.id,
        ticket_ref=ticket.strip(),
        services=sorted(set(services)),
        window_start=start,
        window_end=end,
        approved_by=approved_by,
        transfers=transfers,
        recurrence=recurrence.to_json() if recurrence is not None else None,
        observer_required=observer_required,
        devices=found,
    )
    db.add(grant)
    await db.commit()
    return grant


async def add_vendor_key(
    db: AsyncSession, vendor_user_id: int, key: PublicKey, now: datetime
) -> VendorKey:
    """Register ``key`` for the vendor user. A key registered by anyone is refused
    (``key-taken``): one key, one person. Commits."""
    taken = Conflict("key-taken", f"the key {key.fingerprint} is already registered")
    if await db.scalar(select(VendorKey.id).where(VendorKey.fingerprint == key.fingerprint)):
        raise taken
    row = VendorKey(
        vendor_user_id=vendor_user_id,
        public_key=key.line,
        fingerprint=key.fingerprint,
        comment=key.comment,
        created_at=now,
    )
    db.add(row)
    try:
        await db.commit()
    except IntegrityError:  # registered by someone else a moment ago
        await db.rollback()
        raise taken from None
    return row


async def _commit(db: AsyncSession, conflict: str) -> None:
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise InvalidInput("conflict", conflict) from None


STAFF_ROLES = frozenset({"biomed", "security", "admin"})


async def add_staff_user(
    db: AsyncSession,
    vault: Vault,
    *,
    login: str,
    roles: Sequence[str],
    password: str,
    display_name: str = "",
) -> tuple[StaffUser, str]:
    """Create a staff user; returns it and its new TOTP secret."""
    check_name("login", login)
    unknown = sorted(set(roles) - STAFF_ROLES)
    if unknown or not roles:
        raise InvalidInput("role-invalid", f"roles must be among {sorted(STAFF_ROLES)}")
    secret = totp.new_secret()
    user = StaffUser(
        login=login,
        display_name=display_name,
        roles=sorted(set(roles)),
        password_hash=hash_password(password),
        totp_secret=vault.seal_text(secret, TOTP_SECRET),
    )
    db.add(user)
    await _commit(db, f"staff login {login!r} already exists")
    return user, secret


async def revoke_grant(
    db: AsyncSession, grant_id: int, by: str, reason: str, now: datetime | None = None
) -> Grant:
    """Revoke a grant now; gateways end its live sessions within a second."""
    grant = await db.get(Grant, grant_id)
    if grant is None:
        raise NotFound("grant-unknown", f"grant {grant_id} does not exist")
    if grant.revoked_at is not None:
        raise InvalidInput("grant-revoked", f"grant {grant_id} was already revoked")
    grant.revoked_at, grant.revoked_by, grant.revoke_reason = now or utcnow(), by, reason
    await notify_supervisors(db, f"grant:{grant_id}")  # delivered at commit
    await db.commit()
    return grant


async def request_kill(db: AsyncSession, session_id: str, by: str) -> Session:
    """Ask whichever gateway holds the session to end it."""
    session = await db.get(Session, session_id)
    if session is None:
        raise NotFound("session-unknown", f"session {session_id} does not exist")
    if session.ended_at is not None:
        raise InvalidInput("session-ended", f"session {session_id} has already ended")
    session.kill_requested_at, session.kill_requested_by = utcnow(), by
    await notify_supervisors(db, f"session:{session_id}")
    await db.commit()
    return session
