"""API bearer tokens for integrations (a ticketing system filing requests, a SIEM reading).

A token acts as exactly one staff or vendor user, with that user's rights as they are at
each call: disabling the user stops the token too. The token is ``spt_`` and 43 random
URL-safe characters, shown once; only its SHA-256 is stored, so a database dump holds no
usable token. Only admins create tokens; an admin or the token's own user revokes one.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from policy.actor import Actor, AuditSink, refusals_recorded, require_staff, staff_roles
from policy.errors import Conflict, Forbidden, InvalidInput, NotFound
from policy.models import ApiToken, StaffUser, VendorUser, utcnow

PREFIX = "spt_"
TOKEN_REFUSED = "policy:token:refused"  # noqa: S105 - an audit tag
# last_used_at is a hint for admins, not evidence (the audit log is): write it at most
# this often, so an integration polling every second does not write on every call
TOUCH_EVERY = timedelta(minutes=1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _owner(
    db: AsyncSession, staff_login: str | None, vendor_login: str | None
) -> StaffUser | VendorUser:
    if bool(staff_login) == bool(vendor_login):
        raise InvalidInput("token-owner", "a token acts as exactly one staff or vendor user")
    user: StaffUser | VendorUser | None
    if staff_login:
        user = await db.scalar(select(StaffUser).where(StaffUser.login == staff_login))
    else:
        user = await db.scalar(select(VendorUser).where(VendorUser.login == vendor_login))
    login = staff_login or vendor_login
    if user is None:
        raise NotFound("login-unknown", f"user {login!r} does not exist")
    if user.disabled:
        raise Conflict("account-disabled", f"user {login!r} is disabled")
    return user


async def create_token(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    name: str,
    *,
    staff_login: str | None = None,
    vendor_login: str | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token acting as the named user, and its secret (shown once)."""
    name = name.strip()
    async with refusals_recorded(db, audit, actor, TOKEN_REFUSED, action="create", name=name):
        await require_staff(db, actor, {"admin"}, "creating an API token")
        if not name or len(name) > 100:
            raise InvalidInput("token-name-invalid", "give the token a name of 1-100 characters")
        owner = await _owner(db, staff_login, vendor_login)
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        token_hash=token_hash(secret),
        name=name,
        staff_user_id=owner.id if isinstance(owner, StaffUser) else None,
        vendor_user_id=owner.id if isinstance(owner, VendorUser) else None,
        created_by=actor.label,
        created_at=now or utcnow(),
    )
    db.add(row)
    await db.commit()
    kind = "staff" if isinstance(owner, StaffUser) else "vendor"
    await audit.record(
        "policy:token:created",
        actor=actor.label,
        token_id=row.id,
        name=name,
        acts_as=f"{kind}:{owner.login}",
    )
    return row, secret


async def authenticate(db: AsyncSession, token: str, now: datetime) -> ApiToken | None:
    """The live token for ``token`` (not revoked, its user enabled), or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = await db.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None or await token_actor(db, row) is None:
        return None
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
        row.last_used_at = now
        await db.commit()
    return row


async def token_actor(db: AsyncSession, row: ApiToken) -> Actor | None:
    """The actor a token acts as (``via="api"``), or None if that user is gone or disabled."""
    if row.staff_user_id is not None:
        staff = await db.get(StaffUser, row.staff_user_id)
        if staff is None or staff.disabled:
            return None
        return Actor("staff", staff.id, staff.login, frozenset(staff.roles), via="api")
    vendor = await db.get(VendorUser, row.vendor_user_id) if row.vendor_user_id else None
    if vendor is None or vendor.disabled:
        return None
    return Actor("vendor", vendor.id, vendor.login, via="api")


def _owned_by(row: ApiToken, actor: Actor) -> bool:
    own_id = row.vendor_user_id if actor.is_vendor else row.staff_user_id
    return own_id == actor.id


async def revoke_token(
    db: AsyncSession, audit: AuditSink, actor: Actor, token_id: int, *, now: datetime
) -> ApiToken:
    """Stop a token at once (by an admin, or by the user it acts as)."""
    async with refusals_recorded(
        db, audit, actor, TOKEN_REFUSED, action="revoke", token_id=token_id
    ):
        row = await db.get(ApiToken, token_id)
        if row is None:
            raise NotFound("token-unknown", f"API token {token_id} does not exist")
        if not _owned_by(row, actor) and "admin" not in await staff_roles(db, actor):
            raise Forbidden("role-required", "revoking another user's API token needs admin")
        if row.revoked_at is not None:
            raise Conflict("token-revoked", f"API token {row.name!r} was already revoked")
    row.revoked_at = now
    await db.commit()
    await audit.record("policy:token:revoked", actor=actor.label, token_id=row.id, name=row.name)
    return row


async def list_tokens(db: AsyncSession) -> list[ApiToken]:
    """Every token, newest first (for the admin page; the secrets are not there to show)."""
    return list(await db.scalars(select(ApiToken).order_by(ApiToken.id.desc())))
