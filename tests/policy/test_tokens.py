"""API tokens (policy/tokens.py): created by admins, stored hashed, stopped by revocation
or by disabling the user they act as."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import tokens
from policy.actor import Actor
from policy.errors import PolicyError
from policy.models import ApiToken, AuditEvent, StaffUser, Vendor, VendorUser
from recorder.audit import AuditLog

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@dataclass
class Setup:
    db: Sessions
    audit: AuditLog
    admin: Actor
    biomed: Actor
    vendor: Actor

    async def create(self, actor: Actor, name: str = "servicenow", **kw: Any) -> Any:
        async with self.db() as s:
            return await tokens.create_token(s, self.audit, actor, name, now=NOW, **kw)

    async def auth(self, secret: str, now: datetime = NOW) -> ApiToken | None:
        async with self.db() as s:
            return await tokens.authenticate(s, secret, now)


@pytest.fixture
async def setup(db: Sessions) -> Setup:
    async with db() as s:
        ada, bea = StaffUser(login="ada", roles=["admin"]), StaffUser(login="bea", roles=["biomed"])
        vic = VendorUser(vendor=Vendor(name="Infusia"), login="vic")
        s.add_all([ada, bea, vic])
        await s.commit()
        return Setup(
            db,
            AuditLog(db),
            Actor("staff", ada.id, "ada", frozenset({"admin"})),
            Actor("staff", bea.id, "bea", frozenset({"biomed"})),
            Actor("vendor", vic.id, "vic"),
        )


async def audit_tail(db: Sessions, since: int) -> list[AuditEvent]:
    async with db() as s:
        return list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))[since:]


async def refused(setup: Setup, code: str, action: Any) -> None:
    async with setup.db() as s:
        before = [(t.id, t.revoked_at) for t in await s.scalars(select(ApiToken))]
    count = len(await audit_tail(setup.db, 0))
    with pytest.raises(PolicyError) as info:
        await action
    assert info.value.code == code, info.value.message
    async with setup.db() as s:
        assert [(t.id, t.revoked_at) for t in await s.scalars(select(ApiToken))] == before
    events = await audit_tail(setup.db, count)
    assert [e.tag for e in events] == ["policy:token:refused"]
    assert events[0].detail["code"] == code


async def test_an_admin_creates_a_token_stored_as_its_hash(setup: Setup) -> None:
    row, secret = await setup.create(setup.admin, staff_login="bea")
    assert secret.startswith("spt_") and len(secret) >= 4 + 43
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.staff_user_id == setup.biomed.id and row.vendor_user_id is None
    assert row.created_by == "staff:ada"
    [event] = await audit_tail(setup.db, 0)
    assert event.tag == "policy:token:created" and event.detail["acts_as"] == "staff:bea"
    assert secret not in str(event.detail)


async def test_a_token_authenticates_as_its_user(setup: Setup) -> None:
    _, secret = await setup.create(setup.admin, vendor_login="vic")
    row = await setup.auth(secret)
    assert row is not None and row.vendor_user_id == setup.vendor.id
    async with setup.db() as s:
        actor = await tokens.token_actor(s, row)
    assert actor == Actor("vendor", setup.vendor.id, "vic", via="api")
    for wrong in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), secret[4:], "", "spt_"):
        assert await setup.auth(wrong) is None


async def test_last_used_is_written_at_most_once_a_minute(setup: Setup) -> None:
    row, secret = await setup.create(setup.admin, staff_login="bea")
    await setup.auth(secret)
    await setup.auth(secret, NOW + timedelta(seconds=30))
    async with setup.db() as s:
        stored = await s.get(ApiToken, row.id)
        assert stored is not None and stored.last_used_at == NOW
    await setup.auth(secret, NOW + timedelta(minutes=2))
    async with setup.db() as s:
        stored = await s.get(ApiToken, row.id)
        assert stored is not None and stored.last_used_at == NOW + timedelta(minutes=2)


async def test_a_disabled_user_disables_the_token(setup: Setup) -> None:
    _, secret = await setup.create(setup.admin, staff_login="bea")
    async with setup.db() as s:
        bea = await s.get(StaffUser, setup.biomed.id)
        assert bea is not None
        bea.disabled = True
        await s.commit()
    assert await setup.auth(secret) is None


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({}, "token-owner"),
        ({"staff_login": "bea", "vendor_login": "vic"}, "token-owner"),
        ({"staff_login": "nobody"}, "login-unknown"),
        ({"vendor_login": "nobody"}, "login-unknown"),
        ({"name": " ", "staff_login": "bea"}, "token-name-invalid"),
        ({"name": "x" * 101, "staff_login": "bea"}, "token-name-invalid"),
    ],
)
async def test_bad_tokens_are_refused(setup: Setup, kw: dict[str, Any], code: str) -> None:
    await refused(setup, code, setup.create(setup.admin, **kw))


async def test_only_admins_create_tokens(setup: Setup) -> None:
    await refused(setup, "role-required", setup.create(setup.biomed, staff_login="bea"))
    await refused(setup, "role-required", setup.create(setup.vendor, vendor_login="vic"))


async def test_revocation_by_the_owner_or_an_admin(setup: Setup) -> None:
    mine, secret = await setup.create(setup.admin, vendor_login="vic")
    other, _ = await setup.create(setup.admin, "siem", staff_login="ada")

    async def revoke(actor: Actor, token_id: int) -> ApiToken:
        async with setup.db() as s:
            return await tokens.revoke_token(s, setup.audit, actor, token_id, now=NOW)

    await refused(setup, "role-required", revoke(setup.vendor, other.id))
    await refused(setup, "role-required", revoke(setup.biomed, other.id))
    await refused(setup, "token-unknown", revoke(setup.admin, 999))
    assert (await revoke(setup.vendor, mine.id)).revoked_at == NOW
    assert await setup.auth(secret) is None
    await refused(setup, "token-revoked", revoke(setup.admin, mine.id))
    assert (await revoke(setup.admin, other.id)).revoked_at == NOW
    async with setup.db() as s:
        assert [t.name for t in await tokens.list_tokens(s)] == ["siem", "servicenow"]
    revoked = [e for e in await audit_tail(setup.db, 0) if e.tag == "policy:token:revoked"]
    assert [e.actor for e in revoked] == ["vendor:vic", "staff:ada"]
