"""The browser terminal and moderated sessions, end to end in headless Chromium.

The portal (web_app), the gateway with its browser door, and the demo's simulated pump
(``broker.fakedevice``, a real SSH server with a device console) run on loopback and
share one database and one clock, as the processes of one deployment do. Nothing is
mocked: the pages load xterm.js from the pinned npm package, talk to the gateway's
WebSocket, and the gateway logs in to the device with the vaulted credential.

1. A vendor signs in, steps up with a fresh TOTP code, opens the terminal on the pump,
   types ``status`` and sees the pump's answer; security replays that session on its
   page; a revocation ends the terminal on screen with the reason.
2. Two browsers, a moderated device: the vendor's keystrokes do nothing until biomed
   joins from /live; biomed sees the vendor's typing live; biomed leaves and input
   pauses; the audit log has the join and the leave.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.fakedevice import FakeDeviceInfo, host_public_key_line, start_fake_device
from broker.gateway import Gateway
from policy import admin
from policy.models import (
    CredentialKind,
    Criticality,
    Device,
    Grant,
    Recording,
    Session,
    utcnow,
)
from policy.vault import Vault
from recorder.readers import parse
from tests.conftest import Clock, grant
from tests.web.conftest import AuditEvents, MakeStaff, MakeVendorUser, WebApp

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
PUMP = FakeDeviceInfo(name="pump-12", model="Infusia IP-7", firmware="4.2.1", serial="IP7-0042")
DEVICE_USER, DEVICE_PASSWORD = "service", "pump-service-password"


@pytest.fixture
async def demo_pump(
    db: Sessions, vault: Vault, tmp_path: Path, gateway: Gateway, web_app: WebApp
) -> AsyncIterator[Device]:
    """The simulated pump on loopback, in the inventory; portal and door know each other."""
    key = tmp_path / "pump-host-key"
    acceptor = await start_fake_device(PUMP, "127.0.0.1", 0, key, DEVICE_USER, DEVICE_PASSWORD)
    port = acceptor.get_port()
    async with db() as s:
        await admin.add_segment(s, "icu")
        device = await admin.add_device(
            s,
            vault,
            name="pump-12",
            segment="icu",
            address="127.0.0.1",
            services=[admin.ServiceSpec("ssh", port)],
            credential=admin.Credential(DEVICE_USER, CredentialKind.PASSWORD, DEVICE_PASSWORD),
            host_key=host_public_key_line(key),
            criticality=Criticality.MEDIUM,
        )
    door = f"ws://127.0.0.1:{gateway.browser_port}/door"
    web_app.ctx.settings = replace(web_app.ctx.settings, browser_public_url=door)
    gateway.ctx.settings = replace(gateway.ctx.settings, web_public_url=web_app.url)
    yield device
    acceptor.close()
    await acceptor.wait_closed()


async def person(browser: Browser, problems: list[str]) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 800})
    page = await context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return context, page


async def sign_in(
    page: Page, web_app: WebApp, login: str, password: str, secret: str, kind: str
) -> None:
    await page.goto(f"{web_app.url}/login")
    await page.get_by_label(kind).check()
    await page.get_by_label("Login").fill(login)
    await page.get_by_label("Password").fill(password)
    await page.get_by_label("Verification code").fill(web_app.code(secret))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{web_app.url}/")


async def open_terminal(page: Page, web_app: WebApp, secret: str) -> None:
    """From the connect page: Open terminal, the step-up code, the terminal."""
    await page.goto(f"{web_app.url}/connect")
    await page.get_by_role("link", name="Open terminal").first.click()
    await page.wait_for_url(f"{web_app.url}/connect/pump-12/terminal")
    await page.get_by_label("Verification code").fill(web_app.code(secret))
    await page.get_by_role("button", name="Open terminal").click()
    await expect(page.locator("#terminal .xterm-rows")).to_be_visible()


async def type_line(page: Page, text: str) -> None:
    await page.locator("#terminal").click()
    await page.keyboard.type(text)
    await page.keyboard.press("Enter")


async def live_session(db: Sessions) -> Session:
    async with db() as s:
        row = await s.scalar(select(Session).where(Session.ended_at.is_(None)))
    assert row is not None
    return row


async def test_vendor_opens_the_pump_terminal_types_status_and_revocation_ends_it(
    web_app: WebApp,
    browser: Browser,
    demo_pump: Device,
    make_vendor_user: MakeVendorUser,
    make_staff: MakeStaff,
    db: Sessions,
    clock: Clock,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    _user, password, secret = await make_vendor_user("vendor1")
    grant_id = await grant(db, devices=["pump-12"])
    problems: list[str] = []
    context, page = await person(browser, problems)
    try:
        await sign_in(page, web_app, "vendor1", password, secret, "Vendor")
        await open_terminal(page, web_app, secret)
        screen = page.locator("#terminal .xterm-rows")
        await expect(screen).to_contain_text("pump-12", timeout=15000)  # the console prompt
        await expect(screen).to_contain_text("recorded")  # the session notice
        await type_line(page, "status")
        await expect(screen).to_contain_text("Infusia IP-7")
        await expect(screen).to_contain_text("channel A: RUNNING")
        await page.screenshot(path=str(tmp_path / "terminal.png"))

        session = await live_session(db)
        assert session.kind == "shell" and session.client_address.endswith("(browser)")

        # a long paste reaches the gateway whole (the page splits it into messages under
        # the frame limit; the pump's console itself keeps 1,024 characters of a line)
        pasted = "echo " + "pasted" * 2000 + "-end"
        await page.keyboard.insert_text(pasted)
        await page.keyboard.press("Enter")
        await expect(screen).to_contain_text("pump-12> ", timeout=10000)
        await expect(page.locator("#door-status")).not_to_contain_text("ended")
        async with db() as s:
            key = await s.scalar(select(Recording.storage_key))
        assert key is not None
        path = gateway.ctx.storage.path(key)  # type: ignore[attr-defined]
        for _ in range(100):
            if pasted.encode() in parse(path.read_bytes()).input():
                break
            await asyncio.sleep(0.05)
        assert pasted.encode() + b"\r" in parse(path.read_bytes()).input()

        # security replays it while it runs (the recording is written through)
        _sec, sec_password, sec_secret = await make_staff("security1", ["security"])
        staff_context, staff_page = await person(browser, problems)
        await sign_in(staff_page, web_app, "security1", sec_password, sec_secret, "Hospital staff")
        await staff_page.goto(f"{web_app.url}/sessions/{session.id}")
        start = staff_page.locator("div.cast .ap-overlay-start")
        await expect(start).to_be_visible(timeout=15000)
        await start.click()
        await expect(staff_page.locator("div.cast .ap-term")).to_contain_text(
            "Infusia IP-7", timeout=15000
        )
        await staff_context.close()

        # biomed revokes the grant; the terminal ends on screen with the reason
        async with db() as s:
            await s.execute(
                update(Grant)
                .where(Grant.id == grant_id)
                .values(revoked_at=utcnow(), revoked_by="biomed1", revoke_reason="done")
            )
            await s.commit()
        revoked = time.monotonic()
        gateway.ctx.supervisor.nudge()  # as the portal's revocation does, via the database
        status = page.locator("#door-status")
        await expect(status).to_contain_text("revoked", timeout=5000)
        print(f"revocation to the page saying so: {(time.monotonic() - revoked) * 1000:.0f} ms")
        await expect(screen).to_contain_text("revoked")
        await page.screenshot(path=str(tmp_path / "terminal-revoked.png"))
        async with db() as s:
            ended = await s.get(Session, session.id)
        assert ended is not None and ended.end_reason == "revoked"
        assert problems == []
    finally:
        await context.close()


async def test_a_moderated_session_waits_for_biomed_who_watches_live_from_the_live_list(
    web_app: WebApp,
    browser: Browser,
    demo_pump: Device,
    make_vendor_user: MakeVendorUser,
    make_staff: MakeStaff,
    db: Sessions,
    audit_events: AuditEvents,
    tmp_path: Path,
) -> None:
    async with db() as s:
        await s.execute(
            update(Device).where(Device.id == demo_pump.id).values(observer_required=True)
        )
        await s.commit()
    _user, password, secret = await make_vendor_user("vendor1")
    await grant(db, devices=["pump-12"])
    _bio, bio_password, bio_secret = await make_staff("biomed1", ["biomed"])
    problems: list[str] = []
    vendor_context, vendor = await person(browser, problems)
    biomed_context, biomed = await person(browser, problems)
    try:
        await sign_in(vendor, web_app, "vendor1", password, secret, "Vendor")
        await open_terminal(vendor, web_app, secret)
        screen = vendor.locator("#terminal .xterm-rows")
        await expect(screen).to_contain_text("pump-12", timeout=15000)
        await expect(vendor.locator("#door-input")).to_contain_text("observer")
        await type_line(vendor, "version")
        await expect(screen).to_contain_text("input paused")
        await expect(screen).not_to_contain_text("firmware 4.2.1")  # it never reached the pump

        await sign_in(biomed, web_app, "biomed1", bio_password, bio_secret, "Hospital staff")
        await biomed.goto(f"{web_app.url}/live")
        row = biomed.get_by_role("row").filter(has_text="pump-12")
        await expect(row).to_contain_text("moderated")
        await row.get_by_role("link", name="Watch").click()
        watched = biomed.locator("#terminal .xterm-rows")
        await expect(watched).to_contain_text("pump-12", timeout=15000)  # the backlog
        await expect(screen).to_contain_text("biomed1 is watching")
        await expect(vendor.locator("#door-input")).to_be_hidden()

        await type_line(vendor, "status")
        await expect(screen).to_contain_text("Infusia IP-7")
        await expect(watched).to_contain_text("Infusia IP-7")  # biomed sees it live
        await biomed.screenshot(path=str(tmp_path / "watch.png"))

        await biomed_context.close()  # biomed leaves: input pauses again
        await expect(screen).to_contain_text("biomed1 stopped watching")
        await expect(vendor.locator("#door-input")).to_be_visible()
        await type_line(vendor, "alarms")
        await expect(screen).not_to_contain_text("W112")

        events = [(t, d.get("observer")) for t, _a, d in await audit_events("broker:observer:")]
        assert events == [
            ("broker:observer:join", "biomed1"),
            ("broker:observer:leave", "biomed1"),
        ]
        assert [p for p in problems if not re.search(r"WebSocket", p)] == []
    finally:
        await vendor_context.close()
