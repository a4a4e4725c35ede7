"""The issue's "Show it", end to end in headless Chromium with real OpenSSH.

1. An admin invites a vendor engineer; the engineer registers, enrolls TOTP, adds an SSH
   key and requests access to a critical (high) device.
2. Biomed approves, and the request is still pending: the page says security is needed,
   and the gateway still refuses the engineer.
3. Security approves, and the engineer's OpenSSH session to the device works.
4. Biomed revokes the grant: the session that was running is closed, and a new
   connection is refused with the reason.

The portal and the gateway share one database and one clock, as two processes of one
deployment would. Screenshots of every step land in the test's tmp dir; the queue's is
also copied to docs/screenshots/queue.png for the README when SALLYPORT_SCREENSHOTS is set.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pyotp
from playwright.async_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy import admin, totp
from policy.models import CredentialKind, Criticality, Grant, Session
from policy.vault import Vault
from tests.conftest import Clock, VendorLogin
from tests.support.openssh import make_identity
from tests.support.sshd import SshdDevice
from tests.web.conftest import MakeStaff, WebApp

DEVICE = "infusion-pump-7"
TICKET = "CHG0004711"
VENDOR_PASSWORD = "a long vendor passphrase"
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


class Camera:
    """Full-page screenshots, numbered in the order taken."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    async def shoot(self, page: Page, name: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


async def open_page(browser: Browser, problems: list[str]) -> tuple[BrowserContext, Page]:
    """A fresh browser profile (another person); console errors (a CSP violation, a
    failed load) are collected."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return context, page


async def staff_sign_in(
    page: Page, web_app: WebApp, login: str, password: str, secret: str
) -> None:
    await page.goto(f"{web_app.url}/login")
    await page.get_by_label("Hospital staff").check()
    await page.get_by_label("Login").fill(login)
    await page.get_by_label("Password").fill(password)
    await page.get_by_label("Verification code").fill(web_app.code(secret))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{web_app.url}/")


async def add_critical_device(
    db: async_sessionmaker[AsyncSession], vault: Vault, sshd: SshdDevice
) -> None:
    """The inventory: the real sshd as a high-criticality infusion pump."""
    async with db() as s:
        await admin.add_segment(s, "icu")
        await admin.add_device(
            s,
            vault,
            name=DEVICE,
            segment="icu",
            address=sshd.host,
            services=[admin.ServiceSpec("ssh", sshd.port)],
            credential=admin.Credential(sshd.username, CredentialKind.PASSWORD, sshd.password),
            host_key=sshd.host_public_key,
            criticality=Criticality.HIGH,
            location="ICU bed 7",
            manufacturer="BD",
            model="Alaris 8015",
            firmware="12.1.2",
        )


async def admin_invites_vendor(page: Page, web_app: WebApp, camera: Camera) -> str:
    """The admin adds the organization, lets it service the pump, and makes an invite."""
    await page.goto(f"{web_app.url}/admin/vendors")
    await page.get_by_label("Name").fill("Infusia Medical")
    await page.get_by_role("button", name="Add organization").click()
    await page.wait_for_url(re.compile(r"/admin/vendors/\d+$"))
    await page.locator(f'input[name="device"][value="{DEVICE}"]').check()
    await page.get_by_role("button", name="Save devices").click()
    await page.wait_for_url(re.compile(r"/admin/vendors/\d+$"))
    await page.get_by_label("Email (optional)").fill("eve@infusia.test")
    await page.get_by_role("button", name="Create invite link").click()
    link = await page.locator("#invite-link").input_value()
    await camera.shoot(page, "admin-invite-link")
    assert link.startswith(f"{web_app.url}/invite/")
    return link


async def vendor_registers(
    page: Page, link: str, web_app: WebApp, clock: Clock, camera: Camera
) -> str:
    """Register and enroll TOTP from the invite link; returns the TOTP secret."""
    await page.goto(link)
    await expect(page.get_by_text("vendor engineer of Infusia Medical")).to_be_visible()
    await page.locator("#login").fill("eve")
    await page.locator("#display_name").fill("Eve Engineer")
    assert await page.locator("#email").input_value() == "eve@infusia.test"
    await page.locator("#password").fill(VENDOR_PASSWORD)
    await page.locator("#confirm").fill(VENDOR_PASSWORD)
    await camera.shoot(page, "vendor-register")
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{link}/enroll")
    secret = (await page.locator("code.secret").inner_text()).replace(" ", "")
    await expect(page.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    await camera.shoot(page, "vendor-enroll-totp")
    clock.offset += timedelta(seconds=totp.STEP_SECONDS)  # a step no code was used in
    await page.get_by_label("Verification code from the app").fill(pyotp.TOTP(secret).at(clock()))
    await page.get_by_role("button", name="Finish").click()
    await page.wait_for_url(f"{web_app.url}/")
    await expect(page.get_by_text("Your account is ready; you are signed in.")).to_be_visible()
    return secret


async def vendor_adds_key(page: Page, web_app: WebApp, public_key: str, camera: Camera) -> None:
    await page.goto(f"{web_app.url}/keys")
    await page.get_by_label("Public key").fill(public_key)
    await page.get_by_role("button", name="Add key").click()
    await expect(page.get_by_text(re.compile(r"Key SHA256:\S+ added\."))).to_be_visible()
    await camera.shoot(page, "vendor-ssh-key")


async def vendor_requests_access(page: Page, web_app: WebApp, clock: Clock, camera: Camera) -> int:
    """File a request for the pump from now for two hours; returns its id."""
    start = clock().replace(second=0, microsecond=0)
    await page.goto(f"{web_app.url}/requests/new")
    await page.locator("#ticket").fill(TICKET)
    await page.locator(f'input[name="device"][value="{DEVICE}"]').check()
    await page.locator('input[name="service"][value="ssh"]').check()
    await page.locator("#tz").select_option("UTC")
    await page.locator("#start").fill(f"{start:%Y-%m-%dT%H:%M}")
    await page.locator("#end").fill(f"{start + timedelta(hours=2):%Y-%m-%dT%H:%M}")
    await page.locator("#reason").fill("Replace the pump's drug library (vendor ticket 88123)")
    await camera.shoot(page, "vendor-new-request")
    await page.get_by_role("button", name="File request").click()
    await page.wait_for_url(re.compile(r"/requests/\d+$"))
    await camera.shoot(page, "vendor-request-filed")
    found = re.search(r"/requests/(\d+)$", page.url)
    assert found is not None
    return int(found.group(1))


async def approve_in_browser(
    page: Page, web_app: WebApp, request_id: int, camera: Camera, who: str
) -> str:
    """Open the queue, then the request, and approve it as the preselected role."""
    await page.goto(f"{web_app.url}/queue")
    row = page.get_by_role("row").filter(has_text=TICKET)
    await expect(row).to_contain_text(f"{DEVICE} high")
    if who == "biomed":
        await camera.shoot(page, "queue")
    await row.get_by_role("link", name=TICKET).click()
    await page.wait_for_url(f"{web_app.url}/requests/{request_id}/review")
    await expect(page.get_by_text("ICU bed 7")).to_be_visible()
    assert await page.get_by_label(who).is_checked()  # the approver's only role, preselected
    await camera.shoot(page, f"{who}-review")
    await page.get_by_role("button", name="Approve").click()
    await page.wait_for_url(f"{web_app.url}/requests/{request_id}/review")
    await camera.shoot(page, f"{who}-approved")
    return await page.locator("main").inner_text()


async def test_invite_request_two_approvals_connect_and_revoke(
    web_app: WebApp,
    browser: Browser,
    make_staff: MakeStaff,
    gateway: Gateway,
    sshd_device: SshdDevice,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    clock: Clock,
    tmp_path: Path,
) -> None:
    camera = Camera(tmp_path / "screenshots")
    problems: list[str] = []
    await add_critical_device(db, vault, sshd_device)
    people = {
        login: await make_staff(login, [role], display_name=name)
        for login, role, name in [
            ("ada", "admin", "Ada Admin"),
            ("bea", "biomed", "Bea Biomed"),
            ("sol", "security", "Sol Security"),
        ]
    }
    contexts: list[BrowserContext] = []

    async def person(login: str) -> Page:
        context, page = await open_page(browser, problems)
        contexts.append(context)
        _user, password, secret = people[login]
        await staff_sign_in(page, web_app, login, password, secret)
        return page

    try:
        # 1. invite, register, enroll, add a key, request access to a critical device
        link = await admin_invites_vendor(await person("ada"), web_app, camera)
        context, vendor_page = await open_page(browser, problems)
        contexts.append(context)
        secret = await vendor_registers(vendor_page, link, web_app, clock, camera)
        identity = make_identity(tmp_path, "eve")
        await vendor_adds_key(vendor_page, web_app, identity.public_key_line, camera)
        request_id = await vendor_requests_access(vendor_page, web_app, clock, camera)
        eve = VendorLogin("eve", secret, identity, tmp_path, gateway, clock)

        # 2. biomed approves: still pending, security needed, no access yet
        bea = await person("bea")
        text = await approve_in_browser(bea, web_app, request_id, camera, "biomed")
        assert "it still needs a security approval" in text
        assert f"Request {TICKET} pending" in text
        refused = await eve.ssh(DEVICE, "echo should-not-run")
        assert refused.returncode != 0 and b"should-not-run" not in refused.stdout
        assert f"you have no grant for device '{DEVICE}'" in refused.stderr

        # 3. security approves: the grant exists and OpenSSH reaches the device
        sol = await person("sol")
        text = await approve_in_browser(sol, web_app, request_id, camera, "security")
        assert re.search(rf"Grant \d+ created: {DEVICE} \(ssh\)", text)
        assert f"Request {TICKET} approved" in text
        result = await eve.ssh(DEVICE, "echo hello from the pump")
        assert result.returncode == 0, result.stderr
        assert b"hello from the pump" in result.stdout
        async with db() as s:
            [grant] = list(await s.scalars(select(Grant)))
        assert grant.approved_by == "biomed:bea,security:sol"

        # 4. biomed revokes: the running session is closed, a new one refused
        running = asyncio.ensure_future(eve.ssh(DEVICE, "echo started; sleep 60"))
        live = await wait_for_live_session(db, "sleep 60")
        await bea.goto(f"{web_app.url}/grants")
        row = bea.get_by_role("row").filter(has_text=TICKET)
        await expect(row).to_contain_text("biomed: bea, security: sol")
        await camera.shoot(bea, "grants")
        await row.get_by_label(f"Reason for revoking grant {grant.id}").fill("work finished early")
        await row.get_by_role("button", name="Revoke").click()
        await bea.wait_for_url(f"{web_app.url}/grants")
        await expect(bea.get_by_text(f"Grant {grant.id} ({TICKET}, eve) revoked")).to_be_visible()
        await camera.shoot(bea, "revoked")
        cut = await asyncio.wait_for(running, timeout=50)
        assert b"started" in cut.stdout
        assert await session_end_reason(db, live) == "revoked"
        refused = await eve.ssh(DEVICE, "echo should-not-run")
        assert refused.returncode != 0 and b"should-not-run" not in refused.stdout
        assert f"your grant for '{DEVICE}' was revoked" in refused.stderr

        # the vendor sees the outcome on their request's page
        await vendor_page.goto(f"{web_app.url}/requests/{request_id}")
        await camera.shoot(vendor_page, "vendor-request-after-revoke")
        assert problems == []
    finally:
        for context in contexts:
            await context.close()
    [queue_shot] = [p for p in camera.taken if p.name.endswith("-queue.png")]
    if os.environ.get("SALLYPORT_SCREENSHOTS"):  # refresh the README's picture on request
        shutil.copyfile(queue_shot, DOCS_SCREENSHOTS / "queue.png")
    assert all(p.stat().st_size > 0 for p in camera.taken)


async def wait_for_live_session(db: async_sessionmaker[AsyncSession], command: str) -> str:
    """The id of the running session of ``command`` (the gateway writes the row at start)."""
    for _ in range(300):
        async with db() as s:
            found = await s.scalar(
                select(Session.id).where(
                    Session.ended_at.is_(None), Session.command.contains(command)
                )
            )
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never started the session")


async def session_end_reason(db: async_sessionmaker[AsyncSession], session_id: str) -> str | None:
    """Why the session ended, once the gateway has recorded its end (just after the
    client sees the connection close)."""
    for _ in range(300):
        async with db() as s:
            row = await s.get(Session, session_id)
            assert row is not None
        if row.ended_at is not None:
            return row.end_reason
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway never recorded the end of session {session_id}")
