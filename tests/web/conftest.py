"""Web fixtures: the portal on a real loopback port, users who can sign in, a browser.

For page tests::

    async def test_queue(web_app, client, make_staff, login):
        _user, password, secret = await make_staff("bea", ["biomed"])
        await login(client, "bea", password, secret)
        resp = await client.get("/queue")
        token = csrf_from(await resp.text())          # the form's _csrf value
        resp = await client.post("/queue/1/approve", data={"_csrf": token, ...})

* ``web_app``: the whole app (``create_app(WebContext)``) on 127.0.0.1 with the shared
  database fixtures; ``.url``, ``.ctx`` (its ``WebContext``; ``ctx.clock`` is the tests'
  ``Clock``), ``.code(secret)`` (a TOTP code for a fresh step: it moves the clock on 30 s)
  and ``.browser()`` (another cookie jar, i.e. another person).
* ``client``: aiohttp's ``TestClient`` for ``web_app`` (cookies over plain HTTP work:
  ``web_cookie_secure`` is off in these tests). Redirects are followed unless
  ``allow_redirects=False``.
* ``make_staff(login, roles)`` -> ``(StaffUser, password, totp_secret)``;
  ``make_vendor_user(login, vendor="Infusia Medical", keys=())`` -> the same for vendors
  (the organization is created when missing).
* ``login(client, login, password, secret, kind="staff")`` signs in through the form and
  returns the final response (the start page).
* ``audit_events(tag_prefix="")`` -> ``[(tag, actor, detail)]`` in chain order.
* ``browser``: headless Chromium (Playwright) for end-to-end page tests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, async_playwright
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, totp
from policy.config import Settings
from policy.models import AuditEvent, StaffUser, Vendor, VendorUser
from policy.vault import Vault
from recorder.audit import AuditLog
from tests.conftest import Clock
from web.app import create_app
from web.context import WebContext

PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
_CSRF = re.compile(r'name="_csrf" value="([^"]+)"')


def csrf_from(html: str) -> str:
    """The ``_csrf`` value of the first form in ``html``."""
    found = _CSRF.search(html)
    if found is None:
        raise AssertionError("the page has no form with a _csrf field")
    return found.group(1)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, with cookies allowed over plain HTTP (the tests' loopback)."""
    return replace(settings, web_cookie_secure=False)


@dataclass
class WebApp:
    ctx: WebContext
    server: TestServer
    clock: Clock
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def code(self, secret: str) -> str:
        """A TOTP code for a step later than any used so far (a code is good once)."""
        self.clock.offset += timedelta(seconds=totp.STEP_SECONDS)
        return totp.code_at(secret, self.clock())

    def browser(self) -> aiohttp.ClientSession:
        """Another browser: its own cookie jar, closed with the fixture."""
        session = aiohttp.ClientSession(
            base_url=self.url, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        self._sessions.append(session)
        return session


@pytest.fixture
async def web_app(
    settings: Settings,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    clock: Clock,
) -> AsyncIterator[WebApp]:
    ctx = WebContext(
        sessions=db,
        settings=settings,
        vault=vault,
        audit=AuditLog.from_settings(db, settings),
        clock=clock,
    )
    server = TestServer(create_app(ctx), host="127.0.0.1")
    await server.start_server()
    app = WebApp(ctx, server, clock)
    try:
        yield app
    finally:
        for session in app._sessions:
            await session.close()
        await server.close()


@pytest.fixture
async def client(web_app: WebApp) -> AsyncIterator[TestClient[Any, Any]]:
    test_client: TestClient[Any, Any] = TestClient(web_app.server)
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


MakeStaff = Callable[..., Awaitable[tuple[StaffUser, str, str]]]
MakeVendorUser = Callable[..., Awaitable[tuple[VendorUser, str, str]]]


@pytest.fixture
def make_staff(db: async_sessionmaker[AsyncSession], vault: Vault) -> MakeStaff:
    async def make(
        login: str, roles: Sequence[str], password: str = PASSWORD, display_name: str = ""
    ) -> tuple[StaffUser, str, str]:
        async with db() as s:
            user, secret = await admin.add_staff_user(
                s, vault, login=login, roles=roles, password=password, display_name=display_name
            )
        return user, password, secret

    return make


@pytest.fixture
def make_vendor_user(db: async_sessionmaker[AsyncSession], vault: Vault) -> MakeVendorUser:
    async def make(
        login: str,
        vendor: str = "Infusia Medical",
        keys: Sequence[str] = (),
        password: str = PASSWORD,
        display_name: str = "",
    ) -> tuple[VendorUser, str, str]:
        async with db() as s:
            if await s.scalar(select(Vendor).where(Vendor.name == vendor)) is None:
                await admin.add_vendor(s, vendor)
            user, secret = await admin.add_vendor_user(
                s,
                vault,
                login=login,
                vendor=vendor,
                public_keys=keys,
                password=password,
                display_name=display_name,
            )
        return user, password, secret

    return make


Login = Callable[..., Awaitable[aiohttp.ClientResponse]]


@pytest.fixture
def login(web_app: WebApp) -> Login:
    async def sign_in(
        client: TestClient[Any, Any] | aiohttp.ClientSession,
        login: str,
        password: str,
        secret: str,
        kind: str = "staff",
        **extra: str,
    ) -> aiohttp.ClientResponse:
        page = await client.get("/login")
        token = csrf_from(await page.text())
        form = {
            "_csrf": token,
            "kind": kind,
            "login": login,
            "password": password,
            "code": web_app.code(secret),
            **extra,
        }
        return await client.post("/login", data=form)

    return sign_in


AuditEvents = Callable[..., Awaitable[list[tuple[str, str, dict[str, Any]]]]]


@pytest.fixture
def audit_events(db: async_sessionmaker[AsyncSession]) -> AuditEvents:
    async def events(prefix: str = "") -> list[tuple[str, str, dict[str, Any]]]:
        async with db() as s:
            rows = await s.scalars(
                select(AuditEvent).where(AuditEvent.tag.startswith(prefix)).order_by(AuditEvent.id)
            )
            return [(e.tag, e.actor, dict(e.detail)) for e in rows]

    return events


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium driven by Playwright."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
