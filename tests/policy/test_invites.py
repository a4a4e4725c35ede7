"""Invite links (policy/invites.py): who may invite whom, and redeeming exactly once."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from policy import invites, totp
from policy.actor import Actor
from policy.errors import PolicyError
from policy.models import AuditEvent, Invite, StaffUser, Vendor, VendorUser
from policy.passwords import verify_password
from policy.vault import TOTP_SECRET, Vault
from recorder.audit import AuditLog

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 23, 15, 0, 7, tzinfo=UTC)
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PASSWORD = "a long enough passphrase"


@dataclass
class Setup:
    db: Sessions
    audit: AuditLog
    vault: Vault
    admin: Actor
    biomed: Actor
    security: Actor

    async def create(self, actor: Actor, **kw: Any) -> tuple[Invite, str]:
        kw.setdefault("kind", "vendor")
        kw.setdefault("vendor", "Infusia" if kw["kind"] == "vendor" else None)
        kw.setdefault("hours", 72)
        kw.setdefault("now", NOW)
        async with self.db() as s:
            return await invites.create_invite(s, self.audit, actor, **kw)

    async def redeem(self, token: str, **kw: Any) -> VendorUser | StaffUser:
        kw.setdefault("login", "new.user")
        kw.setdefault("password", PASSWORD)
        kw.setdefault("display_name", "New User")
        kw.setdefault("email", "new@example.org")
        kw.setdefault("totp_secret", SECRET)
        kw.setdefault("now", NOW)
        kw.setdefault("code", totp.code_at(SECRET, kw["now"]))
        async with self.db() as s:
            return await invites.redeem_invite(s, self.audit, self.vault, token, **kw)


@pytest.fixture
async def setup(db: Sessions, vault: Vault) -> Setup:
    async with db() as s:
        staff = [
            StaffUser(login="ada", roles=["admin"]),
            StaffUser(login="bea", roles=["biomed"]),
            StaffUser(login="sol", roles=["security"]),
        ]
        s.add_all([Vendor(name="Infusia"), *staff])
        await s.commit()
        actors = [Actor("staff", u.id, u.login, frozenset(u.roles)) for u in staff]
    return Setup(db, AuditLog(db), vault, *actors)


async def tags(db: Sessions) -> list[str]:
    async with db() as s:
        return list(await s.scalars(select(AuditEvent.tag).order_by(AuditEvent.id)))


async def table(db: Sessions) -> list[tuple[Any, ...]]:
    async with db() as s:
        inv = await s.scalars(select(Invite).order_by(Invite.id))
        vendors = await s.scalars(select(VendorUser.login))
        staff = await s.scalars(select(StaffUser.login))
        return [
            *((i.id, i.used_at, i.used_by) for i in inv),
            tuple(sorted(vendors)),
            tuple(sorted(staff)),
        ]


async def refused(setup: Setup, code: str, action: Any) -> PolicyError:
    before = await table(setup.db)
    count = len(await tags(setup.db))
    with pytest.raises(PolicyError) as info:
        await action
    assert info.value.code == code, info.value.message
    assert await table(setup.db) == before
    async with setup.db() as s:
        events = list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))[count:]
    assert [e.tag for e in events] == ["policy:invite:refused"]
    assert events[0].detail["code"] == code
    return info.value


async def test_a_vendor_invite_stores_only_the_token_hash(setup: Setup) -> None:
    invite, token = await setup.create(setup.biomed, email="tech@infusia.example")
    assert len(token) >= 43 and invite.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert invite.expires_at == NOW + timedelta(hours=72) and invite.created_by == "staff:bea"
    assert invite.vendor is not None and invite.vendor.name == "Infusia"
    async with setup.db() as s:
        row = await s.get(Invite, invite.id)
        assert row is not None and token not in (row.token_hash, row.email)
    assert (await tags(setup.db))[-1] == "policy:invite:created"


async def test_who_may_invite_whom(setup: Setup) -> None:
    await refused(setup, "role-required", setup.create(setup.security))
    await refused(
        setup, "role-required", setup.create(setup.biomed, kind="staff", roles=["biomed"])
    )
    invite, _ = await setup.create(setup.admin, kind="staff", roles=["security", "biomed"])
    assert invite.roles == ["biomed", "security"] and invite.vendor_id is None


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"kind": "auditor"}, "invite-kind"),
        ({"vendor": "Nobody Inc"}, "vendor-unknown"),
        ({"roles": ["admin"]}, "role-invalid"),
        ({"kind": "staff", "roles": []}, "role-invalid"),
        ({"kind": "staff", "roles": ["root"]}, "role-invalid"),
        ({"kind": "staff", "roles": ["admin"], "vendor": "Infusia"}, "invite-vendor"),
        ({"hours": 0}, "invite-hours"),
        ({"email": "not an address"}, "email-invalid"),
    ],
)
async def test_bad_invites_are_refused(setup: Setup, kw: dict[str, Any], code: str) -> None:
    await refused(setup, code, setup.create(setup.admin, **kw))


async def test_open_invite_reports_unknown_used_and_expired(setup: Setup) -> None:
    invite, token = await setup.create(setup.admin, hours=1)
    async with setup.db() as s:
        assert (await invites.open_invite(s, token, NOW)).id == invite.id
        for bad, code in [("nope", "invite-unknown"), ("", "invite-unknown")]:
            with pytest.raises(PolicyError) as info:
                await invites.open_invite(s, bad, NOW)
            assert info.value.code == code
        with pytest.raises(PolicyError) as info:
            await invites.open_invite(s, token, NOW + timedelta(hours=1))
        assert info.value.code == "invite-expired"


async def test_redeeming_a_vendor_invite_creates_the_user(setup: Setup) -> None:
    invite, token = await setup.create(setup.biomed)
    user = await setup.redeem(token, totp_secret=SECRET.lower()[:16] + " " + SECRET[16:].lower())
    assert isinstance(user, VendorUser) and user.login == "new.user"
    assert verify_password(PASSWORD, user.password_hash)
    assert user.totp_secret is not None
    assert setup.vault.open_text(user.totp_secret, TOTP_SECRET) == SECRET
    assert user.totp_last_step == totp.step_at(NOW)
    async with setup.db() as s:
        row = await s.get(Invite, invite.id)
        assert row is not None and row.used_at == NOW and row.used_by == "vendor:new.user"
        org = await s.scalar(select(Vendor).where(Vendor.name == "Infusia"))
        assert org is not None and user.vendor_id == org.id
    assert (await tags(setup.db))[-1] == "policy:invite:redeemed"
    await refused(setup, "invite-used", setup.redeem(token, login="second.user"))


async def test_redeeming_a_staff_invite_gives_its_roles(setup: Setup) -> None:
    _, token = await setup.create(setup.admin, kind="staff", roles=["security"])
    user = await setup.redeem(token, login="sam", email="")
    assert isinstance(user, StaffUser) and user.roles == ["security"]


async def test_the_invite_email_is_kept_when_none_is_given(setup: Setup) -> None:
    _, token = await setup.create(setup.admin, email="tech@infusia.example")
    user = await setup.redeem(token, email="  ")
    assert user.email == "tech@infusia.example"


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"password": "short pass"}, "password-weak"),
        ({"login": "bad login"}, "login-name-invalid"),
        ({"login": "10.0.0.1"}, "login-name-invalid"),
        ({"login": "bea"}, "login-taken"),  # a staff login, for a vendor user
        ({"code": "000000"}, "code-invalid"),
        ({"code": "12ab56"}, "code-invalid"),
        ({"totp_secret": "not-base32!"}, "totp-secret-invalid"),
        ({"totp_secret": "JBSWY3DP"}, "totp-secret-invalid"),  # 40 bits
        ({"email": "two words@x"}, "email-invalid"),
        ({"now": NOW + timedelta(hours=73)}, "invite-expired"),
    ],
)
async def test_bad_redemptions_are_refused(setup: Setup, kw: dict[str, Any], code: str) -> None:
    _, token = await setup.create(setup.admin)
    await refused(setup, code, setup.redeem(token, **kw))
    assert isinstance(await setup.redeem(token, login="after.fix"), VendorUser)


async def test_an_unknown_token_is_refused(setup: Setup) -> None:
    await refused(setup, "invite-unknown", setup.redeem("made-up-token"))


async def test_two_people_racing_with_one_link_get_one_account(setup: Setup) -> None:
    _, token = await setup.create(setup.admin)
    results = await asyncio.gather(
        setup.redeem(token, login="first"),
        setup.redeem(token, login="second"),
        return_exceptions=True,
    )
    made = [r for r in results if isinstance(r, VendorUser)]
    failed = [r for r in results if isinstance(r, PolicyError)]
    assert len(made) == 1 and [f.code for f in failed] == ["invite-used"]
    async with setup.db() as s:
        assert list(await s.scalars(select(VendorUser.login))) == [made[0].login]
    assert (await tags(setup.db)).count("policy:invite:refused") == 1


async def test_the_used_mark_is_atomic_even_after_a_stale_read(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redeemer who read the invite before another one used it still gets no account:
    the conditional UPDATE is what decides."""
    _, token = await setup.create(setup.admin)
    await setup.redeem(token, login="first")

    async def stale_open(db: AsyncSession, token: str, now: datetime) -> Invite:
        found = await db.scalar(
            select(Invite)
            .where(Invite.token_hash == invites.token_hash(token))
            .options(selectinload(Invite.vendor))
        )
        assert found is not None and found.used_at is not None
        set_committed_value(found, "used_at", None)  # what the slower redeemer saw before
        return found

    monkeypatch.setattr(invites, "open_invite", stale_open)
    await refused(setup, "invite-used", setup.redeem(token, login="second"))
