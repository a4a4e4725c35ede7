"""One-time browser-door tickets (policy/tickets.py): issued by the portal, stored hashed,
redeemed once by any gateway node, refused with a reason after use, expiry or sign-out."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import tickets
from policy.models import (
    ConnectTicket,
    Device,
    Grant,
    Segment,
    StaffUser,
    Vendor,
    VendorUser,
    WebSession,
)
from policy.models import Session as SessionRow
from policy.tickets import TicketRefused

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
PORTAL = "a" * 64  # the web_session row id (SHA-256 hex of the cookie)


@dataclass
class World:
    db: Sessions
    vendor_user_id: int
    staff_user_id: int
    grant_id: int
    device_id: int
    session_id: str

    async def connect(self, now: datetime = NOW, portal: str = PORTAL) -> str:
        async with self.db() as s:
            return await tickets.issue_connect(
                s,
                vendor_user_id=self.vendor_user_id,
                actor="eng1",
                grant_id=self.grant_id,
                device_id=self.device_id,
                service="ssh",
                web_session_id=portal,
                step_up_at=now,
                now=now,
            )

    async def watch(self, now: datetime = NOW) -> str:
        async with self.db() as s:
            return await tickets.issue_watch(
                s,
                staff_user_id=self.staff_user_id,
                actor="sam",
                session_id=self.session_id,
                web_session_id=PORTAL,
                now=now,
            )

    async def redeem(self, token: str, now: datetime = NOW, node: str = "gw-a") -> tickets.Redeemed:
        async with self.db() as s:
            return await tickets.redeem(s, token, now=now, node=node)

    async def refusal(self, token: str, now: datetime = NOW) -> str:
        with pytest.raises(TicketRefused) as refused:
            await self.redeem(token, now)
        assert refused.value.message  # said for people, not only a code
        return refused.value.code


@pytest.fixture
async def world(db: Sessions) -> World:
    async with db() as s:
        user = VendorUser(vendor=Vendor(name="Infusia"), login="eng1")
        staff = StaffUser(login="sam", roles=["security"])
        device = Device(name="pump-12", segment=Segment(name="icu"), address="10.0.0.12")
        s.add_all([user, staff, device])
        await s.flush()
        grant = Grant(
            vendor_user_id=user.id,
            ticket_ref="CHG0001",
            services=["ssh"],
            window_start=NOW - timedelta(hours=1),
            window_end=NOW + timedelta(hours=1),
            devices=[device],
        )
        s.add(grant)
        await s.flush()
        live = SessionRow(
            vendor_user_id=user.id,
            device_id=device.id,
            grant_id=grant.id,
            ticket_ref="CHG0001",
            kind="shell",
            started_at=NOW,
        )
        s.add(live)
        s.add(WebSession(id=PORTAL, data={}, created_at=NOW, expires_at=NOW + timedelta(hours=1)))
        await s.commit()
        return World(db, user.id, staff.id, grant.id, device.id, live.id)


async def test_a_connect_ticket_redeems_once_for_what_it_was_issued(world: World) -> None:
    token = await world.connect()
    redeemed = await world.redeem(token, NOW + timedelta(seconds=59))
    assert redeemed == tickets.Redeemed(
        purpose="connect",
        actor="eng1",
        vendor_user_id=world.vendor_user_id,
        staff_user_id=None,
        grant_id=world.grant_id,
        device_id=world.device_id,
        service="ssh",
        session_id=None,
        web_session_id=PORTAL,
    )
    assert await world.refusal(token, NOW + timedelta(seconds=1)) == "ticket-used"
    async with world.db() as s:
        row = await s.scalar(select(ConnectTicket))
    assert row is not None and row.consumed_node == "gw-a"
    assert row.consumed_at == NOW + timedelta(seconds=59)


async def test_a_watch_ticket_names_the_session(world: World) -> None:
    redeemed = await world.redeem(await world.watch())
    assert (redeemed.purpose, redeemed.actor) == ("watch", "sam")
    assert redeemed.staff_user_id == world.staff_user_id
    assert redeemed.session_id == world.session_id
    assert redeemed.vendor_user_id is None and redeemed.grant_id is None


async def test_only_the_hash_is_stored(world: World) -> None:
    token = await world.connect()
    assert len(token) == 43  # 32 bytes, URL-safe base64 without padding
    async with world.db() as s:
        row = await s.scalar(select(ConnectTicket))
    assert row is not None
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(
        [getattr(row, c.key) for c in ConnectTicket.__table__.columns]  # type: ignore[attr-defined]
    )
    assert row.expires_at == NOW + timedelta(seconds=60)


async def test_an_expired_ticket_is_refused(world: World) -> None:
    token = await world.connect()
    assert await world.refusal(token, NOW + timedelta(seconds=60)) == "ticket-expired"
    # and stays refused as expired, not consumed by the refusal
    assert await world.refusal(token, NOW + timedelta(seconds=61)) == "ticket-expired"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("Ab3-" * 10 + "xyz", "ticket-unknown"),  # well formed, never issued
        ("", "ticket-malformed"),
        ("not a ticket!", "ticket-malformed"),
        ("a" * 500, "ticket-malformed"),
        ("ticket\u00e9", "ticket-malformed"),
    ],
)
async def test_unknown_and_malformed_tickets_are_refused(
    world: World, token: str, code: str
) -> None:
    await world.connect()
    assert await world.refusal(token) == code


async def test_a_ticket_of_a_portal_session_that_ended_is_refused(world: World) -> None:
    token = await world.connect()
    async with world.db() as s:
        await s.execute(delete(WebSession).where(WebSession.id == PORTAL))
        await s.commit()
    assert await world.refusal(token) == "portal-session-ended"
    assert await world.refusal(token) == "ticket-used"  # presented once, gone for good


async def test_a_ticket_of_an_expired_portal_session_is_refused(world: World) -> None:
    async with world.db() as s:
        row = await s.get(WebSession, PORTAL)
        assert row is not None
        row.expires_at = NOW + timedelta(seconds=10)
        await s.commit()
    token = await world.connect()
    assert await world.refusal(token, NOW + timedelta(seconds=10)) == "portal-session-ended"


async def test_two_nodes_racing_for_one_ticket_one_wins(world: World) -> None:
    token = await world.connect()

    async def attempt(node: str) -> str:
        try:
            redeemed = await world.redeem(token, node=node)
        except TicketRefused as exc:
            return exc.code
        return f"won:{redeemed.actor}"

    results = await asyncio.gather(attempt("gw-a"), attempt("gw-b"))
    assert sorted(results) == ["ticket-used", "won:eng1"]
    async with world.db() as s:
        row = await s.scalar(select(ConnectTicket))
    assert row is not None and row.consumed_node == (
        "gw-a" if results[0] != "ticket-used" else "gw-b"
    )


async def test_many_tickets_are_independent(world: World) -> None:
    first, second = await world.connect(), await world.connect()
    assert first != second
    assert (await world.redeem(second)).purpose == "connect"
    assert (await world.redeem(first)).purpose == "connect"


async def test_tickets_long_expired_are_cleared_at_the_next_issue(world: World) -> None:
    await world.connect(NOW - timedelta(days=2))
    await world.connect()
    async with world.db() as s:
        rows = list(await s.scalars(select(ConnectTicket)))
    assert [r.created_at for r in rows] == [NOW]
