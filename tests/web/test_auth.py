"""Sign-in, sessions, API tokens and refusal by default (web/auth.py, web/sessions.py)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import totp
from policy.models import ApiToken, LoginFailure, StaffUser, VendorUser, WebSession
from tests.web.conftest import (
    AuditEvents,
    Login,
    MakeStaff,
    MakeVendorUser,
    WebApp,
    csrf_from,
)
from web.app import create_app
from web.auth import PUBLIC, principal, requires
from web.sessions import COOKIE

FAILED = "The login, password or verification code is not correct."
Client = TestClient[Any, Any]


async def count(db: async_sessionmaker[AsyncSession], model: type[Any]) -> int:
    async with db() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


def session_cookie(client: Client) -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == COOKIE:
            return cookie.value
    return None


def wrong_code(secret: str, web_app: WebApp) -> str:
    """A well-formed code that no step around the clock's now accepts."""
    now = web_app.clock()
    near = {totp.code_at(secret, now + timedelta(seconds=d)) for d in (-30, 0, 30)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


async def post_login(
    client: Client, web_app: WebApp, login: str, password: str, code: str, kind: str = "staff"
) -> tuple[int, str]:
    token = csrf_from(await (await client.get("/login")).text())
    form = {"_csrf": token, "kind": kind, "login": login, "password": password, "code": code}
    resp = await client.post("/login", data=form, allow_redirects=False)
    return resp.status, await resp.text()


# --- signing in ---------------------------------------------------------------------------


async def test_staff_signs_in_and_sees_the_start_page(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed", "security"], display_name="Al")
    resp = await login(client, "alice", password, secret)
    assert resp.status == 200
    assert resp.url.path == "/"
    page = await resp.text()
    assert "Welcome, Al" in page
    assert "hospital staff: biomed, security" in page
    assert await audit_events("web:login") == [
        ("web:login:succeeded", "staff:alice", {"address": "127.0.0.1", "method": "password+totp"})
    ]
    # the server keeps only the SHA-256 of the cookie
    token = session_cookie(client)
    assert token is not None
    async with db() as s:
        rows = (await s.scalars(select(WebSession))).all()
    assert [r.id for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]
    assert rows[0].data["kind"] == "staff" and rows[0].data["login"] == "alice"


async def test_the_session_cookie_is_httponly_lax_and_secure_when_configured(
    web_app: WebApp, make_staff: MakeStaff
) -> None:
    _user, password, secret = await make_staff("alice", ["admin"])

    async def set_cookie_header(secure: bool) -> str:
        browser = web_app.browser()
        page = await browser.get("/login")  # its CSRF cookie must come back over plain HTTP
        web_app.ctx.settings = replace(web_app.ctx.settings, web_cookie_secure=secure)
        form = {
            "_csrf": csrf_from(await page.text()),
            "kind": "staff",
            "login": "alice",
            "password": password,
            "code": web_app.code(secret),
        }
        resp = await browser.post("/login", data=form, allow_redirects=False)
        assert resp.status == 303
        return next(h for h in resp.headers.getall("Set-Cookie") if h.startswith(COOKIE + "="))

    plain = await set_cookie_header(secure=False)
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Path=/" in plain
    assert "Secure" not in plain
    secure = await set_cookie_header(secure=True)
    assert "HttpOnly" in secure and "SameSite=Lax" in secure and "Secure" in secure


async def test_vendor_signs_in_with_the_vendor_kind(
    web_app: WebApp, client: Client, make_vendor_user: MakeVendorUser, login: Login
) -> None:
    _user, password, secret = await make_vendor_user("vendor1", display_name="Vera")
    resp = await login(client, "vendor1", password, secret, kind="vendor")
    assert resp.url.path == "/"
    page = await resp.text()
    assert "Welcome, Vera" in page
    assert "(vendor)" in page
    assert 'href="/keys"' in page  # the vendor's menu


async def test_the_next_page_is_honoured_but_never_offsite(
    web_app: WebApp, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    _user, password, secret = await make_staff("alice", ["admin"])
    resp = await client.get("/account", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=%2Faccount"
    resp = await login(client, "alice", password, secret, next="/account")
    assert resp.url.path == "/account"
    await client.post("/logout", data={"_csrf": csrf_from(await resp.text())})
    resp = await login(client, "alice", password, secret, next="//evil.example/x")
    assert str(resp.url).startswith(web_app.url)
    assert resp.url.path == "/"


async def test_failures_get_one_message_and_audit_the_precise_reason(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    attempts = [
        ("nobody", password, web_app.code(secret), "staff"),
        ("alice", "wrong password!", web_app.code(secret), "staff"),
        ("alice", password, wrong_code(secret, web_app), "staff"),
        ("alice", password, "12ab", "staff"),
        ("alice", password, web_app.code(secret), "vendor"),  # a staff login as a vendor
    ]
    for login_name, pw, code, kind in attempts:
        status, page = await post_login(client, web_app, login_name, pw, code, kind)
        assert status == 401
        assert FAILED in page
        assert session_cookie(client) is None
    reasons = [(actor, d["reason"]) for _t, actor, d in await audit_events("web:login:failed")]
    assert reasons == [
        ("staff:nobody", "unknown-user"),
        ("staff:alice", "wrong-password"),
        ("staff:alice", "wrong-code"),
        ("staff:alice", "malformed-code"),
        ("vendor:alice", "unknown-user"),
    ]
    assert await count(db, LoginFailure) == 5
    assert await count(db, WebSession) == 0


async def test_too_many_failures_refuse_without_checking_the_password(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, web_login_attempts=3)
    _user, password, secret = await make_staff("alice", ["biomed"])
    for _ in range(3):
        status, _page = await post_login(client, web_app, "alice", "bad", web_app.code(secret))
        assert status == 401
    async with db() as s:
        first = await s.scalar(select(func.min(LoginFailure.at)))
    assert first is not None
    until = first + timedelta(seconds=web_app.ctx.settings.web_login_window)
    minute = until.replace(second=0, microsecond=0)
    minute += timedelta(minutes=1) if minute < until else timedelta()
    # now even the right password and code are refused, with the time to come back
    status, page = await post_login(client, web_app, "alice", password, web_app.code(secret))
    assert status == 429
    assert f"Too many failed attempts; try again after {minute:%H:%M} UTC." in page
    assert [d["reason"] for _t, _a, d in await audit_events("web:login:failed")][-1] == (
        "rate-limited"
    )
    assert await count(db, LoginFailure) == 3  # a refused attempt does not extend the block
    # once the window has passed, the right credentials work again
    web_app.clock.offset += timedelta(seconds=web_app.ctx.settings.web_login_window)
    status, _page = await post_login(client, web_app, "alice", password, web_app.code(secret))
    assert status == 303
    assert await count(db, LoginFailure) == 0  # a success clears the login's failures


async def test_one_address_is_limited_across_logins(
    web_app: WebApp, client: Client, make_staff: MakeStaff
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, web_login_attempts=1)
    _user, password, secret = await make_staff("alice", ["biomed"])
    for name in ("u1", "u2", "u3", "u4"):  # 4 x web_login_attempts from 127.0.0.1
        status, _page = await post_login(client, web_app, name, "x", "123456")
        assert status == 401
    status, page = await post_login(client, web_app, "alice", password, web_app.code(secret))
    assert status == 429
    assert "Too many failed attempts" in page


async def test_locked_and_disabled_accounts_are_refused(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    locked, password, locked_secret = await make_staff("locked", ["biomed"])
    disabled, _, disabled_secret = await make_staff("gone", ["biomed"])
    async with db() as s:
        until = web_app.clock() + timedelta(minutes=10)
        await s.execute(
            update(StaffUser).where(StaffUser.id == locked.id).values(locked_until=until)
        )
        await s.execute(update(StaffUser).where(StaffUser.id == disabled.id).values(disabled=True))
        await s.commit()
    status, page = await post_login(
        client, web_app, "locked", password, web_app.code(locked_secret)
    )
    assert status == 429
    assert "try again after" in page
    status, page = await post_login(
        client, web_app, "gone", password, web_app.code(disabled_secret)
    )
    assert status == 401
    assert "This account is disabled" in page
    reasons = [d["reason"] for _t, _a, d in await audit_events("web:login:failed")]
    assert reasons == ["locked", "disabled"]
    assert session_cookie(client) is None


async def test_vendor_wrong_codes_lock_the_account_as_at_the_gateway(
    web_app: WebApp,
    client: Client,
    make_vendor_user: MakeVendorUser,
    db: async_sessionmaker[AsyncSession],
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, web_login_attempts=100)
    user, password, secret = await make_vendor_user("vendor1")
    for _ in range(totp.MAX_FAILURES):
        wrong = wrong_code(secret, web_app)
        status, _page = await post_login(client, web_app, "vendor1", password, wrong, "vendor")
        assert status == 401
    async with db() as s:
        row = await s.get(VendorUser, user.id)
        assert row is not None and row.locked_until is not None
    status, page = await post_login(
        client, web_app, "vendor1", password, web_app.code(secret), "vendor"
    )
    assert status == 429
    assert "try again after" in page


async def test_a_code_works_once(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    code = web_app.code(secret)
    status, _page = await post_login(client, web_app, "alice", password, code)
    assert status == 303
    other = web_app.browser()
    page = await other.get("/login")
    form = {
        "_csrf": csrf_from(await page.text()),
        "kind": "staff",
        "login": "alice",
        "password": password,
        "code": code,
    }
    resp = await other.post("/login", data=form, allow_redirects=False)
    assert resp.status == 401
    assert FAILED in await resp.text()
    assert [d["reason"] for _t, _a, d in await audit_events("web:login:failed")] == [
        "code-replayed"
    ]


# --- sessions -----------------------------------------------------------------------------


async def test_idle_sessions_expire(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    await login(client, "alice", password, secret)
    idle = web_app.ctx.settings.web_idle_minutes
    web_app.clock.offset += timedelta(minutes=idle - 1)
    assert (await client.get("/account", allow_redirects=False)).status == 200
    web_app.clock.offset += timedelta(minutes=idle - 1)  # still within idle of the last click
    assert (await client.get("/account", allow_redirects=False)).status == 200
    web_app.clock.offset += timedelta(minutes=idle + 1)
    resp = await client.get("/account", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=%2Faccount&expired=idle"
    assert await count(db, WebSession) == 0
    assert await audit_events("web:session:expired") == [
        ("web:session:expired", "staff:alice", {"reason": "idle"})
    ]
    page = await (await client.get(resp.headers["Location"])).text()
    assert "signed out after a period without activity" in page


async def test_sessions_end_at_their_absolute_limit_despite_activity(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    audit_events: AuditEvents,
) -> None:
    web_app.ctx.settings = replace(
        web_app.ctx.settings, web_session_minutes=60, web_idle_minutes=30
    )
    _user, password, secret = await make_staff("alice", ["biomed"])
    await login(client, "alice", password, secret)
    for _ in range(2):
        web_app.clock.offset += timedelta(minutes=25)
        assert (await client.get("/", allow_redirects=False)).status == 200
    web_app.clock.offset += timedelta(minutes=11)  # 61 minutes in, 11 since the last click
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].endswith("expired=absolute")
    assert [d["reason"] for _t, _a, d in await audit_events("web:session:expired")] == ["absolute"]


async def test_sign_out_deletes_the_server_side_session(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    page = await login(client, "alice", password, secret)
    stolen = session_cookie(client)
    assert stolen is not None
    resp = await client.post(
        "/logout", data={"_csrf": csrf_from(await page.text())}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?signed_out=1"
    assert await count(db, WebSession) == 0
    assert ("web:session:ended", "staff:alice", {"address": "127.0.0.1", "reason": "logout"}) in (
        await audit_events("web:session")
    )
    # the old cookie, replayed from elsewhere, is worth nothing
    replay = web_app.browser()
    resp = await replay.get("/", headers={"Cookie": f"{COOKIE}={stolen}"}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/login")


async def test_signing_in_replaces_a_planted_session(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
) -> None:
    planted = secrets.token_urlsafe(32)
    planted_id = hashlib.sha256(planted.encode()).hexdigest()
    async with db() as s:
        now = web_app.clock()
        s.add(
            WebSession(
                id=planted_id,
                data={"csrf": "planted"},
                created_at=now,
                expires_at=now + timedelta(minutes=30),
            )
        )
        await s.commit()
    client.session.cookie_jar.update_cookies({COOKIE: planted}, client.make_url("/"))
    _user, password, secret = await make_staff("alice", ["biomed"])
    resp = await login(client, "alice", password, secret)
    assert resp.url.path == "/"
    assert session_cookie(client) not in (None, planted)
    async with db() as s:
        assert await s.get(WebSession, planted_id) is None
    assert await count(db, WebSession) == 1


async def test_a_disabled_user_loses_a_live_session(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    user, password, secret = await make_staff("alice", ["biomed"])
    await login(client, "alice", password, secret)
    async with db() as s:
        await s.execute(update(StaffUser).where(StaffUser.id == user.id).values(disabled=True))
        await s.commit()
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303
    assert await count(db, WebSession) == 0
    assert [d["reason"] for _t, _a, d in await audit_events("web:session:ended")] == [
        "account-disabled"
    ]


# --- refusal by default -------------------------------------------------------------------


def _example_path(canonical: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", canonical)


async def test_every_private_route_refuses_an_anonymous_request(web_app: WebApp) -> None:
    """Walks the real router: a route added later without a login check fails here."""
    app = web_app.server.app
    assert app is not None
    checked = 0
    browser = web_app.browser()
    canonicals = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        canonicals.add(resource.canonical)
        if resource.canonical in PUBLIC or route.method == "HEAD":
            continue
        path = _example_path(resource.canonical)
        method = "GET" if route.method == "*" else route.method
        resp = await browser.request(method, path, allow_redirects=False)
        if path.startswith("/api/"):
            assert resp.status == 401, (method, path)
            assert (await resp.json())["code"] == "authentication-required"
        else:
            assert resp.status == 303, (method, path)
            expected = "/login?next=" if method == "GET" else "/login"
            assert resp.headers["Location"].startswith(expected), (method, path)
        checked += 1
    assert checked >= 6  # /, /logout, /keys (GET, POST), /keys/{id}/delete, /account, ...
    assert canonicals >= PUBLIC  # no stale entries in the public list


@requires("admin")
async def _admin_only(request: web.Request) -> web.Response:
    return web.json_response({"login": principal(request).login})


async def test_roles_are_checked_and_refusals_audited(
    web_app: WebApp,
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
    login: Login,
    audit_events: AuditEvents,
) -> None:
    _u, password, secret = await make_staff("bea", ["biomed"])
    _v, vpassword, vsecret = await make_vendor_user("vendor1")
    staff, vendor = web_app.browser(), web_app.browser()
    await login(staff, "bea", password, secret)
    await login(vendor, "vendor1", vpassword, vsecret, kind="vendor")
    resp = await staff.get("/keys")  # a vendor page
    assert resp.status == 403
    assert "this needs the vendor role" in await resp.text()
    resp = await vendor.get("/keys")
    assert resp.status == 200
    refused = await audit_events("web:access:refused")
    assert refused == [
        (
            "web:access:refused",
            "staff:bea",
            {"method": "GET", "path": "/keys", "needed": ["vendor"], "roles": ["biomed"]},
        )
    ]


async def _api_app(web_app: WebApp) -> TestServer:
    app = create_app(web_app.ctx)
    app.router.add_get("/api/v1/whoami", _admin_only)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_api_tokens_authenticate_and_revoked_ones_are_refused(
    web_app: WebApp,
    make_staff: MakeStaff,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    user, _pw, _secret = await make_staff("robot", ["admin"])
    token = "spt_" + secrets.token_urlsafe(32)
    async with db() as s:
        row = ApiToken(
            token_hash=hashlib.sha256(token.encode()).hexdigest(),
            name="ci",
            staff_user_id=user.id,
        )
        s.add(row)
        await s.commit()
        token_id = row.id
    server = await _api_app(web_app)
    client: Client = TestClient(server)
    await client.start_server()
    try:
        resp = await client.get("/api/v1/whoami")
        assert resp.status == 401
        assert (await resp.json())["code"] == "authentication-required"
        bearer = {"Authorization": f"Bearer {token}"}
        resp = await client.get("/api/v1/whoami", headers=bearer)
        assert resp.status == 200
        assert await resp.json() == {"login": "robot"}
        assert session_cookie(client) is None  # a token request starts no session
        # unsafe methods with a token need no CSRF token (no ambient credentials)
        resp = await client.post(
            "/account/password", headers=bearer, data={"current": "x"}, allow_redirects=False
        )
        assert resp.status == 400
        assert "the password needs at least 12 characters" in await resp.text()
        async with db() as s:
            stored = await s.get(ApiToken, token_id)
            assert stored is not None and stored.last_used_at is not None
            stored.revoked_at = web_app.clock()
            await s.commit()
        resp = await client.get("/api/v1/whoami", headers=bearer)
        assert resp.status == 401
        assert await resp.json() == {
            "code": "token-invalid",
            "message": "the API token is not valid: unknown, revoked, or its user disabled",
        }
        resp = await client.get("/api/v1/whoami", headers={"Authorization": "Basic eDp5"})
        assert resp.status == 401
        assert "Bearer spt_" in (await resp.json())["message"]
    finally:
        await client.close()
    refused = await audit_events("web:token:refused")
    assert [(d["reason"], d["path"]) for _t, _a, d in refused] == [
        ("token-invalid", "/api/v1/whoami"),
        ("token-invalid", "/api/v1/whoami"),
    ]


@pytest.mark.parametrize("kind", ["staff", "vendor"])
async def test_a_token_of_a_disabled_user_is_refused(
    web_app: WebApp,
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
    db: async_sessionmaker[AsyncSession],
    kind: str,
) -> None:
    token = "spt_" + secrets.token_urlsafe(32)
    async with db() as s:
        if kind == "staff":
            staff, _pw, _secret = await make_staff("robot", ["admin"])
            await s.execute(update(StaffUser).where(StaffUser.id == staff.id).values(disabled=True))
            owner = {"staff_user_id": staff.id}
        else:
            vendor, _pw, _secret = await make_vendor_user("vendor1")
            await s.execute(
                update(VendorUser).where(VendorUser.id == vendor.id).values(disabled=True)
            )
            owner = {"vendor_user_id": vendor.id}
        s.add(ApiToken(token_hash=hashlib.sha256(token.encode()).hexdigest(), name="t", **owner))
        await s.commit()
    resp = await web_app.browser().get("/", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert (await resp.json())["code"] == "token-invalid"


async def test_the_login_page_shows_the_system_use_notice_escaped(
    web_app: WebApp, client: TestClient[Any, Any]
) -> None:
    from policy.config import DEFAULT_BANNER

    page = await (await client.get("/login")).text()
    for line in DEFAULT_BANNER.splitlines():
        assert f"<p>{line.replace(chr(39), '&#39;')}</p>" in page
    web_app.ctx.settings = replace(
        web_app.ctx.settings, banner="Line <one>\nLine & two", banner_file=""
    )
    page = await (await client.get("/login")).text()
    assert "<p>Line &lt;one&gt;</p><p>Line &amp; two</p>" in page


async def test_invalid_api_tokens_from_one_address_are_limited(
    web_app: WebApp, client: TestClient[Any, Any], audit_events: AuditEvents
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, web_login_attempts=1)
    bad = {"Authorization": "Bearer spt_" + "x" * 43}
    for _ in range(4):  # 4 x web_login_attempts from 127.0.0.1
        resp = await client.get("/api/v1/requests", headers=bad)
        assert resp.status == 401
    resp = await client.get("/api/v1/requests", headers=bad)
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) == web_app.ctx.settings.web_login_window
    body = await resp.json()
    assert body["code"] == "rate-limited" and "from your address" in body["message"]
    refused = [d["reason"] for _t, _a, d in await audit_events("web:token:refused")]
    assert refused == ["token-invalid"] * 4 + ["rate-limited"]


async def test_guessing_invite_links_from_one_address_is_limited(
    web_app: WebApp, client: TestClient[Any, Any], audit_events: AuditEvents
) -> None:
    web_app.ctx.settings = replace(web_app.ctx.settings, web_login_attempts=1)
    for i in range(4):
        resp = await client.get(f"/invite/guess{i}")
        assert resp.status == 404
    resp = await client.get("/invite/guess-again")
    assert resp.status == 429
    assert "too many invalid links or codes from your address" in await resp.text()
    codes = [d["code"] for _t, _a, d in await audit_events("web:invite:refused")]
    assert codes == ["invite-unknown"] * 4 + ["rate-limited"]
