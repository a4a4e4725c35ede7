"""The issue's "Show it", in headless Chromium: a vendor types a command in a real terminal
session through the gateway; a security user finds the session by that command, replays
it (the player shows the text on screen), downloads the evidence bundle, and the bundle
verifies offline."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy.keyfiles import load_signing_key
from policy.models import AuditEvent, Device
from recorder.bundle import verify_bundle
from tests.broker.test_gateway import only_session, pty_ssh, wait_exit
from tests.conftest import VendorLogin, grant
from tests.web.conftest import MakeStaff, WebApp

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "session-review.png"
COMMAND = "echo sallyport-evidence-$((6*7))"
OUTPUT = "sallyport-evidence-42"


async def session_over(db: Sessions) -> None:
    """Wait until the gateway has sealed the recording and audited the session's end."""
    await only_session(db)
    for _ in range(100):
        async with db() as s:
            if await s.scalar(select(AuditEvent.id).where(AuditEvent.tag == "broker:session:end")):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the end of the session was not audited")


async def sign_in(page: Page, web_app: WebApp, login: str, password: str, secret: str) -> None:
    await page.goto(f"{web_app.url}/login")
    await page.get_by_label("Hospital staff").check()
    await page.get_by_label("Login").fill(login)
    await page.get_by_label("Password").fill(password)
    await page.get_by_label("Verification code").fill(web_app.code(secret))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{web_app.url}/")


async def test_security_finds_replays_and_exports_a_session_in_a_browser(
    vendor: VendorLogin,
    pump: Device,
    gateway: Gateway,
    db: Sessions,
    web_app: WebApp,
    browser: Browser,
    make_staff: MakeStaff,
    tmp_path: Path,
) -> None:
    await grant(db, devices=["pump-12"])
    with pty_ssh(vendor, gateway, tmp_path / "pty") as term:
        await term.wait_for_async("Last login")
        term.sendline(COMMAND)
        await term.wait_for_async(OUTPUT)
        term.sendline("exit 0")
        assert await wait_exit(term) == 0
    await session_over(db)
    session, _recording = await only_session(db)

    _user, password, secret = await make_staff("sam", ["security"], display_name="Sam Security")
    context = await browser.new_context(
        accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        await sign_in(page, web_app, "sam", password, secret)

        # find the session by the command the vendor typed
        await page.goto(f"{web_app.url}/search")
        await page.get_by_label("Commands typed, output seen, or files moved").fill(COMMAND)
        await page.get_by_role("button", name="Search").click()
        await expect(page.get_by_text("Searched 1 of 1 sessions.")).to_be_visible()
        await page.get_by_role("link", name=COMMAND).click()
        await page.wait_for_url(f"{web_app.url}/sessions/{session.id}?*")

        # the player shows the moment the command was entered, and what it printed
        terminal = page.locator("div.cast .ap-term")
        await expect(terminal).to_contain_text(COMMAND, timeout=15000)
        await expect(terminal).to_contain_text(OUTPUT)
        await expect(page.get_by_role("cell", name=COMMAND, exact=True)).to_be_visible()
        shot = SCREENSHOT if os.environ.get("SALLYPORT_SCREENSHOTS") else tmp_path / SCREENSHOT.name
        await page.screenshot(path=str(shot), full_page=True)

        # opened plainly, the page replays the session from its start on Play
        plain = f"{web_app.url}/sessions/{session.id}"
        await page.goto(plain)
        await expect(page.locator("div.cast .ap-overlay-start")).to_be_visible(timeout=15000)
        await expect(terminal).not_to_contain_text(OUTPUT)
        await page.locator("div.cast .ap-overlay-start").click()
        await expect(terminal).to_contain_text(COMMAND, timeout=15000)
        await expect(terminal).to_contain_text(OUTPUT, timeout=15000)

        # a command's time moves the player there, without leaving the page
        await page.goto(plain)
        await expect(page.locator("div.cast .ap-overlay-start")).to_be_visible(timeout=15000)
        await expect(terminal).not_to_contain_text(COMMAND)
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=COMMAND))
        await row.get_by_role("link").click()
        await expect(terminal).to_contain_text(COMMAND, timeout=15000)
        assert page.url == plain

        # the bundle, from the button, verifies offline against the audit key
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Download evidence bundle").click()
        download = await download_info.value
        assert download.suggested_filename == f"sallyport-session-{session.id}.zip"
        bundle = tmp_path / download.suggested_filename
        await download.save_as(bundle)
        key = load_signing_key(web_app.ctx.settings.audit_key_path).public_key()
        result = verify_bundle(bundle, key)
        assert result.ok, result.first_bad
        assert problems == []
    finally:
        await context.close()
