"""Queries the gateway and the CLI share: who is this vendor, what may they reach."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from policy import totp
from policy.decide import GrantView, UserView
from policy.models import Device, Grant, MfaFailure, VendorKey, VendorUser, grant_device
from policy.windows import Weekly


@dataclass(frozen=True)
class VendorLogin:
    """What the gateway's login needs of a vendor user: a snapshot, safe to share."""

    id: int
    login: str
    disabled: bool
    locked_until: datetime | None
    password_hash: str | None
    totp_secret: bytes | None
    totp_last_step: int | None  # a hint: the database's atomic step update decides
    fingerprints: frozenset[str]  # of the user's SSH keys (sha256)


async def vendor_login(db: AsyncSession, login: str) -> VendorLogin | None:
    """The user and their key fingerprints in one query."""
    rows = (
        await db.execute(
            select(
                VendorUser.id,
                VendorUser.login,
                VendorUser.disabled,
                VendorUser.locked_until,
                VendorUser.password_hash,
                VendorUser.totp_secret,
                VendorUser.totp_last_step,
                VendorKey.fingerprint,
            )
            .outerjoin(VendorKey, VendorKey.vendor_user_id == VendorUser.id)
            .where(VendorUser.login == login)
        )
    ).all()
    if not rows:
        return None
    first = rows[0]
    return VendorLogin(
        id=first.id,
        login=first.login,
        disabled=first.disabled,
        locked_until=first.locked_until,
        password_hash=first.password_hash,
        totp_secret=first.totp_secret,
        totp_last_step=first.totp_last_step,
        fingerprints=frozenset(r.fingerprint for r in rows if r.fingerprint is not None),
    )


def user_view(user: VendorLogin | None) -> UserView | None:
    if user is None:
        return None
    return UserView(user.login, user.disabled, user.locked_until)


async def device(db: AsyncSession, name: str) -> Device | None:
    """The device with its services and segment loaded, in one query."""
    result = await db.execute(
        select(Device)
        .where(Device.name == name)
        .options(joinedload(Device.services), joinedload(Device.segment))
    )
    return result.unique().scalar_one_or_none()


async def grants_for(db: AsyncSession, vendor_user_id: int) -> list[GrantView]:
    """The user's grants with the names of their devices, in one query."""
    rows = (
        await db.execute(
            select(Grant, Device.name)
            .outerjoin(grant_device, grant_device.c.grant_id == Grant.id)
            .outerjoin(Device, Device.id == grant_device.c.device_id)
            .where(Grant.vendor_user_id == vendor_user_id)
            .order_by(Grant.id)
        )
    ).all()
    names: dict[int, set[str]] = {}
    grants: dict[int, Grant] = {}
    for grant, name in rows:
        grants.setdefault(grant.id, grant)
        if name is not None:
            names.setdefault(grant.id, set()).add(name)
    return [grant_view(g, names.get(g.id, set())) for g in grants.values()]


def grant_view(grant: Grant, device_names: set[str]) -> GrantView:
    return GrantView(
        id=grant.id,
        ticket_ref=grant.ticket_ref,
        devices=frozenset(device_names),
        services=frozenset(grant.services),
        window_start=grant.window_start,
        window_end=grant.window_end,
        revoked_at=grant.revoked_at,
        transfers=grant.transfers,
        idle_timeout=grant.idle_timeout,
        max_session=grant.max_session,
        observer_required=grant.observer_required,
        # a stored window that no longer parses raises: no guessing at when access is open
        recurrence=Weekly.parse(grant.recurrence) if grant.recurrence is not None else None,
    )


async def accept_totp_step(db: AsyncSession, user_id: int, step: int) -> bool:
    """Atomically move the user's last accepted step forward; False if another login
    already used this step or a later one (a replay racing us)."""
    result = await db.execute(
        update(VendorUser)
        .where(VendorUser.id == user_id)
        .where(or_(VendorUser.totp_last_step.is_(None), VendorUser.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    await db.execute(delete(MfaFailure).where(MfaFailure.vendor_user_id == user_id))
    await db.commit()
    return bool(getattr(result, "rowcount", 0) == 1)


async def note_totp_failure(db: AsyncSession, user_id: int, now: datetime) -> datetime | None:
    """Record a failed code; lock the user when the rule says so. Returns the lock end."""
    db.add(MfaFailure(vendor_user_id=user_id, at=now))
    await db.flush()
    since = now - totp.FAILURE_WINDOW
    times: Sequence[datetime] = (
        await db.scalars(
            select(MfaFailure.at).where(MfaFailure.vendor_user_id == user_id, MfaFailure.at > since)
        )
    ).all()
    until = totp.lock_until(times, now)
    if until is not None:
        await db.execute(
            update(VendorUser).where(VendorUser.id == user_id).values(locked_until=until)
        )
        await db.execute(delete(MfaFailure).where(MfaFailure.vendor_user_id == user_id))
    await db.commit()
    return until


async def count_rows(db: AsyncSession, model: type[object]) -> int:
    return int(await db.scalar(select(func.count()).select_from(model)) or 0)


NOTIFY_CHANNEL = "sallyport_supervise"


async def notify_supervisors(db: AsyncSession, what: str) -> None:
    """Wake every gateway's supervisor now (PostgreSQL); others find it at the next poll."""
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(
            text("SELECT pg_notify(:channel, :what)"), {"channel": NOTIFY_CHANNEL, "what": what}
        )
