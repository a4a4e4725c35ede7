"""Invites and enrollment, SSH keys, the account page (web/onboarding.py)."""

from __future__ import annotations

import json
import re
import warnings
from datetime import timedelta
from typing import Any

import asyncssh
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.utils import CryptographyDeprecationWarning
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, invites, totp
from policy.actor import Actor
from policy.errors import InvalidInput
from policy.models import Invite, StaffUser, VendorKey, VendorUser, WebSession
from policy.sshkeys import parse_public_key
from tests.web.conftest import (
    AuditEvents,
    Login,
    MakeStaff,
    MakeVendorUser,
    WebApp,
    csrf_from,
)

Client = TestClient[Any, Any]
ROOT = Actor("staff", 0, "root", frozenset({"admin"}), via="cli")
NEW_PASSWORD = "a long enough passphrase"


async def make_invite(
    web_app: WebApp, kind: str, roles: tuple[str, ...] = (), email: str = ""
) -> str:
    async with web_app.ctx.sessions() as db:
        if kind == "vendor":
            await admin.add_vendor(db, "Infusia Medical")
        _invite, token = await invites.create_invite(
            db,
            web_app.ctx.audit,
            ROOT,
            kind=kind,
            vendor="Infusia Medical" if kind == "vendor" else None,
            roles=roles,
            email=email,
            hours=72,
            now=web_app.clock(),
        )
    return token


def form_for(page: str, **values: str) -> dict[str, str]:
    return {"_csrf": csrf_from(page), **values}


def wrong_code(web_app: WebApp, secret: str) -> str:
    now = web_app.clock()
    near = {totp.code_at(secret, now + timedelta(seconds=d)) for d in (-30, 0, 30)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


def secret_on(page: str) -> str:
    found = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page)
    assert found is not None, "the enrollment page shows the secret as text"
    return found.group(1).replace(" ", "")


# --- invites ------------------------------------------------------------------------------


async def test_a_vendor_invite_becomes_a_signed_in_account(
    web_app: WebApp,
    client: Client,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    token = await make_invite(web_app, "vendor", email="eng@infusia.example")
    page = await (await client.get(f"/invite/{token}")).text()
    assert "vendor engineer of <strong>Infusia Medical</strong>" in page
    assert 'value="eng@infusia.example"' in page

    details = {"login": "eng1", "display_name": "Erin Eng", "email": "eng@infusia.example"}
    resp = await client.post(
        f"/invite/{token}",
        data=form_for(page, **details, password=NEW_PASSWORD, confirm=NEW_PASSWORD),
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == f"/invite/{token}/enroll"
    # the anonymous session holds the enrollment sealed: no password, no secret in clear
    async with db() as s:
        rows = (await s.scalars(select(WebSession))).all()
    assert len(rows) == 1
    stored = json.dumps(rows[0].data)
    assert NEW_PASSWORD not in stored

    page = await (await client.get(f"/invite/{token}/enroll")).text()
    assert 'src="data:image/svg+xml' in page
    secret = secret_on(page)
    assert secret not in stored

    resp = await client.post(
        f"/invite/{token}/enroll", data=form_for(page, code=wrong_code(web_app, secret))
    )
    assert resp.status == 400
    page = await resp.text()
    assert "verification code does not match" in page
    assert secret_on(page) == secret  # the same secret, to try again
    resp = await client.post(
        f"/invite/{token}/enroll", data=form_for(page, code=web_app.code(secret))
    )
    assert resp.url.path == "/"
    home = await resp.text()
    assert "Your account is ready; you are signed in." in home
    assert "Welcome, Erin Eng" in home

    async with db() as s:
        user = await s.scalar(select(VendorUser).where(VendorUser.login == "eng1"))
        assert user is not None and user.email == "eng@infusia.example"
        invite = await s.scalar(select(Invite))
        assert invite is not None and invite.used_by == "vendor:eng1"
        assert await s.scalar(select(func.count()).select_from(WebSession)) == 1
    tags = [t for t, _a, _d in await audit_events()]
    assert "policy:invite:redeemed" in tags
    assert ("web:login:succeeded", "vendor:eng1") in [(t, a) for t, a, _d in await audit_events()]

    # the link is spent; the new account signs in like any other
    resp = await web_app.browser().get(f"/invite/{token}")
    assert resp.status == 400
    assert "already been used" in await resp.text()
    other = web_app.browser()
    resp = await login(other, "eng1", NEW_PASSWORD, secret, kind="vendor")
    assert resp.url.path == "/"


async def test_a_staff_invite_gives_the_invited_roles(
    web_app: WebApp, client: Client, db: async_sessionmaker[AsyncSession]
) -> None:
    token = await make_invite(web_app, "staff", roles=("security", "biomed"))
    page = await (await client.get(f"/invite/{token}")).text()
    assert "hospital staff with the roles <strong>biomed, security</strong>" in page
    await client.post(
        f"/invite/{token}",
        data=form_for(page, login="sam", password=NEW_PASSWORD, confirm=NEW_PASSWORD),
    )
    page = await (await client.get(f"/invite/{token}/enroll")).text()
    resp = await client.post(
        f"/invite/{token}/enroll", data=form_for(page, code=web_app.code(secret_on(page)))
    )
    assert "hospital staff: biomed, security" in await resp.text()
    async with db() as s:
        user = await s.scalar(select(StaffUser).where(StaffUser.login == "sam"))
        assert user is not None and user.roles == ["biomed", "security"]


async def test_the_invite_form_refuses_bad_input_with_reasons(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    await make_staff("taken", ["biomed"])
    token = await make_invite(web_app, "vendor")
    page = await (await client.get(f"/invite/{token}")).text()
    cases = [
        (
            {"login": "eng1", "password": NEW_PASSWORD, "confirm": "other"},
            "the two passwords differ",
        ),
        ({"login": "eng1", "password": "short", "confirm": "short"}, "at least 12 characters"),
        ({"login": "bad login!", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, "use letters"),
        ({"login": "taken", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, "is taken"),
    ]
    for values, message in cases:
        resp = await client.post(f"/invite/{token}", data=form_for(page, **values))
        assert resp.status == 400
        assert message in await resp.text()
    codes = [d["code"] for _t, _a, d in await audit_events("web:invite:refused")]
    assert codes == ["password-mismatch", "password-short", "login-name-invalid", "login-taken"]
    async with db() as s:
        assert await s.scalar(select(func.count()).select_from(WebSession)) == 0
    # the enrollment page needs the first step
    resp = await client.get(f"/invite/{token}/enroll")
    assert resp.url.path == f"/invite/{token}"
    assert "First choose your login and password." in await resp.text()


async def test_unknown_and_expired_links_are_refused(
    web_app: WebApp, client: Client, audit_events: AuditEvents
) -> None:
    resp = await client.get("/invite/not-a-real-token")
    assert resp.status == 404
    assert "this invite link is not valid" in await resp.text()
    token = await make_invite(web_app, "vendor")
    web_app.clock.offset += timedelta(hours=73)
    resp = await client.get(f"/invite/{token}")
    assert resp.status == 400
    assert "expired" in await resp.text()
    codes = [d["code"] for _t, _a, d in await audit_events("web:invite:refused")]
    assert codes == ["invite-unknown", "invite-expired"]


# --- SSH keys -----------------------------------------------------------------------------


def ed25519_line(comment: str = "eng@laptop") -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob} {comment}"


def rsa_line(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def dsa_line() -> str:
    public = dsa.generate_private_key(1024).public_key()  # noqa: S505 - a key to refuse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()


@pytest.fixture
async def vendor_client(
    web_app: WebApp, client: Client, make_vendor_user: MakeVendorUser, login: Login
) -> Client:
    _user, password, secret = await make_vendor_user("vendor1")
    await login(client, "vendor1", password, secret, kind="vendor")
    return client


async def key_count(db: async_sessionmaker[AsyncSession]) -> int:
    async with db() as s:
        return int(await s.scalar(select(func.count()).select_from(VendorKey)) or 0)


async def add_key(client: Client, line: str) -> tuple[int, str]:
    page = await (await client.get("/keys")).text()
    resp = await client.post("/keys", data=form_for(page, public_key=line))
    return resp.status, await resp.text()


async def test_a_vendor_adds_and_removes_a_key(
    vendor_client: Client, db: async_sessionmaker[AsyncSession], audit_events: AuditEvents
) -> None:
    line = ed25519_line()
    status, page = await add_key(vendor_client, line)
    assert status == 200
    async with db() as s:
        key = await s.scalar(select(VendorKey))
    assert key is not None
    assert f"Key {key.fingerprint} added." in page
    assert key.fingerprint in page and "eng@laptop" in page
    resp = await vendor_client.post(f"/keys/{key.id}/delete", data=form_for(page))
    assert resp.status == 200
    assert f"Key {key.fingerprint} removed." in await resp.text()
    assert await key_count(db) == 0
    events = [(t, d.get("fingerprint")) for t, _a, d in await audit_events("web:key")]
    assert events == [("web:key:added", key.fingerprint), ("web:key:removed", key.fingerprint)]


async def test_weak_and_malformed_keys_are_refused_with_the_reason(
    vendor_client: Client, db: async_sessionmaker[AsyncSession], audit_events: AuditEvents
) -> None:
    good = ed25519_line()
    assert (await add_key(vendor_client, good))[0] == 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        dsa_key = dsa_line()
        cases = [
            (rsa_line(2048), "RSA key of 2048 bits is too weak; at least 3072 needed"),
            (dsa_key, "DSA keys are not accepted"),
            ("ssh-ed25519 not-base64!", "the key cannot be read"),
            ("hello", "not an OpenSSH public key line"),
            (good + "\n" + ed25519_line(), "paste one key, on one line"),
            (good, "is already registered"),
        ]
        for line, message in cases:
            status, page = await add_key(vendor_client, line)
            assert status == 400, line
            assert message in page, line
    assert await key_count(db) == 1  # refused input changed nothing
    codes = [d["code"] for _t, _a, d in await audit_events("web:key:refused")]
    assert codes == [
        "key-weak",
        "key-weak",
        "key-invalid",
        "key-invalid",
        "key-invalid",
        "key-taken",
    ]


async def test_an_rsa_key_of_3072_bits_is_accepted(vendor_client: Client) -> None:
    status, page = await add_key(vendor_client, rsa_line(3072) + " big@box")
    assert status == 200
    assert "big@box" in page


async def test_nobody_removes_another_vendors_key(
    web_app: WebApp,
    vendor_client: Client,
    make_vendor_user: MakeVendorUser,
    db: async_sessionmaker[AsyncSession],
) -> None:
    other, _pw, _secret = await make_vendor_user("vendor2", keys=[ed25519_line("theirs")])
    async with db() as s:
        theirs = await s.scalar(select(VendorKey).where(VendorKey.vendor_user_id == other.id))
    assert theirs is not None
    page = await (await vendor_client.get("/keys")).text()
    assert theirs.fingerprint not in page
    resp = await vendor_client.post(f"/keys/{theirs.id}/delete", data=form_for(page))
    assert resp.status == 404
    assert "you have no such key" in await resp.text()
    assert await key_count(db) == 1


# --- account ------------------------------------------------------------------------------


async def test_the_password_change_needs_the_current_password(
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    audit_events: AuditEvents,
) -> None:
    _user, password, secret = await make_staff("alice", ["biomed"], display_name="Alice")
    page = await (await login(client, "alice", password, secret, next="/account")).text()
    assert "Alice" in page and "Change password" in page
    resp = await client.post(
        "/account/password",
        data=form_for(page, current="not it", password=NEW_PASSWORD, confirm=NEW_PASSWORD),
    )
    assert resp.status == 400
    assert "the current password is not correct" in await resp.text()
    resp = await client.post(
        "/account/password",
        data=form_for(page, current=password, password=NEW_PASSWORD, confirm=NEW_PASSWORD),
    )
    assert resp.url.path == "/account"
    assert "Your password was changed." in await resp.text()
    tags = [(t, d.get("code")) for t, _a, d in await audit_events("web:password")]
    assert tags == [("web:password:refused", "password-wrong"), ("web:password:changed", None)]
    other = web_app.browser()
    assert (await login(other, "alice", password, secret)).status == 401
    assert (await login(other, "alice", NEW_PASSWORD, secret)).url.path == "/"


@pytest.mark.parametrize(
    ("comment", "message"),
    [
        ("evil\x1b[2Jcomment", "the key comment contains control characters"),
        ("x" * 201, "the key comment is longer than 200 characters"),
    ],
)
def test_key_comments_that_would_reach_pages_and_logs_are_refused(
    comment: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_public_key(ed25519_line(comment))
    assert refused.value.message == message
    assert parse_public_key(ed25519_line("x" * 200)).comment == "x" * 200


async def test_wrong_enrollment_codes_are_limited_per_invite(
    web_app: WebApp, client: Client, audit_events: AuditEvents
) -> None:
    from dataclasses import replace

    web_app.ctx.settings = replace(web_app.ctx.settings, web_login_attempts=2)
    token = await make_invite(web_app, "vendor")
    page = await (await client.get(f"/invite/{token}")).text()
    details = {"login": "eng2", "display_name": "E", "email": ""}
    await client.post(
        f"/invite/{token}", data=form_for(page, **details, password=NEW_PASSWORD,
                                          confirm=NEW_PASSWORD),
    )  # fmt: skip
    page = await (await client.get(f"/invite/{token}/enroll")).text()
    secret = secret_on(page)
    for _ in range(2):
        resp = await client.post(
            f"/invite/{token}/enroll", data=form_for(page, code=wrong_code(web_app, secret))
        )
        assert resp.status == 400
        page = await resp.text()
    resp = await client.post(
        f"/invite/{token}/enroll", data=form_for(page, code=web_app.code(secret))
    )  # even the right code waits now
    assert resp.status == 429
    assert "too many wrong codes for this invite" in await resp.text()
    assert ("web:invite:refused", "rate-limited") in [
        (t, d.get("code")) for t, _a, d in await audit_events("web:invite:refused")
    ]
