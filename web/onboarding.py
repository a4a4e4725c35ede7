"""Getting in and looking after your own account: invites, enrollment, SSH keys, password.

Invite (``/invite/{token}``, public): the page shows what the invitation is for (a vendor
organization, or staff roles) and asks for a login, name, email and password. The POST
makes a TOTP secret and keeps it, with the form's values, in the browser's (anonymous)
session, both sealed with the vault so the ``web_session`` row holds no plaintext
password or secret. ``/invite/{token}/enroll`` shows the secret as a QR code (an inline
SVG data URI, allowed by the CSP's ``img-src data:``) and as text; posting a code from
the app redeems the invite (``policy.invites.redeem_invite``), signs the new user in and
opens the start page.

SSH keys (``/keys``, vendors): list, add (``policy.sshkeys.parse_public_key`` refuses
malformed keys, DSA and RSA under 3072 bits, with the reason), remove. Each change is an
audit event ``web:key:added`` / ``web:key:removed``; each refusal ``web:key:refused``.

Account (``/account``): who you are, when the session ends, and a password change
(``web:password:changed`` / ``web:password:refused``).
"""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from typing import Any

import segno
from aiohttp import web
from sqlalchemy import select

from policy import invites, totp
from policy.admin import add_vendor_key, check_name
from policy.errors import Conflict, InvalidInput, NotFound, PolicyError, RateLimited
from policy.models import Invite, StaffUser, Vendor, VendorKey, VendorUser
from policy.passwords import hash_password, verify_password
from policy.sshkeys import parse_public_key
from web.auth import INVITE_FAILURE, limited_until, note_failure, principal, requires, sign_in
from web.context import WebContext, ctx
from web.render import flash, redirect, render
from web.sessions import session

MIN_PASSWORD = invites.MIN_PASSWORD
MAX_PASSWORD = 1024
ENROLL = "enroll"  # the session key of an enrollment in progress
SEALED = "web-enrollment"  # vault purpose of the password and secret kept meanwhile


def check_new_password(password: str, confirm: str) -> str:
    """The new password, or InvalidInput saying what is wrong with it."""
    if password != confirm:
        raise InvalidInput("password-mismatch", "the two passwords differ")
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(
            "password-short", f"the password needs at least {MIN_PASSWORD} characters"
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(
            "password-long", f"the password may have at most {MAX_PASSWORD} characters"
        )
    return password


# --- SSH keys -----------------------------------------------------------------------------


async def _keys(request: web.Request) -> list[VendorKey]:
    who = principal(request)
    async with ctx(request).sessions() as db:
        rows = await db.scalars(
            select(VendorKey).where(VendorKey.vendor_user_id == who.id).order_by(VendorKey.id)
        )
        return list(rows)


async def _keys_page(
    request: web.Request, *, error: str | None = None, public_key: str = "", status: int = 200
) -> web.Response:
    keys = await _keys(request)
    return render(
        request, "keys.html", status=status, keys=keys, error=error, public_key=public_key
    )


@requires("vendor")
async def keys_get(request: web.Request) -> web.StreamResponse:
    return await _keys_page(request)


@requires("vendor")
async def keys_add(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    context = ctx(request)
    text = str((await request.post()).get("public_key", ""))
    try:
        key = parse_public_key(text)
        async with context.sessions() as db:
            await add_vendor_key(db, who.id, key, context.clock())
    except (InvalidInput, Conflict) as exc:
        await context.audit.record(
            "web:key:refused", actor=who.name, code=exc.code, message=exc.message
        )
        return await _keys_page(request, error=exc.message, public_key=text, status=400)
    await context.audit.record(
        "web:key:added",
        actor=who.name,
        fingerprint=key.fingerprint,
        algorithm=key.algorithm,
        bits=key.bits,
        comment=key.comment,
    )
    flash(request, f"Key {key.fingerprint} added.", "success")
    return redirect("/keys")


@requires("vendor")
async def keys_delete(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    context = ctx(request)
    raw = request.match_info["key_id"]
    async with context.sessions() as db:
        key = await db.get(VendorKey, int(raw)) if raw.isascii() and raw.isdigit() else None
        if key is None or key.vendor_user_id != who.id:
            await context.audit.record(
                "web:key:refused", actor=who.name, code="key-unknown", key_id=raw
            )
            raise NotFound("key-unknown", "you have no such key")
        fingerprint = key.fingerprint
        await db.delete(key)
        await db.commit()
    await context.audit.record("web:key:removed", actor=who.name, fingerprint=fingerprint)
    flash(request, f"Key {fingerprint} removed.", "success")
    return redirect("/keys")


# --- account ------------------------------------------------------------------------------


async def _account_page(
    request: web.Request, *, error: str | None = None, status: int = 200
) -> web.Response:
    who = principal(request)
    context = ctx(request)
    async with context.sessions() as db:
        user: StaffUser | VendorUser | None
        organization = None
        if who.kind == "staff":
            user = await db.get(StaffUser, who.id)
        else:
            user = await db.get(VendorUser, who.id)
            org = await db.get(Vendor, who.vendor_id) if who.vendor_id is not None else None
            organization = org.name if org is not None else None
    current = session(request)
    return render(
        request,
        "account.html",
        status=status,
        error=error,
        user=user,
        organization=organization,
        signed_in_at=str(current.get("signed_in_at", ""))[:16].replace("T", " "),
        session_ends=_session_end(request),
        idle_minutes=context.settings.web_idle_minutes,
        min_length=MIN_PASSWORD,
    )


def _session_end(request: web.Request) -> str:
    """When the session reaches its maximum length (``YYYY-MM-DD HH:MM`` UTC)."""
    current = session(request)
    if current.created_at is None:
        return ""
    minutes = ctx(request).settings.web_session_minutes
    return (current.created_at + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M")


async def account_get(request: web.Request) -> web.StreamResponse:
    return await _account_page(request)


async def password_post(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    context = ctx(request)
    form = await request.post()
    current_pw = str(form.get("current", ""))
    try:
        new = check_new_password(str(form.get("password", "")), str(form.get("confirm", "")))
        async with context.sessions() as db:
            user: StaffUser | VendorUser | None
            if who.kind == "staff":
                user = await db.get(StaffUser, who.id)
            else:
                user = await db.get(VendorUser, who.id)
            if user is None:
                raise NotFound("account-unknown", "your account no longer exists")
            ok = await asyncio.to_thread(verify_password, current_pw, user.password_hash)
            if not ok:
                raise InvalidInput("password-wrong", "the current password is not correct")
            user.password_hash = await asyncio.to_thread(hash_password, new)
            await db.commit()
    except PolicyError as exc:
        await context.audit.record(
            "web:password:refused", actor=who.name, code=exc.code, message=exc.message
        )
        return await _account_page(request, error=exc.message, status=400)
    await context.audit.record("web:password:changed", actor=who.name)
    flash(request, "Your password was changed.", "success")
    return redirect("/account")


# --- invites and enrollment ---------------------------------------------------------------


def _seal(context: WebContext, text: str) -> str:
    return base64.b64encode(context.vault.seal_text(text, SEALED)).decode()


def _unseal(context: WebContext, blob: str) -> str:
    return context.vault.open_text(base64.b64decode(blob), SEALED)


async def _open(request: web.Request) -> Invite:
    """The invite the link names; a link that cannot be used is refused and audited."""
    context = ctx(request)
    token = request.match_info["token"]
    address = request.remote or ""
    until = await limited_until(context, None, address)
    if until is not None:  # guessing links from one address is refused before a lookup
        await context.audit.record("web:invite:refused", code="rate-limited", address=address)
        raise RateLimited(
            "rate-limited",
            "too many invalid links or codes from your address; try again in "
            f"{context.settings.web_login_window // 60} minutes",
        )
    async with context.sessions() as db:
        try:
            return await invites.open_invite(db, token, context.clock())
        except PolicyError as exc:
            await context.audit.record(
                "web:invite:refused",
                code=exc.code,
                message=exc.message,
                address=address,
            )
            if exc.code == "invite-unknown":
                await note_failure(context, INVITE_FAILURE, address)
            raise


def _enrollment(request: web.Request) -> dict[str, Any] | None:
    """The enrollment this browser started for this invite, if any."""
    found = session(request).get(ENROLL)
    token_hash = invites.token_hash(request.match_info["token"])
    if isinstance(found, dict) and found.get("invite") == token_hash:
        return found
    return None


def _invite_page(
    request: web.Request,
    invite: Invite,
    form: dict[str, str],
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    return render(
        request,
        "invite.html",
        status=status,
        error=error,
        invite=invite,
        organization=invite.vendor.name if invite.vendor is not None else None,
        token=request.match_info["token"],
        form=form,
        min_length=MIN_PASSWORD,
    )


async def invite_get(request: web.Request) -> web.StreamResponse:
    invite = await _open(request)
    started = _enrollment(request) or {}
    form = {
        "login": started.get("login", ""),
        "display_name": started.get("display_name", ""),
        "email": started.get("email", invite.email),
    }
    return _invite_page(request, invite, form)


async def _login_free(context: WebContext, login: str) -> None:
    """Checked here so the form says so before the authenticator is set up; the
    redemption checks again under its own transaction."""
    async with context.sessions() as db:
        for model in (VendorUser, StaffUser):
            if await db.scalar(select(model.id).where(model.login == login)) is not None:
                raise Conflict("login-taken", f"login {login!r} is taken; choose another")


async def invite_post(request: web.Request) -> web.StreamResponse:
    invite = await _open(request)
    context = ctx(request)
    data = await request.post()
    form = {name: str(data.get(name, "")).strip() for name in ("login", "display_name", "email")}
    try:
        check_name("login", form["login"])
        if len(form["display_name"]) > 200:
            raise InvalidInput("name-invalid", "the name is longer than 200 characters")
        password = check_new_password(str(data.get("password", "")), str(data.get("confirm", "")))
        await _login_free(context, form["login"])
    except PolicyError as exc:
        await context.audit.record(
            "web:invite:refused",
            actor=f"invite:{invite.id}",
            code=exc.code,
            message=exc.message,
            login=form["login"][:64],
        )
        return _invite_page(request, invite, form, error=exc.message, status=400)
    session(request)[ENROLL] = {
        "invite": invites.token_hash(request.match_info["token"]),
        **form,
        "password": _seal(context, password),
        "secret": _seal(context, totp.new_secret()),
    }
    return redirect(f"/invite/{request.match_info['token']}/enroll")


def _enroll_page(
    request: web.Request, enrollment: dict[str, Any], *, error: str | None = None, status: int = 200
) -> web.Response:
    secret = _unseal(ctx(request), enrollment["secret"])
    uri = totp.provisioning_uri(secret, enrollment["login"])
    qr = segno.make(uri, error="m").svg_data_uri(scale=5, border=2)
    groups = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return render(
        request,
        "enroll.html",
        status=status,
        error=error,
        token=request.match_info["token"],
        qr=qr,
        secret_groups=groups,
    )


async def enroll_get(request: web.Request) -> web.StreamResponse:
    await _open(request)
    enrollment = _enrollment(request)
    if enrollment is None:
        flash(request, "First choose your login and password.", "info")
        return redirect(f"/invite/{request.match_info['token']}")
    return _enroll_page(request, enrollment)


async def enroll_post(request: web.Request) -> web.StreamResponse:
    await _open(request)
    context = ctx(request)
    token = request.match_info["token"]
    enrollment = _enrollment(request)
    if enrollment is None:
        flash(request, "First choose your login and password.", "info")
        return redirect(f"/invite/{token}")
    code = str((await request.post()).get("code", ""))
    # the invite is the account here: wrong codes are counted for it, and for the address
    account, address = INVITE_FAILURE + invites.token_hash(token)[:16], request.remote or ""
    until = await limited_until(context, account, address)
    if until is not None:
        await context.audit.record("web:invite:refused", code="rate-limited", address=address)
        message = "too many wrong codes for this invite; wait a few minutes and try again"
        return _enroll_page(request, enrollment, error=message, status=429)
    try:
        async with context.sessions() as db:
            user = await invites.redeem_invite(
                db,
                context.audit,
                context.vault,
                token,
                login=enrollment["login"],
                password=_unseal(context, enrollment["password"]),
                display_name=enrollment["display_name"],
                email=enrollment["email"],
                totp_secret=_unseal(context, enrollment["secret"]),
                code=code,
                now=context.clock(),
            )
    except (InvalidInput, Conflict) as exc:  # refusals audited by redeem_invite
        if exc.code == "code-invalid":
            await note_failure(context, account, address)
            return _enroll_page(request, enrollment, error=exc.message, status=400)
        session(request).pop(ENROLL)
        flash(request, exc.message, "error")
        return redirect(f"/invite/{token}")
    await sign_in(request, user, "invite")
    flash(request, "Your account is ready; you are signed in.", "success")
    return redirect("/")


def setup(app: web.Application) -> None:
    app.router.add_get("/invite/{token}", invite_get)
    app.router.add_post("/invite/{token}", invite_post)
    app.router.add_get("/invite/{token}/enroll", enroll_get)
    app.router.add_post("/invite/{token}/enroll", enroll_post)
    app.router.add_get("/keys", keys_get)
    app.router.add_post("/keys", keys_add)
    app.router.add_post("/keys/{key_id}/delete", keys_delete)
    app.router.add_get("/account", account_get)
    app.router.add_post("/account/password", password_post)
