"""The browser door's pages (web/terminal.py): a vendor steps up with a fresh TOTP code and
gets a one-time ticket for the gateway; staff get watch tickets from the live list; every
refusal says why and is audited."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, tickets, totp
from policy.models import ConnectTicket, Device, DeviceService, Grant, WebSession
from policy.models import Session as SessionRow
from policy.tickets import TicketRefused
from policy.vault import Vault
from tests.web.conftest import AuditEvents, Login, MakeStaff, MakeVendorUser, WebApp, csrf_from
from tests.web.test_vendor_requests import add_inventory

Client = TestClient[Any, Any] | aiohttp.ClientSession
Sessions = async_sessionmaker[AsyncSession]
DOOR = "ws://127.0.0.1:8123/door"
_TICKET = re.compile(r'data-ticket="([^"]+)"')
_DOOR_URL = re.compile(r'data-door-url="([^"]+)"')


def ticket_in(page: str) -> str:
    found = _TICKET.search(page)
    assert found is not None, "the page carries no ticket"
    return html.unescape(found.group(1))


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def add_grant(db: Sessions, login: str, devices: list[str], **values: Any) -> int:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "services": ["ssh"],
        "ticket": "CHG0000777",
        "start": now - timedelta(minutes=1),
        "end": now + timedelta(hours=2),
        "approved_by": "biomed:bea",
        **values,
    }
    async with db() as s:
        return (await admin.add_grant(s, login=login, devices=devices, **fields)).id


async def redeem(db: Sessions, web_app: WebApp, token: str) -> tickets.Redeemed:
    async with db() as s:
        return await tickets.redeem(s, token, now=web_app.clock(), node="gw-test")


async def ticket_rows(db: Sessions) -> int:
    async with db() as s:
        return int(await s.scalar(select(func.count()).select_from(ConnectTicket)) or 0)


class Vendor:
    def __init__(self, client: Client, secret: str, web_app: WebApp) -> None:
        self.client, self.secret, self.web_app = client, secret, web_app

    async def step_up(self, device: str, code: str | None = None) -> aiohttp.ClientResponse:
        form = await self.client.get(f"/connect/{device}/terminal")
        token = csrf_from(await form.text())
        code = code if code is not None else self.web_app.code(self.secret)
        return await self.client.post(
            f"/connect/{device}/terminal", data={"_csrf": token, "code": code}
        )


@pytest.fixture
async def eng(
    web_app: WebApp,
    client: TestClient[Any, Any],
    db: Sessions,
    vault: Vault,
    make_vendor_user: MakeVendorUser,
    login: Login,
) -> Vendor:
    """eng1 of Infusia Medical, signed in, with a live ssh+https grant on pump-12; Scanco's
    eng2 has a grant on ct-3. The door is at ws://127.0.0.1:8123/door."""
    web_app.ctx.settings = replace(web_app.ctx.settings, browser_public_url=DOOR)
    await add_inventory(web_app, db, vault)
    _user, password, secret = await make_vendor_user("eng1")
    await make_vendor_user("eng2", vendor="Scanco")
    await add_grant(db, "eng1", ["pump-12"], services=["ssh", "https"], ticket="CHG0000777")
    await add_grant(db, "eng2", ["ct-3"], ticket="CHG0000888")
    await login(client, "eng1", password, secret, kind="vendor")
    return Vendor(client, secret, web_app)


async def test_the_connect_page_links_a_terminal_per_granted_ssh_device(
    eng: Vendor, db: Sessions
) -> None:
    await add_grant(db, "eng1", ["pump-13"], services=["ssh"], ticket="CHG0000779")
    page = await (await eng.client.get("/connect")).text()
    links = re.findall(r'<a class="terminal" href="([^"]+)"', page)
    assert links == ["/connect/pump-12/terminal", "/connect/pump-13/terminal"]
    assert ">Open terminal</a>" in page


async def test_a_device_whose_ssh_service_is_gone_has_no_terminal(
    eng: Vendor, db: Sessions, audit_events: AuditEvents
) -> None:
    await add_grant(db, "eng1", ["pump-13"], services=["ssh"], ticket="CHG0000779")
    async with db() as s:  # the service was removed after the grant
        device = await s.scalar(select(Device).where(Device.name == "pump-13"))
        assert device is not None
        await s.execute(delete(DeviceService).where(DeviceService.device_id == device.id))
        await s.commit()
    page = await (await eng.client.get("/connect")).text()
    assert re.findall(r'<a class="terminal" href="([^"]+)"', page) == ["/connect/pump-12/terminal"]
    resp = await eng.client.get("/connect/pump-13/terminal")
    assert resp.status == 409
    assert "pump-13 has no ssh service to open a terminal on." in await resp.text()
    [(_tag, _actor, detail)] = await audit_events("web:ticket:deny")
    assert detail["reason"] == "no-ssh-service"


async def test_the_step_up_form_says_what_is_about_to_open(eng: Vendor, db: Sessions) -> None:
    resp = await eng.client.get("/connect/pump-12/terminal")
    assert resp.status == 200
    page = await resp.text()
    async with db() as s:
        grant = await s.scalar(select(Grant).where(Grant.ticket_ref == "CHG0000777"))
    assert grant is not None
    assert '<dd id="stepup-device">pump-12</dd>' in page
    assert '<dd id="stepup-ticket">CHG0000777</dd>' in page
    assert f'<dd id="stepup-window">{grant.window_end:%Y-%m-%d %H:%M} UTC</dd>' in page
    assert 'name="code"' in page and "Open terminal" in page
    assert "data-ticket" not in page  # no ticket before the step-up
    assert await ticket_rows(db) == 0


async def test_a_good_code_gives_a_ticket_the_gateway_accepts_once(
    eng: Vendor, web_app: WebApp, db: Sessions, audit_events: AuditEvents
) -> None:
    resp = await eng.step_up("pump-12")
    assert resp.status == 200
    page = await resp.text()
    token = ticket_in(page)
    door = _DOOR_URL.search(page)
    assert door is not None and door.group(1) == DOOR
    assert '<script src="/static/terminal.js" defer></script>' in page
    assert "<script>" not in page  # no inline script
    csp = resp.headers["Content-Security-Policy"]
    assert "connect-src 'self' ws://127.0.0.1:8123" in csp
    assert "script-src 'self';" in csp and "unsafe-eval" not in csp

    redeemed = await redeem(db, web_app, token)
    async with db() as s:
        grant = await s.scalar(select(Grant).where(Grant.ticket_ref == "CHG0000777"))
        device = await s.scalar(select(Device).where(Device.name == "pump-12"))
        portal = await s.get(WebSession, redeemed.web_session_id)
    assert grant is not None and device is not None and portal is not None
    assert (redeemed.purpose, redeemed.actor, redeemed.service) == ("connect", "eng1", "ssh")
    assert (redeemed.grant_id, redeemed.device_id) == (grant.id, device.id)
    assert portal.data["login"] == "eng1"  # bound to this browser's portal session
    with pytest.raises(TicketRefused) as again:
        await redeem(db, web_app, token)
    assert again.value.code == "ticket-used"

    [(tag, actor, detail)] = await audit_events("web:ticket:")
    assert (tag, actor) == ("web:ticket:issue", "vendor:eng1")
    assert detail["purpose"] == "connect" and detail["ticket_ref"] == "CHG0000777"
    assert token not in repr(await audit_events())


async def test_a_wrong_code_is_refused_with_the_reason_and_audited(
    eng: Vendor, db: Sessions, audit_events: AuditEvents
) -> None:
    resp = await eng.step_up("pump-12", wrong(eng.web_app.code(eng.secret)))
    assert resp.status == 401
    page = await resp.text()
    assert "The login, password or verification code is not correct." in page
    assert "data-ticket" not in page
    assert await ticket_rows(db) == 0
    [(tag, actor, detail)] = await audit_events("web:stepup:")
    assert (tag, actor, detail["reason"]) == ("web:stepup:fail", "vendor:eng1", "wrong-code")


async def test_a_replayed_code_is_refused(
    eng: Vendor, db: Sessions, audit_events: AuditEvents
) -> None:
    code = eng.web_app.code(eng.secret)
    assert (await eng.step_up("pump-12", code)).status == 200
    again = await eng.step_up("pump-12", code)
    assert again.status == 401
    assert "That code was already used." in await again.text()
    assert await ticket_rows(db) == 1
    [(_tag, _actor, detail)] = await audit_events("web:stepup:")
    assert detail["reason"] == "code-replayed"


async def test_the_login_code_does_not_open_a_terminal(
    web_app: WebApp,
    db: Sessions,
    vault: Vault,
    make_vendor_user: MakeVendorUser,
) -> None:
    """The code typed at sign-in cannot be typed again to step up."""
    await add_inventory(web_app, db, vault)
    _user, password, secret = await make_vendor_user("eng1")
    await add_grant(db, "eng1", ["pump-12"])
    browser = web_app.browser()
    page = await browser.get("/login")
    code = web_app.code(secret)
    form = {"_csrf": csrf_from(await page.text()), "kind": "vendor", "login": "eng1"}
    await browser.post("/login", data={**form, "password": password, "code": code})
    step_up = Vendor(browser, secret, web_app)
    assert (await step_up.step_up("pump-12", code)).status == 401
    assert await ticket_rows(db) == 0


async def test_the_code_is_checked_for_the_right_user(eng: Vendor, web_app: WebApp) -> None:
    """Another person's current code is a wrong code here."""
    other = totp.code_at(totp.new_secret(), web_app.clock())
    assert (await eng.step_up("pump-12", other)).status == 401


@pytest.mark.parametrize(
    ("device", "status", "message", "reason"),
    [
        ("ct-3", 403, "You have no grant for ct-3.", "no-grant"),  # Scanco's device
        ("mri-9", 403, "You have no grant for mri-9.", "no-grant"),  # no such device
    ],
)
async def test_devices_without_a_grant_are_refused(
    eng: Vendor,
    db: Sessions,
    audit_events: AuditEvents,
    device: str,
    status: int,
    message: str,
    reason: str,
) -> None:
    shown = await eng.client.get(f"/connect/{device}/terminal")
    assert shown.status == status
    assert message in await shown.text()
    # posting a good code does not help
    posted = await eng.client.post(
        f"/connect/{device}/terminal",
        data={"_csrf": csrf_from(await (await eng.client.get("/connect")).text()), "code": "1"},
    )
    assert posted.status == status and message in await posted.text()
    assert await ticket_rows(db) == 0
    denials = await audit_events("web:ticket:deny")
    assert [(d["reason"], d["purpose"]) for _t, _a, d in denials] == [(reason, "connect")] * 2


async def test_a_grant_not_open_now_or_without_ssh_is_refused(
    eng: Vendor, db: Sessions, audit_events: AuditEvents
) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    await add_grant(db, "eng1", ["pump-13"], start=later, end=later + timedelta(hours=1))
    resp = await eng.client.get("/connect/pump-13/terminal")
    assert resp.status == 403
    assert f"window starts {later:%Y-%m-%d %H:%M} UTC" in await resp.text()
    await add_grant(db, "eng1", ["ct-3"], services=["dicom"])
    resp = await eng.client.get("/connect/ct-3/terminal")
    assert resp.status == 403
    assert "Your grant for ct-3 does not include ssh." in await resp.text()
    reasons = [d["reason"] for _t, _a, d in await audit_events("web:ticket:deny")]
    assert reasons == ["window-not-started", "service-not-granted"]


async def test_staff_cannot_open_a_vendor_terminal(
    web_app: WebApp, db: Sessions, vault: Vault, make_staff: MakeStaff, login: Login
) -> None:
    await add_inventory(web_app, db, vault)
    _user, password, secret = await make_staff("sam", ["security", "admin", "biomed"])
    browser = web_app.browser()
    await login(browser, "sam", password, secret)
    resp = await browser.get("/connect/pump-12/terminal")
    assert resp.status == 403
    assert "this needs the vendor role" in await resp.text()


async def test_signing_out_ends_the_ticket(eng: Vendor, web_app: WebApp, db: Sessions) -> None:
    token = ticket_in(await (await eng.step_up("pump-12")).text())
    home = await eng.client.get("/")
    await eng.client.post("/logout", data={"_csrf": csrf_from(await home.text())})
    with pytest.raises(TicketRefused) as refused:
        await redeem(db, web_app, token)
    assert refused.value.code == "portal-session-ended"


# --- watching ------------------------------------------------------------------------------


async def live_session(db: Sessions, moderated: bool = False, ended: bool = False) -> str:
    async with db() as s:
        grant = await s.scalar(select(Grant).where(Grant.ticket_ref == "CHG0000777"))
        device = await s.scalar(select(Device).where(Device.name == "pump-12"))
        assert grant is not None and device is not None
        row = SessionRow(
            vendor_user_id=grant.vendor_user_id,
            device_id=device.id,
            grant_id=grant.id,
            ticket_ref=grant.ticket_ref,
            kind="shell",
            gateway_node="gw-a",
            device_snapshot={"name": "pump-12"},
            observer_required=moderated,
            ended_at=datetime.now(UTC) if ended else None,
            end_reason="exit" if ended else None,
        )
        s.add(row)
        await s.commit()
        return row.id


@pytest.fixture
async def staff(
    eng: Vendor, web_app: WebApp, make_staff: MakeStaff, login: Login
) -> dict[str, aiohttp.ClientSession]:
    """Signed-in staff: sam (security) and bea (biomed)."""
    people = {}
    for name, role in (("sam", "security"), ("bea", "biomed")):
        _user, password, secret = await make_staff(name, [role])
        browser = web_app.browser()
        await login(browser, name, password, secret)
        people[name] = browser
    return people


async def test_the_live_list_has_watch_links_and_says_moderated(
    staff: dict[str, aiohttp.ClientSession], db: Sessions
) -> None:
    plain = await live_session(db)
    moderated = await live_session(db, moderated=True)
    sam = await (await staff["sam"].get("/live")).text()
    assert f'href="/live/{plain}/watch"' in sam and f'href="/live/{moderated}/watch"' in sam
    rows = sam.split("<tr>")
    [plain_row] = [r for r in rows if plain in r]
    [moderated_row] = [r for r in rows if moderated in r]
    assert "moderated" in moderated_row and "moderated" not in plain_row
    assert "Kill</button>" in sam
    # biomed watches from the same list, but kills and session pages are security's
    bea = await staff["bea"].get("/live")
    assert bea.status == 200
    bea_page = await bea.text()
    assert f'href="/live/{moderated}/watch"' in bea_page
    assert "Kill</button>" not in bea_page and f'href="/sessions/{plain}"' not in bea_page


@pytest.mark.parametrize("who", ["sam", "bea"])
async def test_staff_get_a_watch_ticket_for_a_live_session(
    staff: dict[str, aiohttp.ClientSession],
    web_app: WebApp,
    db: Sessions,
    audit_events: AuditEvents,
    who: str,
) -> None:
    session_id = await live_session(db, moderated=True)
    resp = await staff[who].get(f"/live/{session_id}/watch")
    assert resp.status == 200
    page = await resp.text()
    assert 'data-mode="observer"' in page and "End session</button>" in page
    assert "moderated" in page
    assert "connect-src 'self' ws://127.0.0.1:8123" in resp.headers["Content-Security-Policy"]
    redeemed = await redeem(db, web_app, ticket_in(page))
    assert (redeemed.purpose, redeemed.actor, redeemed.session_id) == ("watch", who, session_id)
    assert redeemed.vendor_user_id is None and redeemed.staff_user_id is not None
    [(tag, actor, detail)] = await audit_events("web:ticket:")
    assert (tag, actor, detail["purpose"]) == ("web:ticket:issue", f"staff:{who}", "watch")


async def test_ended_and_unknown_sessions_cannot_be_watched(
    staff: dict[str, aiohttp.ClientSession], db: Sessions, audit_events: AuditEvents
) -> None:
    ended = await live_session(db, ended=True)
    resp = await staff["sam"].get(f"/live/{ended}/watch")
    assert resp.status == 409
    assert f"Session {ended} has ended (exit)" in await resp.text()
    unknown = await staff["sam"].get("/live/0123456789abcdef0123456789abcdef/watch")
    assert unknown.status == 404
    assert "There is no session 0123456789abcdef0123456789abcdef." in await unknown.text()
    assert await ticket_rows(db) == 0
    reasons = [d["reason"] for _t, _a, d in await audit_events("web:ticket:deny")]
    assert reasons == ["session-ended", "session-unknown"]


async def test_vendors_cannot_watch(eng: Vendor, db: Sessions) -> None:
    session_id = await live_session(db)
    resp = await eng.client.get(f"/live/{session_id}/watch")
    assert resp.status == 403
    assert await ticket_rows(db) == 0
    assert (await eng.client.get("/live")).status == 403


async def test_admins_without_an_observer_role_cannot_watch(
    eng: Vendor, web_app: WebApp, db: Sessions, make_staff: MakeStaff, login: Login
) -> None:
    session_id = await live_session(db)
    _user, password, secret = await make_staff("ada", ["admin"])
    ada = web_app.browser()
    await login(ada, "ada", password, secret)
    live = await ada.get("/live")
    assert live.status == 200
    page = await live.text()
    assert session_id in page and f"/live/{session_id}/watch" not in page
    refused = await ada.get(f"/live/{session_id}/watch")
    assert refused.status == 403
    assert "this needs the biomed or security role" in await refused.text()
    assert await ticket_rows(db) == 0
