"""The browser door with a real gateway, a real sshd device and real tickets: terminal,
refusals, watching live, moderated sessions (for browser and OpenSSH vendors alike).

The browser's side is aiohttp's WebSocket client speaking the door's protocol (the
Chromium tests in tests/web/ drive the real page); everything else is real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy import admin, tickets
from policy.models import AuditEvent, Device, Grant, Recording, Session, WebSession, utcnow
from policy.vault import Vault
from recorder.readers import parse
from tests.conftest import Clock, VendorLogin, grant

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


async def web_session(db: Sessions, key: str) -> str:
    async with db() as s:
        s.add(WebSession(id=key, data={}, expires_at=utcnow() + timedelta(hours=1)))
        await s.commit()
    return key


async def connect_ticket(db: Sessions, vendor_id: int, grant_id: int, device: Device) -> str:
    key = await web_session(db, f"ws-{grant_id}-{utcnow().timestamp()}")
    async with db() as s:
        return await tickets.issue_connect(
            s, vendor_user_id=vendor_id, actor="vendor1", grant_id=grant_id,
            device_id=device.id, service="ssh", web_session_id=key,
            step_up_at=utcnow(), now=utcnow(),
        )  # fmt: skip


async def watch_ticket(db: Sessions, staff_id: int, login: str, session_id: str) -> str:
    key = await web_session(db, f"ws-{login}-{utcnow().timestamp()}")
    async with db() as s:
        return await tickets.issue_watch(
            s, staff_user_id=staff_id, actor=login, session_id=session_id,
            web_session_id=key, now=utcnow(),
        )  # fmt: skip


@dataclass
class Browser:
    """One WebSocket to the door, collecting what arrives."""

    ws: aiohttp.ClientWebSocketResponse
    output: bytearray = field(default_factory=bytearray)
    messages: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    async def pump(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.output.extend(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))
        self.closed = True

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def until(self, check: Any, what: str, seconds: float = 10) -> None:
        for _ in range(int(seconds * 20)):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never saw {what}; got {self.messages} / {bytes(self.output)!r}")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def notices(self) -> str:
        return "\n".join(m["text"] for m in self.of("notice"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def open_door(http: aiohttp.ClientSession, gateway: Gateway) -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def opener(ticket: str | None = None, origin: str | None = None, **hello: Any) -> Browser:
        ws = await http.ws_connect(
            f"http://127.0.0.1:{gateway.browser_port}/door",
            origin=origin or gateway.ctx.settings.portal_origin(),
        )
        sockets.append(ws)
        browser = Browser(ws)
        tasks.append(asyncio.ensure_future(browser.pump()))
        if ticket is not None:
            await browser.send(type="hello", ticket=ticket, cols=100, rows=30, **hello)
        return browser

    yield opener
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def vendor_id(db: Sessions) -> int:
    from policy.models import VendorUser

    async with db() as s:
        return int(await s.scalar(select(VendorUser.id).where(VendorUser.login == "vendor1")))


async def tags(db: Sessions) -> list[tuple[str, dict[str, Any]]]:
    async with db() as s:
        rows = await s.execute(select(AuditEvent.tag, AuditEvent.detail).order_by(AuditEvent.id))
    return [(t, d or {}) for t, d in rows]


async def live_session(db: Sessions) -> Session:
    for _ in range(200):
        async with db() as s:
            row = await s.scalar(select(Session).where(Session.ended_at.is_(None)))
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("no live session")


async def ended(db: Sessions, session_id: str) -> Session:
    for _ in range(200):
        async with db() as s:
            row = await s.get(Session, session_id)
        if row is not None and row.ended_at is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("the session never ended")


async def terminal(db: Sessions, pump: Device, open_door: Any) -> Browser:
    """A browser terminal on the pump under a fresh grant, once the gateway says ready."""
    grant_id = await grant(db, devices=["pump-12"])
    term: Browser = await open_door(await connect_ticket(db, await vendor_id(db), grant_id, pump))
    await term.until(lambda: term.of("ready"), "ready")
    return term


async def staff(db: Sessions, vault: Vault, login: str, roles: list[str]) -> int:
    async with db() as s:
        user, _secret = await admin.add_staff_user(
            s, vault, login=login, roles=roles, password="a long staff password 1"
        )
        return user.id


async def test_terminal_in_the_browser_is_the_same_recorded_session(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, open_door: Any
) -> None:
    grant_id = await grant(db, devices=["pump-12"])
    ticket = await connect_ticket(db, await vendor_id(db), grant_id, pump)
    browser = await open_door(ticket)
    await browser.until(lambda: browser.of("ready"), "ready")
    ready = browser.of("ready")[0]
    assert ready["role"] == "vendor" and ready["device"] == "pump-12"
    assert ready["ticket"] == "CHG0001234" and ready["moderated"] is False
    await browser.send(type="input", data="echo caf\u00e9-$((6*7))\r")
    await browser.until(lambda: "café-42".encode() in browser.output, "the command's output")
    await browser.send(type="resize", cols=120, rows=40)
    await browser.send(type="input", data="stty size; exit\r")
    await browser.until(lambda: browser.of("end"), "the end")
    assert browser.of("end")[0]["reason"] == "exit"
    assert b"40 120" in browser.output

    session = await ended(db, ready["session_id"])
    assert session.kind == "shell" and session.end_reason == "exit"
    assert session.client_address.endswith("(browser)")
    async with db() as s:
        rec = await s.scalar(select(Recording).where(Recording.session_id == session.id))
    assert rec is not None and rec.format == "asciicast-v2" and rec.status == "final"
    cast = parse(gateway.ctx.storage.path(rec.storage_key).read_bytes())  # type: ignore[attr-defined]
    assert "café-42".encode() in cast.output()
    assert (await tags(db))[-1][0] == "broker:session:end"


async def test_a_ticket_is_good_once_and_refusals_say_why(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, open_door: Any
) -> None:
    grant_id = await grant(db, devices=["pump-12"])
    ticket = await connect_ticket(db, await vendor_id(db), grant_id, pump)
    first = await open_door(ticket)
    await first.until(lambda: first.of("ready"), "ready")

    again = await open_door(ticket)
    await again.until(lambda: again.closed, "the replay closed")
    [error] = again.of("error")
    assert error["reason"] == "ticket-used" and "already used" in error["message"]
    assert again.ws.close_code == 4403

    unknown = await open_door("x" * 43)
    await unknown.until(lambda: unknown.closed, "an unknown ticket closed")
    assert unknown.of("error")[0]["reason"] == "ticket-unknown"

    denied = [d["reason"] for t, d in await tags(db) if t == "broker:door:deny"]
    assert denied == ["ticket-used", "ticket-unknown"]


async def test_a_ticket_for_a_revoked_grant_is_refused(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, open_door: Any
) -> None:
    grant_id = await grant(db, devices=["pump-12"])
    ticket = await connect_ticket(db, await vendor_id(db), grant_id, pump)
    async with db() as s:
        await s.execute(
            update(Grant).where(Grant.id == grant_id).values(revoked_at=utcnow(), revoked_by="x")
        )
        await s.commit()
    browser = await open_door(ticket)
    await browser.until(lambda: browser.closed, "refusal")
    [error] = browser.of("error")
    assert "revoked" in error["message"]
    async with db() as s:
        assert await s.scalar(select(Session.id)) is None


async def test_other_origins_and_bad_frames_are_refused(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    gateway: Gateway,
    open_door: Any,
    http: aiohttp.ClientSession,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_door(origin="https://evil.example")
    assert refused.value.status == 403

    not_json = await open_door()
    await not_json.ws.send_str("{nope")
    await not_json.until(lambda: not_json.closed, "close on a malformed hello")
    assert not_json.of("error")[0]["reason"] == "malformed"
    assert not_json.ws.close_code == 4400

    grant_id = await grant(db, devices=["pump-12"])
    ticket = await connect_ticket(db, await vendor_id(db), grant_id, pump)
    big = await open_door(ticket)
    await big.until(lambda: big.of("ready"), "ready")
    await big.send(type="input", data="x" * 70_000)  # over the 64 KiB frame limit
    await big.until(lambda: big.closed, "the close")
    assert big.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG  # the reason, in the close
    session = await ended(db, big.of("ready")[0]["session_id"])
    assert session.end_reason == "frame-too-large"
    # refused before any ticket: audited as pre-login refusals (throttled per source)
    reasons = [d.get("reason") for t, d in await tags(db) if t == "broker:preauth:refuse"]
    assert reasons[:2] == ["origin", "malformed"]


async def test_revocation_ends_the_browser_terminal_with_the_reason(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, open_door: Any
) -> None:
    grant_id = await grant(db, devices=["pump-12"])
    browser = await open_door(await connect_ticket(db, await vendor_id(db), grant_id, pump))
    await browser.until(lambda: browser.of("ready"), "ready")
    async with db() as s:
        await s.execute(
            update(Grant)
            .where(Grant.id == grant_id)
            .values(revoked_at=utcnow(), revoked_by="security1")
        )
        await s.commit()
    gateway.ctx.supervisor.nudge()
    await browser.until(lambda: browser.of("end"), "the end")
    end = browser.of("end")[0]
    assert end["reason"] == "revoked" and "revoked" in end["message"]
    assert (await ended(db, browser.of("ready")[0]["session_id"])).end_reason == "revoked"


async def test_watching_live_shows_the_vendor_who_watches_and_the_same_bytes(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    vault: Vault,
    gateway: Gateway,
    open_door: Any,
) -> None:
    term = await terminal(db, pump, open_door)
    await term.send(type="input", data="echo before-$((1+1))\r")
    await term.until(lambda: b"before-2" in term.output, "first output")
    sid = term.of("ready")[0]["session_id"]

    sec = await staff(db, vault, "security1", ["security"])
    watcher = await open_door(await watch_ticket(db, sec, "security1", sid))
    await watcher.until(lambda: watcher.of("ready"), "watcher ready")
    assert watcher.of("ready")[0]["role"] == "observer"
    await watcher.until(lambda: b"before-2" in watcher.output, "the backlog")
    await term.until(lambda: "security1 is watching" in term.notices(), "the vendor told")

    await watcher.send(type="input", data="echo injected\r")  # read-only: ignored
    await term.send(type="input", data="echo after-$((2+2))\r")
    await watcher.until(lambda: b"after-4" in watcher.output, "live output")
    assert b"injected" not in term.output
    await watcher.ws.close()
    await term.until(lambda: "security1 stopped watching" in term.notices(), "the leave")

    admin_only = await staff(db, vault, "admin1", ["admin"])
    refused = await open_door(await watch_ticket(db, admin_only, "admin1", sid))
    await refused.until(lambda: refused.closed, "an admin-only watcher refused")
    assert refused.of("error")[0]["reason"] == "not-observer"

    events = [(t, d.get("observer")) for t, d in await tags(db) if "observer" in t]
    assert events == [("broker:observer:join", "security1"), ("broker:observer:leave", "security1")]


async def test_a_moderated_browser_session_waits_for_an_observer_who_can_end_it(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    vault: Vault,
    gateway: Gateway,
    open_door: Any,
) -> None:
    async with db() as s:
        await s.execute(update(Device).where(Device.id == pump.id).values(observer_required=True))
        await s.commit()
    term = await terminal(db, pump, open_door)
    assert term.of("ready")[0]["moderated"] is True
    assert term.of("input")[0]["allowed"] is False
    await term.send(type="input", data="touch /tmp/should-not-exist-$$; echo typed-$((3*3))\r")
    await term.until(lambda: "input paused" in term.notices(), "the pause notice")
    await asyncio.sleep(0.5)
    assert b"typed-9" not in term.output

    sid = term.of("ready")[0]["session_id"]
    bio = await staff(db, vault, "biomed1", ["biomed"])
    watcher = await open_door(await watch_ticket(db, bio, "biomed1", sid))
    await term.until(lambda: term.of("input")[-1]["allowed"] is True, "input allowed")
    await term.send(type="input", data="echo typed-$((3*3))\r")
    await watcher.until(lambda: b"typed-9" in watcher.output, "the observer sees the typing")

    await watcher.ws.close()
    await term.until(lambda: term.of("input")[-1]["allowed"] is False, "input paused again")

    second = await open_door(await watch_ticket(db, bio, "biomed1", sid))
    await second.until(lambda: second.of("ready"), "the observer is back")
    await second.send(type="end")
    await term.until(lambda: term.of("end"), "the end")
    assert term.of("end")[0]["reason"] == "observer-ended"
    assert "biomed1" in term.of("end")[0]["message"]
    assert (await ended(db, sid)).observer_required is True
    assert "broker:observer:end" in [t for t, _ in await tags(db)]


async def test_a_moderated_openssh_session_holds_the_command_until_an_observer_joins(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    vault: Vault,
    gateway: Gateway,
    open_door: Any,
    clock: Clock,
) -> None:
    async with db() as s:
        await s.execute(update(Device).where(Device.id == pump.id).values(observer_required=True))
        await s.commit()
    await grant(db, devices=["pump-12"])
    ssh = asyncio.ensure_future(vendor.ssh("pump-12", "echo ran-$((5*5))"))
    session = await live_session(db)
    await asyncio.sleep(0.5)
    assert not ssh.done()  # held: the command has not reached the device
    sec = await staff(db, vault, "security1", ["security"])
    watcher = await open_door(await watch_ticket(db, sec, "security1", session.id))
    result = await asyncio.wait_for(ssh, 20)
    assert result.stdout == b"ran-25\n"
    assert "nothing you type reaches the device until a staff observer" in result.stderr
    assert "security1 is watching" in result.stderr
    await watcher.until(lambda: watcher.of("end"), "the watcher sees the end")


async def test_a_gateway_shutdown_ends_browser_sessions_with_the_reason(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    vault: Vault,
    gateway: Gateway,
    open_door: Any,
) -> None:
    term = await terminal(db, pump, open_door)
    sid = term.of("ready")[0]["session_id"]
    sec = await staff(db, vault, "security1", ["security"])
    watcher = await open_door(await watch_ticket(db, sec, "security1", sid))
    await watcher.until(lambda: watcher.of("ready"), "watcher ready")

    await gateway.close()

    await term.until(lambda: term.closed, "the terminal closed")
    assert term.of("end")[0]["reason"] == "gateway-shutdown"
    assert "shutting down" in term.of("end")[0]["message"]
    await watcher.until(lambda: watcher.closed, "the watcher closed")
    assert watcher.of("end")[0]["reason"] == "gateway-shutdown"
    session = await ended(db, sid)
    assert session.end_reason == "gateway-shutdown"
