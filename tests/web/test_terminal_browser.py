"""The terminal page in headless Chromium, against a real WebSocket server on loopback that
speaks the browser door's protocol (the gateway's side is tested with the gateway): xterm.js
renders under the page's CSP, says hello with the ticket and its size, shows output,
notices and the moderation banner, sends what is typed, and shows the end and its reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from playwright.async_api import Browser, Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import tickets
from policy.vault import Vault
from tests.web.conftest import MakeStaff, MakeVendorUser, WebApp
from tests.web.test_review_browser import sign_in
from tests.web.test_terminal import add_grant, live_session
from tests.web.test_vendor_requests import add_inventory

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


@dataclass
class Door:
    """A WebSocket server at /door: records what the browser sends, lets the test reply."""

    url: str = ""
    origins: list[str] = field(default_factory=list)
    received: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    socket: web.WebSocketResponse | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.origins.append(request.headers.get("Origin", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.socket = ws
        hello = await ws.receive_json(timeout=10)
        await self.received.put(hello)
        await ws.send_json(
            {
                "type": "ready",
                "role": "vendor",
                "session_id": "0" * 32,
                "device": "pump-12",
                "ticket": "CHG0000777",
                "window_end": "2026-12-06T06:00:00+00:00",
                "moderated": True,
            }
        )
        output = "hello \u2713\r\n".encode()  # the check mark split across two frames
        await ws.send_bytes(output[:7])
        await ws.send_bytes(output[7:])
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await self.received.put(json.loads(message.data))
        self.closed.set()
        return ws

    async def send(self, message: dict[str, Any]) -> None:
        assert self.socket is not None
        await self.socket.send_json(message)

    async def typed(self, text: str) -> None:
        """Wait until the browser has sent ``text`` as input frames."""
        got = ""
        while got != text:
            message = await asyncio.wait_for(self.received.get(), 10)
            assert message["type"] == "input", message
            got += message["data"]
            assert text.startswith(got), got


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    fake = Door()
    app = web.Application()
    app.router.add_get("/door", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"ws://127.0.0.1:{port}/door"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def vendor_signs_in(page: Page, web_app: WebApp, password: str, secret: str) -> None:
    await page.goto(f"{web_app.url}/login")
    await page.get_by_label("Vendor").check()
    await page.get_by_label("Login").fill("eng1")
    await page.get_by_label("Password").fill(password)
    await page.get_by_label("Verification code").fill(web_app.code(secret))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{web_app.url}/")


async def test_the_terminal_page_runs_xterm_against_the_door(
    web_app: WebApp,
    db: Sessions,
    vault: Vault,
    make_vendor_user: MakeVendorUser,
    browser: Browser,
    door: Door,
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, browser_public_url=door.url)
    await add_inventory(web_app, db, vault)
    _user, password, secret = await make_vendor_user("eng1")
    await add_grant(db, "eng1", ["pump-12"], ticket="CHG0000777")

    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        await vendor_signs_in(page, web_app, password, secret)
        await page.goto(f"{web_app.url}/connect")
        await page.get_by_role("link", name="Open terminal on pump-12").click()
        await expect(page.locator("#stepup-ticket")).to_have_text("CHG0000777")
        await page.get_by_label("Verification code").fill(web_app.code(secret))
        await page.get_by_role("button", name="Open terminal").click()

        hello = await asyncio.wait_for(door.received.get(), 15)
        assert door.origins == [web_app.url]
        assert hello["type"] == "hello"
        assert isinstance(hello["cols"], int) and hello["cols"] > 80  # fitted to the page
        assert isinstance(hello["rows"], int) and hello["rows"] > 10
        async with db() as s:  # the ticket the browser presented is the one issued
            redeemed = await tickets.redeem(s, hello["ticket"], now=web_app.clock(), node="t")
        assert (redeemed.actor, redeemed.service) == ("eng1", "ssh")

        terminal = page.locator(".xterm")
        await expect(terminal).to_have_count(1)
        rows = page.locator(".xterm-rows")
        await expect(rows).to_contain_text("hello \u2713")
        await expect(page.locator("#door-status")).to_have_text("Connected to pump-12 (moderated)")

        await door.send({"type": "input", "allowed": False, "reason": "waiting for an observer"})
        banner = page.locator("#door-input")
        await expect(banner).to_have_text("Input paused: waiting for an observer")
        await door.send({"type": "notice", "text": "security1 is watching"})
        await expect(rows).to_contain_text("security1 is watching")
        await door.send({"type": "observers", "names": ["security1"]})
        await expect(page.locator("#door-observers")).to_have_text("Watching: security1")
        await door.send({"type": "input", "allowed": True, "reason": ""})
        await expect(banner).to_be_hidden()

        await page.locator(".xterm").click()
        await page.keyboard.type("status")
        await page.keyboard.press("Enter")
        await door.typed("status\r")
        await page.set_viewport_size({"width": 700, "height": 500})
        resized = await asyncio.wait_for(door.received.get(), 10)
        assert resized["type"] == "resize" and resized["cols"] < hello["cols"]

        await door.send(
            {"type": "end", "reason": "revoked", "message": "The grant was revoked by bea."}
        )
        said = "Session ended: The grant was revoked by bea. (revoked)"
        await expect(page.locator("#door-status")).to_have_text(said)
        await expect(rows).to_contain_text(said)
        assert problems == []
    finally:
        await context.close()
    await asyncio.wait_for(door.closed.wait(), 10)


async def test_the_watch_page_is_read_only_and_ends_the_session(
    web_app: WebApp,
    db: Sessions,
    vault: Vault,
    make_vendor_user: MakeVendorUser,
    make_staff: MakeStaff,
    browser: Browser,
    door: Door,
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, browser_public_url=door.url)
    await add_inventory(web_app, db, vault)
    await make_vendor_user("eng1")
    await add_grant(db, "eng1", ["pump-12"], ticket="CHG0000777")
    session_id = await live_session(db, moderated=True)
    _user, password, secret = await make_staff("sam", ["security"])

    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        await sign_in(page, web_app, "sam", password, secret)
        await page.goto(f"{web_app.url}/live")
        await page.get_by_role("link", name=f"Watch session {session_id}").click()
        hello = await asyncio.wait_for(door.received.get(), 15)
        assert hello["type"] == "hello"
        async with db() as s:
            redeemed = await tickets.redeem(s, hello["ticket"], now=web_app.clock(), node="t")
        assert (redeemed.purpose, redeemed.session_id) == ("watch", session_id)
        rows = page.locator(".xterm-rows")
        await expect(rows).to_contain_text("hello")

        await page.locator(".xterm").click()
        await page.keyboard.type("rm -rf /")  # read-only: nothing is sent
        await page.get_by_role("button", name="End session").click()
        assert await asyncio.wait_for(door.received.get(), 10) == {"type": "end"}
        assert door.received.empty()
        await door.send({"type": "end", "reason": "observer-ended", "message": "sam ended it."})
        said = "Session ended: sam ended it. (observer-ended)"
        await expect(page.locator("#door-status")).to_have_text(said)
        assert problems == []
    finally:
        await context.close()
    await asyncio.wait_for(door.closed.wait(), 10)
