"""One-time invite links: how vendor users and staff get an account without anyone else
ever knowing their password or second factor.

Admins (and biomed, for vendor users) create an invite; the link carries a random token of
which only the SHA-256 is stored. Whoever opens it picks a login and a password, scans a
TOTP secret into an authenticator and proves it with a code. Redeeming marks the invite
used with a conditional UPDATE in the same transaction that creates the user, so two
people racing with one link get one account between them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import totp
from policy.actor import Actor, AuditSink, record_refusal, refusals_recorded, require_staff
from policy.admin import STAFF_ROLES, check_name
from policy.errors import Conflict, InvalidInput, NotFound, PolicyError
from policy.models import Invite, StaffUser, Vendor, VendorUser
from policy.passwords import hash_password
from policy.vault import TOTP_SECRET, Vault

INVITE_REFUSED = "policy:invite:refused"
MIN_PASSWORD = 12
MAX_HOURS = 24 * 30
INVITERS = {"vendor": frozenset({"admin", "biomed"}), "staff": frozenset({"admin"})}
MIN_SECRET_BYTES = 10  # 80 bits, RFC 4226's floor (pyotp makes 160)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_email(email: str) -> str:
    email = email.strip()
    if len(email) > 254 or (email and ("@" not in email or any(c.isspace() for c in email))):
        raise InvalidInput("email-invalid", f"{email!r} is not an email address")
    return email


async def _invite_target(
    db: AsyncSession, kind: str, vendor: str | None, roles: Sequence[str]
) -> tuple[Vendor | None, list[str]]:
    """The organization (vendor invites) or the roles (staff invites) the invite grants."""
    if kind == "vendor":
        if roles:
            raise InvalidInput("role-invalid", "vendor users hold no staff roles")
        org = await db.scalar(select(Vendor).where(Vendor.name == (vendor or "").strip()))
        if org is None:
            raise NotFound("vendor-unknown", f"vendor {vendor!r} does not exist")
        return org, []
    if vendor:
        raise InvalidInput("invite-vendor", "a staff invite names no vendor organization")
    wanted = sorted(set(roles))
    if not wanted or set(wanted) - STAFF_ROLES:
        raise InvalidInput("role-invalid", f"roles must be among {', '.join(sorted(STAFF_ROLES))}")
    return None, wanted


async def create_invite(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    *,
    kind: str,
    vendor: str | None,
    roles: Sequence[str] = (),
    email: str = "",
    hours: int,
    now: datetime,
) -> tuple[Invite, str]:
    """A new invite and its token (shown once: only its hash is kept)."""
    async with refusals_recorded(db, audit, actor, INVITE_REFUSED, action="create", kind=kind):
        if kind not in INVITERS:
            raise InvalidInput("invite-kind", "an invite is for a vendor user or a staff user")
        who = "a vendor user" if kind == "vendor" else "staff"
        await require_staff(db, actor, INVITERS[kind], f"inviting {who}")
        if not 0 < hours <= MAX_HOURS:
            raise InvalidInput("invite-hours", f"an invite lasts 1 to {MAX_HOURS} hours")
        org, role_list = await _invite_target(db, kind, vendor, roles)
        address = _check_email(email)
    token = secrets.token_urlsafe(32)
    invite = Invite(
        token_hash=token_hash(token),
        kind=kind,
        vendor=org,
        roles=role_list,
        email=address,
        created_by=actor.label,
        created_at=now,
        expires_at=now + timedelta(hours=hours),
    )
    db.add(invite)
    await db.commit()
    await audit.record(
        "policy:invite:created",
        actor=actor.label,
        invite_id=invite.id,
        kind=kind,
        vendor=org.name if org else None,
        roles=role_list,
        email=address,
        expires_at=invite.expires_at.astimezone(UTC).isoformat(),
    )
    return invite, token


async def open_invite(db: AsyncSession, token: str, now: datetime) -> Invite:
    """The invite a link names, if it can still be used (its vendor loaded)."""
    invite = None
    if token and len(token) < 200:
        invite = await db.scalar(
            select(Invite)
            .where(Invite.token_hash == token_hash(token))
            .options(selectinload(Invite.vendor))
        )
    if invite is None:
        raise NotFound("invite-unknown", "this invite link is not valid; ask for a new one")
    if invite.used_at is not None:
        raise InvalidInput("invite-used", "this invite link has already been used")
    if invite.expires_at <= now:
        raise InvalidInput(
            "invite-expired",
            f"this invite link expired at {invite.expires_at:%Y-%m-%d %H:%M} UTC;"
            " ask for a new one",
        )
    return invite


def normalize_secret(secret: str) -> str:
    """A base32 TOTP secret as stored: upper case, no spaces or padding; refused if short."""
    clean = secret.replace(" ", "").upper().rstrip("=")
    try:
        raw = base64.b32decode(clean + "=" * (-len(clean) % 8))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < MIN_SECRET_BYTES:
        raise InvalidInput("totp-secret-invalid", "the authenticator secret is not valid base32")
    return clean


async def _login_free(db: AsyncSession, login: str) -> None:
    """Logins are unique across vendor and staff accounts: the approval rules treat one
    login as one person."""
    for model in (VendorUser, StaffUser):
        if await db.scalar(select(model.id).where(model.login == login)) is not None:
            raise Conflict("login-taken", f"login {login!r} is taken; choose another")


async def redeem_invite(
    db: AsyncSession,
    audit: AuditSink,
    vault: Vault,
    token: str,
    *,
    login: str,
    password: str,
    display_name: str,
    email: str,
    totp_secret: str,
    code: str,
    now: datetime,
) -> VendorUser | StaffUser:
    """Create the account an invite is for; the invite is then used up."""
    invite: Invite | None = None
    try:
        invite = await open_invite(db, token, now)
        check_name("login", login)
        if len(password) < MIN_PASSWORD:
            raise InvalidInput("password-weak", f"use a password of {MIN_PASSWORD}+ characters")
        if len(display_name) > 200:
            raise InvalidInput("name-invalid", "the display name is longer than 200 characters")
        address = _check_email(email) or invite.email
        await _login_free(db, login)
        secret = normalize_secret(totp_secret)
        check = totp.check_code(secret, code, now, None)
        if not check.ok:
            raise InvalidInput(
                "code-invalid",
                "the verification code does not match; check the authenticator's clock and"
                " enter the current code",
            )
    except PolicyError as exc:
        await _refuse(db, audit, invite, exc, login)
        raise
    assert check.step is not None
    password_hash = await asyncio.to_thread(hash_password, password)
    label = f"{invite.kind}:{login}"
    used = await db.scalar(
        update(Invite)
        .where(Invite.id == invite.id, Invite.used_at.is_(None))
        .values(used_at=now, used_by=label)
        .returning(Invite.id)
        .execution_options(synchronize_session=False)
    )
    if used is None:
        spent = InvalidInput("invite-used", "this invite link has already been used")
        await _refuse(db, audit, invite, spent, login)
        raise spent
    user = _new_user(invite, login, display_name.strip(), address, password_hash)
    user.totp_secret = vault.seal_text(secret, TOTP_SECRET)
    user.totp_last_step = check.step
    user.created_at = now
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:
        conflict = Conflict("login-taken", f"login {login!r} is taken; choose another")
        await _refuse(db, audit, invite, conflict, login)
        raise conflict from None
    await audit.record(
        "policy:invite:redeemed",
        actor=label,
        invite_id=invite.id,
        kind=invite.kind,
        vendor=invite.vendor.name if invite.vendor else None,
        roles=list(invite.roles),
        created_by=invite.created_by,
    )
    return user


def _new_user(
    invite: Invite, login: str, display_name: str, email: str, password_hash: str
) -> VendorUser | StaffUser:
    if invite.kind == "vendor":
        assert invite.vendor_id is not None
        return VendorUser(
            vendor_id=invite.vendor_id,
            login=login,
            display_name=display_name,
            email=email,
            password_hash=password_hash,
        )
    return StaffUser(
        login=login,
        display_name=display_name,
        email=email,
        password_hash=password_hash,
        roles=sorted(invite.roles),
    )


async def _refuse(
    db: AsyncSession, audit: AuditSink, invite: Invite | None, exc: PolicyError, login: str
) -> None:
    actor = f"invite:{invite.id}" if invite is not None else "invite:unknown"
    await record_refusal(db, audit, actor, INVITE_REFUSED, exc, action="redeem", login=login[:64])
