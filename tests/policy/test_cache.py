"""The gateway's policy cache: the triggers that invalidate it, and what it hands out.

Runs on the suite's database (SQLite or PostgreSQL, per SALLYPORT_TEST_DB), migrated by
Alembic as in production: the triggers under test are the migration's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy import admin
from policy.cache import PolicyCache, generation_reader
from policy.config import Settings
from policy.decide import Reason, decide_login, decide_target
from policy.models import (
    Device,
    DeviceService,
    Grant,
    Segment,
    VendorKey,
    VendorUser,
    grant_device,
)
from policy.store import user_view
from policy.vault import Vault
from tests.conftest import VendorLogin, grant
from tests.support.openssh import make_identity

Sessions = async_sessionmaker[AsyncSession]


async def generation(db: Sessions) -> int:
    async with db() as s:
        return int(await s.scalar(text("SELECT value FROM policy_generation WHERE id = 1")) or 0)


@dataclass
class Seeded:
    user_id: int
    device_id: int
    grant_id: int


async def seed(db: Sessions, vault: Vault, public_keys: tuple[str, ...] = ()) -> Seeded:
    async with db() as s:
        await admin.add_segment(s, "icu", networks=["127.0.0.0/8"])
        device = await admin.add_device(
            s,
            vault,
            name="pump-12",
            segment="icu",
            address="127.0.0.1",
            services=[admin.ServiceSpec("ssh", 22)],
            credential=None,
            host_key=None,
        )
        await admin.add_vendor(s, "Infusia Medical")
        user, _secret = await admin.add_vendor_user(
            s,
            vault,
            login="vendor1",
            vendor="Infusia Medical",
            public_keys=public_keys,
            password="correct horse battery staple",
        )
    grant_id = await grant(db, devices=["pump-12"])
    return Seeded(user.id, device.id, grant_id)


Write = Callable[[AsyncSession, Seeded], Awaitable[object]]

# every kind of write a gateway decision depends on: each must move the generation
COUNTED: dict[str, Write] = {
    "vendor_user insert": lambda s, ids: s.execute(
        insert(VendorUser).values(vendor_id=1, login="vendor2")
    ),
    "vendor_user disabled": lambda s, ids: s.execute(
        update(VendorUser).where(VendorUser.id == ids.user_id).values(disabled=True)
    ),
    "vendor_user locked_until": lambda s, ids: s.execute(
        update(VendorUser)
        .where(VendorUser.id == ids.user_id)
        .values(locked_until=datetime.now(UTC) + timedelta(minutes=15))
    ),
    "vendor_user password_hash": lambda s, ids: s.execute(
        update(VendorUser).where(VendorUser.id == ids.user_id).values(password_hash="x")
    ),
    "vendor_user totp_secret": lambda s, ids: s.execute(
        update(VendorUser).where(VendorUser.id == ids.user_id).values(totp_secret=b"x")
    ),
    "vendor_user login": lambda s, ids: s.execute(
        update(VendorUser).where(VendorUser.id == ids.user_id).values(login="renamed")
    ),
    "vendor_user delete": lambda s, ids: s.execute(
        delete(VendorUser).where(VendorUser.id == ids.user_id)
    ),
    "vendor_key insert": lambda s, ids: s.execute(
        insert(VendorKey).values(
            vendor_user_id=ids.user_id, public_key="ssh-ed25519 AAAA", fingerprint="SHA256:x"
        )
    ),
    "segment update": lambda s, ids: s.execute(update(Segment).values(networks=["10.0.0.0/8"])),
    "segment insert": lambda s, ids: s.execute(insert(Segment).values(name="lab", networks=[])),
    "device update": lambda s, ids: s.execute(
        update(Device).where(Device.id == ids.device_id).values(ssh_host_key="ssh-ed25519 BBBB")
    ),
    "device insert": lambda s, ids: s.execute(
        insert(Device).values(name="pump-13", segment_id=1, address="127.0.0.2")
    ),
    "device_service insert": lambda s, ids: s.execute(
        insert(DeviceService).values(device_id=ids.device_id, name="https", port=443)
    ),
    "device_service update": lambda s, ids: s.execute(update(DeviceService).values(port=2222)),
    "device_service delete": lambda s, ids: s.execute(delete(DeviceService)),
    "grant update": lambda s, ids: s.execute(
        update(Grant).where(Grant.id == ids.grant_id).values(revoked_at=datetime.now(UTC))
    ),
    "grant delete": lambda s, ids: s.execute(delete(Grant).where(Grant.id == ids.grant_id)),
    "grant_device delete": lambda s, ids: s.execute(delete(grant_device)),
    "grant_device insert": lambda s, ids: s.execute(
        insert(grant_device).values(grant_id=ids.grant_id, device_id=ids.device_id + 1)
    ),
}


@pytest.mark.parametrize("write", sorted(COUNTED))
async def test_every_policy_write_moves_the_generation(
    db: Sessions, vault: Vault, write: str
) -> None:
    ids = await seed(db, vault)
    if write == "grant_device insert":  # a second device for the grant to name
        async with db() as s:
            await admin.add_device(
                s, vault, name="pump-13", segment="icu", address="127.0.0.2", services=[],
                credential=None, host_key=None,
            )  # fmt: skip
    if write == "vendor_user delete":  # the grant would hold on to the user
        async with db() as s:
            await s.execute(delete(Grant))
            await s.commit()
    before = await generation(db)
    async with db() as s:
        await COUNTED[write](s, ids)
        await s.commit()
    assert await generation(db) > before


async def test_key_removal_and_grant_creation_move_the_generation(
    db: Sessions, vault: Vault, tmp_path: Path
) -> None:
    ids = await seed(db, vault, (make_identity(tmp_path, "k1").public_key_line,))
    before = await generation(db)
    async with db() as s:
        await s.execute(delete(VendorKey).where(VendorKey.vendor_user_id == ids.user_id))
        await s.commit()
    after_delete = await generation(db)
    assert after_delete > before
    await grant(db, devices=["pump-12"])  # the ORM's insert of grant and grant_device rows
    assert await generation(db) > after_delete


@pytest.mark.parametrize(
    "values",
    [{"totp_last_step": 123}, {"display_name": "Pat"}, {"email": "pat@example.org"}],
    ids=["totp step", "display name", "email"],
)
async def test_logins_and_profile_edits_leave_the_generation(
    db: Sessions, vault: Vault, values: dict[str, object]
) -> None:
    """Every login advances the TOTP step: that must not empty every gateway's cache."""
    ids = await seed(db, vault)
    before = await generation(db)
    async with db() as s:
        await s.execute(update(VendorUser).where(VendorUser.id == ids.user_id).values(**values))
        await s.commit()
    assert await generation(db) == before


def cache_for(db: Sessions, settings: Settings) -> PolicyCache:
    return PolicyCache(db, generation_reader(settings.database_url))


async def test_lookups_are_served_from_memory_until_a_change(
    db: Sessions, vault: Vault, settings: Settings
) -> None:
    ids = await seed(db, vault)
    cache = cache_for(db, settings)
    try:
        first = await cache.grants(ids.user_id)
        assert await cache.grants(ids.user_id) is first  # the same object: not reloaded
        assert (await cache.device("pump-12")) is (await cache.device("pump-12"))
        assert cache.misses == 2 and cache.hits == 2
        now = datetime.now(UTC)
        assert decide_target("pump-12", True, "ssh", first, now).allow

        async with db() as s:  # as the web and `sallyport grant revoke` do
            await admin.revoke_grant(s, ids.grant_id, by="biomed", reason="done")

        after = await cache.grants(ids.user_id)
        decision = decide_target("pump-12", True, "ssh", after, now)
        assert decision.reason is Reason.GRANT_REVOKED
        assert cache.resets == 1
    finally:
        await cache.close()


async def test_login_changes_are_seen_at_once(
    db: Sessions, vault: Vault, settings: Settings, tmp_path: Path
) -> None:
    await seed(db, vault, (make_identity(tmp_path, "k1").public_key_line,))
    cache = cache_for(db, settings)
    try:
        login = await cache.vendor_login("vendor1")
        assert login is not None and len(login.fingerprints) == 1
        assert decide_login(user_view(login), datetime.now(UTC)).allow
        assert await cache.vendor_login("nobody") is None
        assert await cache.vendor_login("nobody") is None  # unknown logins are cached too

        async with db() as s:
            await s.execute(delete(VendorKey))
            await s.execute(update(VendorUser).values(disabled=True))
            await s.commit()
        login = await cache.vendor_login("vendor1")
        assert login is not None and login.fingerprints == frozenset()
        assert decide_login(user_view(login), datetime.now(UTC)).reason is Reason.USER_DISABLED

        async with db() as s:
            await admin.add_vendor_user(
                s, vault, login="nobody", vendor="Infusia Medical", password="p4ssw0rd-long-enough"
            )
        assert await cache.vendor_login("nobody") is not None
    finally:
        await cache.close()


async def test_a_load_that_raced_a_change_is_not_kept(
    db: Sessions, vault: Vault, settings: Settings
) -> None:
    """A lookup that read generation N and was still loading when another lookup saw N+1
    must not store its (possibly older) rows under N+1."""
    ids = await seed(db, vault)
    cache = cache_for(db, settings)
    release = asyncio.Event()
    entries: dict[int, object] = {}

    async def slow_load(s: AsyncSession, key: int) -> object:
        await release.wait()
        return await s.scalar(select(Grant.revoked_at).where(Grant.id == key))

    try:
        slow = asyncio.ensure_future(cache._lookup(entries, ids.grant_id, slow_load))
        await asyncio.sleep(0.05)
        async with db() as s:
            await admin.revoke_grant(s, ids.grant_id, by="biomed", reason="done")
        await cache.grants(ids.user_id)  # sees the new generation
        release.set()
        await slow
        assert ids.grant_id not in entries
    finally:
        release.set()
        await cache.close()


async def test_without_a_readable_generation_nothing_is_kept(
    db: Sessions, vault: Vault, settings: Settings
) -> None:
    ids = await seed(db, vault)

    class Broken:
        async def read(self) -> int:
            raise OSError("database unreachable")

        async def close(self) -> None:
            """Nothing was opened."""

    cache = PolicyCache(db, Broken())
    grants = await cache.grants(ids.user_id)
    assert [g.id for g in grants] == [ids.grant_id]
    await cache.grants(ids.user_id)
    assert cache.hits == 0 and cache.misses == 2


async def test_a_revocation_refuses_the_next_session_at_once(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway
) -> None:
    """End to end with OpenSSH: the gateway's cache holds the grant from the first session;
    a revocation committed elsewhere refuses the very next one."""
    grant_id = await grant(db, devices=["pump-12"])
    first = await vendor.ssh("pump-12", "echo first")
    assert first.returncode == 0 and b"first" in first.stdout
    assert gateway.ctx.policy.hits + gateway.ctx.policy.misses > 0

    async with db() as s:
        await admin.revoke_grant(s, grant_id, by="biomed", reason="work finished")
    second = await vendor.ssh("pump-12", "echo second")

    assert second.returncode != 0
    assert b"second" not in second.stdout
    assert "was revoked" in second.stderr
