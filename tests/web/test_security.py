"""CSRF, security headers and error responses (web/security.py, web/errors.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.errors import Conflict, Forbidden, InvalidInput, NotFound, PolicyError, VaultError
from policy.models import WebSession
from tests.web.conftest import AuditEvents, Login, MakeStaff, WebApp, csrf_from
from web.app import create_app
from web.errors import json_error
from web.security import CSP

Client = TestClient[Any, Any]


async def sessions_stored(db: async_sessionmaker[AsyncSession]) -> int:
    async with db() as s:
        return int(await s.scalar(select(func.count()).select_from(WebSession)) or 0)


# --- CSRF ---------------------------------------------------------------------------------


async def test_a_post_without_the_token_is_refused_and_changes_nothing(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    page = await login(client, "alice", password, secret)
    token = csrf_from(await page.text())
    for data in ({}, {"_csrf": "forged"}):
        resp = await client.post("/logout", data=data, allow_redirects=False)
        assert resp.status == 403
        body = await resp.text()
        assert "security token is missing or out of date" in body
        assert "reload the page" in body
    assert await sessions_stored(db) == 1  # still signed in
    assert (await client.get("/", allow_redirects=False)).status == 200
    refused = await audit_events("web:csrf:refused")
    assert [(a, d["reason"], d["path"]) for _t, a, d in refused] == [
        ("staff:alice", "missing", "/logout"),
        ("staff:alice", "mismatch", "/logout"),
    ]
    # the header works as well as the form field
    resp = await client.post("/logout", headers={"X-CSRF-Token": token}, allow_redirects=False)
    assert resp.status == 303
    assert await sessions_stored(db) == 0


async def test_the_session_token_changes_at_sign_in(
    web_app: WebApp, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    anonymous = csrf_from(await (await client.get("/login")).text())
    page = await login(client, "alice", password, secret)
    signed_in = csrf_from(await page.text())
    assert signed_in != anonymous
    resp = await client.post("/logout", data={"_csrf": anonymous}, allow_redirects=False)
    assert resp.status == 403


async def test_the_login_form_needs_its_cookie_and_token(
    web_app: WebApp, make_staff: MakeStaff, audit_events: AuditEvents
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    form = {"kind": "staff", "login": "alice", "password": password, "code": web_app.code(secret)}
    # a cross-site form post: no cookie from us, no token
    stranger = web_app.browser()
    resp = await stranger.post("/login", data=form, allow_redirects=False)
    assert resp.status == 403
    assert "allow cookies for this site" in await resp.text()
    # the cookie without the matching field is not enough either
    browser = web_app.browser()
    await browser.get("/login")
    resp = await browser.post("/login", data={**form, "_csrf": "guess"}, allow_redirects=False)
    assert resp.status == 403
    reasons = [d["reason"] for _t, _a, d in await audit_events("web:csrf:refused")]
    assert reasons == ["no-secret", "mismatch"]
    assert await audit_events("web:login") == []  # the password was never looked at


# --- headers ------------------------------------------------------------------------------


async def test_every_kind_of_response_carries_the_security_headers(
    web_app: WebApp, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"])
    await login(client, "alice", password, secret)
    for path, status in [
        ("/", 200),
        ("/account", 200),
        ("/login", 303),  # signed in: on to the start page
        ("/static/style.css", 200),
        ("/api/v1/health", 200),
        ("/metrics", 200),
        ("/no-such-page", 404),
        ("/api/v1/no-such-thing", 404),
    ]:
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == status, path
        headers = resp.headers
        assert headers["Content-Security-Policy"] == CSP, path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["X-Frame-Options"] == "DENY", path
        if path.startswith("/static/"):
            assert headers.get("Cache-Control") != "no-store"
        else:
            assert headers["Cache-Control"] == "no-store", path
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert "img-src 'self' data:" in CSP and "form-action 'self'" in CSP


async def test_not_found_is_a_page_or_json(web_app: WebApp, client: Client) -> None:
    resp = await client.get("/api/v1/nothing")
    assert resp.status == 404
    assert await resp.json() == {
        "code": "not-found",
        "message": "there is nothing at /api/v1/nothing",
    }
    resp = await client.get("/nothing")
    assert resp.status == 404
    assert "there is nothing at /nothing" in await resp.text()
    resp = await client.delete("/api/v1/health")
    assert resp.status == 405
    assert (await resp.json())["code"] == "method-not-allowed"


# --- error mapping ------------------------------------------------------------------------

RAISED: dict[str, PolicyError | Exception] = {
    "invalid": InvalidInput("ticket-invalid", "the ticket CHG12 is malformed"),
    "forbidden": Forbidden("self-approval", "you cannot approve your own request"),
    "missing": NotFound("request-unknown", "request 9 does not exist"),
    "conflict": Conflict("already-decided", "request 9 was already approved"),
    "vault": VaultError("vault-blob-invalid", "secret detail that must not leak"),
    "boom": RuntimeError("secret detail that must not leak"),
}


async def _raise(request: web.Request) -> web.Response:
    raise RAISED[request.match_info["what"]]


@pytest.fixture
async def raising(web_app: WebApp, make_staff: MakeStaff, login: Login) -> AsyncIterator[Client]:
    """The portal plus routes that raise each kind of error, signed in as staff."""
    app = create_app(web_app.ctx)
    app.router.add_get("/api/v1/raise/{what}", _raise)
    app.router.add_get("/raise/{what}", _raise)
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    _user, password, secret = await make_staff("alice", ["biomed"])
    await login(client, "alice", password, secret)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("what", "status", "code"),
    [
        ("invalid", 400, "ticket-invalid"),
        ("forbidden", 403, "self-approval"),
        ("missing", 404, "request-unknown"),
        ("conflict", 409, "already-decided"),
    ],
)
async def test_policy_errors_map_to_statuses_with_their_message(
    raising: Client, what: str, status: int, code: str
) -> None:
    expected = RAISED[what]
    assert isinstance(expected, PolicyError)
    resp = await raising.get(f"/api/v1/raise/{what}")
    assert resp.status == status
    assert await resp.json() == {"code": code, "message": expected.message}
    resp = await raising.get(f"/raise/{what}")
    assert resp.status == status
    page = await resp.text()
    assert expected.message in page
    assert "Sign out" in page  # the error page keeps the signed-in layout


@pytest.mark.parametrize("what", ["vault", "boom"])
async def test_unexpected_errors_are_500_without_detail(raising: Client, what: str) -> None:
    resp = await raising.get(f"/api/v1/raise/{what}")
    assert resp.status == 500
    body = await resp.json()
    assert body["code"] == "internal-error"
    assert "reference" in body["message"]
    assert "secret detail" not in body["message"]
    resp = await raising.get(f"/raise/{what}")
    assert resp.status == 500
    assert "secret detail" not in await resp.text()


async def test_json_error_shape() -> None:
    resp = json_error("grant-unknown", "grant 4 does not exist", 404)
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert resp.text == '{"code": "grant-unknown", "message": "grant 4 does not exist"}'
