"""Who is asking, and may they: sign-in, sign-out, API tokens, and refusal by default.

``auth_middleware`` runs for every request. It loads the browser session, resolves the
principal (a signed-in session, or ``Authorization: Bearer spt_...``), and refuses the
request unless its route is in ``PUBLIC`` or a principal was found: pages redirect to
``/login?next=...``, ``/api/`` answers 401 ``{code, message}``. A new route is therefore
private unless someone adds it to ``PUBLIC`` here; tests/web/test_auth.py walks the router
to prove it.

Inside a handler::

    @requires("biomed", "security")          # any of these roles, else 403 with a reason
    async def queue(request: web.Request) -> web.StreamResponse:
        who = principal(request)               # web.context.Principal
        async with ctx(request).sessions() as db:
            await workflow.approve(db, ..., actor(request), ...)   # policy.actor.Actor

Sign-in (``/login``) takes the kind of user (hospital staff or vendor), login, password
and TOTP code in one form. Wrong login, password or code get one message; the audit event
``web:login:failed`` names the precise reason. More than ``web_login_attempts`` failures
for a login within ``web_login_window`` seconds (or four times that from one address)
refuse further attempts without checking the password, until the window has passed.
A TOTP code is good once (per user, across gateway and web for vendors). A vendor's wrong
codes count towards the same lockout as at the gateway (``policy.store``).

Client addresses are ``request.remote``: behind a reverse proxy that is the proxy, so the
per-address limit then counts everyone together; run the portal with the proxy's
forwarded-address handling configured (``aiohttp-remotes``) or rely on the per-login limit.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from policy import store, tokens, totp
from policy.actor import Actor
from policy.errors import Forbidden
from policy.models import LoginFailure, StaffUser, VendorUser
from policy.passwords import hash_password, verify_password
from policy.vault import TOTP_SECRET
from web import sessions
from web.context import CTX, PRINCIPAL, Principal, WebContext, ctx
from web.errors import json_error
from web.render import redirect, render, safe_next

log = structlog.get_logger("web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The only routes an anonymous request may reach (canonical paths as registered).
PUBLIC = frozenset(
    {
        "/login",
        "/invite/{token}",
        "/invite/{token}/enroll",
        "/static",
        "/api/v1/health",
        "/api/v1/openapi.json",
        "/metrics",
    }
)
# Public routes served without loading a session (no database access): probes, files.
BARE = frozenset({"/static", "/api/v1/health", "/api/v1/openapi.json", "/metrics"})
assert BARE <= PUBLIC

KINDS = {"staff": "Hospital staff", "vendor": "Vendor"}
FAILED = "The login, password or verification code is not correct."


def route_path(request: web.Request) -> str | None:
    """The canonical path of the matched route (``/invite/{token}``), None if unmatched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def is_public(request: web.Request) -> bool:
    return route_path(request) in PUBLIC


def is_bare(request: web.Request) -> bool:
    return route_path(request) in BARE


def principal(request: web.Request) -> Principal:
    """The principal of a request that passed the middleware (any non-public route)."""
    if PRINCIPAL not in request:
        raise RuntimeError(f"{request.path} is public: there is no principal")
    return request[PRINCIPAL]


def maybe_principal(request: web.Request) -> Principal | None:
    return request[PRINCIPAL] if PRINCIPAL in request else None


def actor(request: web.Request) -> Actor:
    """The principal as the workflow's ``policy.actor.Actor`` (via "web" or "api")."""
    who = principal(request)
    via = "api" if who.via == "token" else "web"
    return Actor(kind=who.kind, id=who.id, login=who.login, roles=who.roles, via=via)


def requires(*roles: str) -> Callable[[Handler], Handler]:
    """Let the handler run only for principals holding any of ``roles`` (vendors hold
    "vendor"); others get 403 naming the roles needed, audited as ``web:access:refused``."""
    allowed = frozenset(roles)
    if not allowed:
        raise ValueError("requires() needs at least one role")

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            who = principal(request)
            if not who.roles & allowed:
                needed = " or ".join(sorted(allowed))
                await ctx(request).audit.record(
                    "web:access:refused",
                    actor=who.name,
                    method=request.method,
                    path=request.path,
                    needed=sorted(allowed),
                    roles=sorted(who.roles),
                )
                raise Forbidden("role-required", f"this needs the {needed} role")
            return await handler(request)

        checked.required_roles = allowed  # type: ignore[attr-defined]
        return checked

    return wrap


# --- resolving the principal -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str


def _staff_principal(user: StaffUser, via: str, token: str | None = None) -> Principal:
    return Principal(
        kind="staff",
        id=user.id,
        login=user.login,
        roles=frozenset(user.roles),
        via=via,
        display_name=user.display_name,
        token_name=token,
    )


def _vendor_principal(user: VendorUser, via: str, token: str | None = None) -> Principal:
    return Principal(
        kind="vendor",
        id=user.id,
        login=user.login,
        roles=frozenset({"vendor"}),
        via=via,
        display_name=user.display_name,
        vendor_id=user.vendor_id,
        token_name=token,
    )


async def _load_user(db: AsyncSession, kind: str, user_id: int) -> StaffUser | VendorUser | None:
    model: type[StaffUser] | type[VendorUser] = StaffUser if kind == "staff" else VendorUser
    return await db.get(model, user_id)


async def _from_session(request: web.Request) -> Principal | None:
    current = sessions.session(request)
    kind, user_id = current.get("kind"), current.get("user_id")
    if kind not in KINDS or not isinstance(user_id, int):
        return None
    context = ctx(request)
    async with context.sessions() as db:
        user = await _load_user(db, kind, user_id)
    if user is None or user.disabled:
        await sessions.end(request)
        await context.audit.record(
            "web:session:ended",
            actor=f"{kind}:{current.get('login', '')}",
            reason="account-disabled" if user is not None else "account-removed",
        )
        return None
    if isinstance(user, StaffUser):
        return _staff_principal(user, "session")
    return _vendor_principal(user, "session")


async def _from_token(request: web.Request, header: str) -> Principal | Refusal:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(tokens.PREFIX):
        return Refusal("token-invalid", "use the header Authorization: Bearer spt_...")
    context = ctx(request)
    address = request.remote or ""
    until = await limited_until(context, None, address)
    if until is not None:
        return Refusal(
            "rate-limited",
            f"too many invalid API tokens from your address; try again after {_after(until)} UTC",
        )
    async with context.sessions() as db:
        row = await tokens.authenticate(db, token, context.clock())
        user: StaffUser | VendorUser | None = None
        if row is not None and row.staff_user_id is not None:
            user = await db.get(StaffUser, row.staff_user_id)
        elif row is not None and row.vendor_user_id is not None:
            user = await db.get(VendorUser, row.vendor_user_id)
    if row is None or user is None:
        await note_failure(context, TOKEN_FAILURE, address)
        return Refusal(
            "token-invalid", "the API token is not valid: unknown, revoked, or its user disabled"
        )
    if isinstance(user, StaffUser):
        return _staff_principal(user, "token", row.name)
    return _vendor_principal(user, "token", row.name)


def _refuse_anonymous(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        return json_error(
            "authentication-required",
            "sign in or send an API token (Authorization: Bearer spt_...)",
            401,
        )
    # after sign-in the browser GETs ``next``: a form's POST target would be no page at all
    query = {"next": request.path_qs} if request.method in ("GET", "HEAD") else {}
    ended = sessions.session(request).ended
    if ended in ("idle", "absolute"):
        query["expired"] = ended
    return redirect(f"/login?{urlencode(query, quote_via=quote)}" if query else "/login")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Load the session, find the principal, refuse anonymous access to private routes,
    then save the session after the handler (also for a raised redirect)."""
    if is_bare(request):
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is not None:
        found = await _from_token(request, header)
        if isinstance(found, Refusal):
            await ctx(request).audit.record(
                "web:token:refused",
                reason=found.code,
                path=request.path,
                address=request.remote or "",
            )
            if found.code == "rate-limited":
                limited = json_error(found.code, found.message, 429)
                limited.headers["Retry-After"] = str(context_retry(request))
                return limited
            return json_error(found.code, found.message, 401)
        request[PRINCIPAL] = found
        return await handler(request)  # no cookies: a token request has no session
    request[sessions.SESSION] = await sessions.load(request)
    await _audit_expiry(request)
    who = await _from_session(request)
    if who is not None:
        request[PRINCIPAL] = who
    elif not is_public(request) and request.match_info.http_exception is None:
        response = _refuse_anonymous(request)
        await sessions.save(request, response)
        return response
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        await sessions.save(request, exc)
        raise
    await sessions.save(request, response)
    return response


async def _audit_expiry(request: web.Request) -> None:
    current = sessions.session(request)
    if current.ended in ("idle", "absolute") and current.ended_data.get("kind") in KINDS:
        data = current.ended_data
        await ctx(request).audit.record(
            "web:session:expired",
            actor=f"{data['kind']}:{data.get('login', '')}",
            reason=current.ended,
        )


# --- sign-in ------------------------------------------------------------------------------


@functools.cache
def _dummy_hash() -> str:
    """Verified against for unknown logins, so they take as long as known ones."""
    return hash_password("sallyport: no such user")


async def _verify(password: str, stored: str | None) -> bool:
    """scrypt takes tens of milliseconds of CPU: keep it off the event loop."""
    return await asyncio.to_thread(lambda: verify_password(password, stored or _dummy_hash()))


def _after(until: datetime) -> str:
    """``HH:MM`` UTC, rounded up to the minute so "after" is true."""
    minute = math.ceil(until.timestamp() / 60) * 60
    return datetime.fromtimestamp(minute, tz=until.tzinfo).strftime("%H:%M")


async def limited_until(context: WebContext, login: str | None, address: str) -> datetime | None:
    """When this login (or address) may try again, if it has failed too often lately.
    ``login`` None: the address alone (bad API tokens and invite links name no account)."""
    settings = context.settings
    now = context.clock()
    window = timedelta(seconds=settings.web_login_window)
    limits = [(LoginFailure.address == address, settings.web_login_attempts * 4)]
    if login is not None:
        limits.insert(0, (LoginFailure.login == login, settings.web_login_attempts))
    until: datetime | None = None
    async with context.sessions() as db:
        for where, limit in limits:
            times = (
                await db.scalars(
                    select(LoginFailure.at)
                    .where(where, LoginFailure.at > now - window)
                    .order_by(LoginFailure.at.desc())
                    .limit(limit)
                )
            ).all()
            if limit > 0 and len(times) >= limit:
                ends = times[limit - 1] + window  # when the oldest counted failure ages out
                until = ends if until is None else max(until, ends)
    return until


def context_retry(request: web.Request) -> int:
    """Retry-After for a rate-limited request: the failure window, in seconds."""
    return ctx(request).settings.web_login_window


# not logins anyone can have ("#" is not allowed in one): counted per address only
TOKEN_FAILURE = "#api-token"  # noqa: S105 - a label, not a secret
INVITE_FAILURE = "#invite:"


async def note_failure(context: WebContext, login: str, address: str) -> None:
    now = context.clock()
    async with context.sessions() as db:
        db.add(LoginFailure(login=login[:64], address=address[:100], at=now))
        old = now - timedelta(seconds=context.settings.web_login_window)
        await db.execute(delete(LoginFailure).where(LoginFailure.at <= old))
        await db.commit()


async def _accept_staff_step(db: AsyncSession, user_id: int, step: int) -> bool:
    """Move the staff user's last accepted step forward; False if this step (or a later
    one) was already used: the same replay rule as ``policy.store.accept_totp_step``."""
    result = await db.execute(
        update(StaffUser)
        .where(StaffUser.id == user_id)
        .where(or_(StaffUser.totp_last_step.is_(None), StaffUser.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    await db.commit()
    return bool(getattr(result, "rowcount", 0) == 1)


@dataclass(frozen=True)
class Attempt:
    kind: str
    login: str
    password: str
    code: str
    address: str


@dataclass(frozen=True)
class Outcome:
    """A sign-in's result: ``user`` on success, else the reason (audit) and the message."""

    user: StaffUser | VendorUser | None
    reason: str = ""
    message: str = FAILED
    locked_until: datetime | None = None  # a vendor's wrong code started the MFA lockout


async def _find_user(db: AsyncSession, kind: str, login: str) -> StaffUser | VendorUser | None:
    if kind == "staff":
        return await db.scalar(select(StaffUser).where(StaffUser.login == login))
    return await db.scalar(select(VendorUser).where(VendorUser.login == login))


async def authenticate(context: WebContext, attempt: Attempt) -> Outcome:
    """Check one sign-in attempt; the caller records failures and starts the session."""
    until = await limited_until(context, attempt.login, attempt.address)
    if until is not None:
        message = f"Too many failed attempts; try again after {_after(until)} UTC."
        return Outcome(None, "rate-limited", message)
    now = context.clock()
    async with context.sessions() as db:
        user = await _find_user(db, attempt.kind, attempt.login)
    if user is not None and user.locked_until is not None and user.locked_until > now:
        message = f"Too many failed attempts; try again after {_after(user.locked_until)} UTC."
        return Outcome(None, "locked", message)
    if not await _verify(attempt.password, user.password_hash if user else None):
        return Outcome(None, "unknown-user" if user is None else "wrong-password")
    assert user is not None
    return await check_second_factor(context, user, attempt.code, now)


async def check_second_factor(
    context: WebContext, user: StaffUser | VendorUser, code: str, now: datetime
) -> Outcome:
    """The second factor alone, with sign-in's rules: the account is enabled and not
    locked, the code is right and not used before (the replay guard), and a vendor's
    wrong code counts towards the MFA lockout. Sign-in calls it after the password; a
    step-up (``web.terminal``) calls it on its own."""
    if user.disabled:
        return Outcome(None, "disabled", "This account is disabled; ask an administrator.")
    if user.locked_until is not None and user.locked_until > now:
        message = f"Too many failed attempts; try again after {_after(user.locked_until)} UTC."
        return Outcome(None, "locked", message)
    if user.totp_secret is None:
        return Outcome(None, "not-enrolled", "This account has no authenticator enrolled yet.")
    return await _check_code(context, user, code, now)


async def _check_code(
    context: WebContext, user: StaffUser | VendorUser, code: str, now: datetime
) -> Outcome:
    assert user.totp_secret is not None
    secret = context.vault.open_text(user.totp_secret, TOTP_SECRET)
    check = totp.check_code(secret, code, now, user.totp_last_step)
    async with context.sessions() as db:
        if check.ok and check.step is not None:
            if isinstance(user, StaffUser):
                accepted = await _accept_staff_step(db, user.id, check.step)
            else:
                accepted = await store.accept_totp_step(db, user.id, check.step)
            if accepted:
                return Outcome(user)
            return Outcome(None, "code-replayed")
        locked: datetime | None = None
        if isinstance(user, VendorUser):  # the gateway's MFA lockout counts web codes too
            locked = await store.note_totp_failure(db, user.id, now)
    reason = {"malformed": "malformed-code", "replayed": "code-replayed"}.get(
        check.outcome.value, "wrong-code"
    )
    if locked is not None:
        return Outcome(None, reason, FAILED, locked)
    return Outcome(None, reason)


async def sign_in(request: web.Request, user: StaffUser | VendorUser, method: str) -> None:
    """Start a fresh session for ``user`` (new cookie, old row gone) and audit it."""
    kind = "staff" if isinstance(user, StaffUser) else "vendor"
    context = ctx(request)
    await sessions.purge_expired(context)
    await sessions.start(
        request,
        {
            "kind": kind,
            "user_id": user.id,
            "login": user.login,
            "signed_in_at": context.clock().isoformat(),
        },
    )
    async with context.sessions() as db:
        await db.execute(delete(LoginFailure).where(LoginFailure.login == user.login))
        await db.commit()
    await context.audit.record(
        "web:login:succeeded",
        actor=f"{kind}:{user.login}",
        method=method,
        address=request.remote or "",
    )


def _login_page(
    request: web.Request,
    *,
    status: int = 200,
    error: str | None = None,
    kind: str = "staff",
    login: str = "",
    notice: str | None = None,
) -> web.Response:
    return render(
        request,
        "login.html",
        status=status,
        error=error,
        notice=notice,
        kinds=KINDS,
        kind=kind if kind in KINDS else "staff",
        login=login,
        next=safe_next(request.query.get("next"), ""),
        banner=ctx(request).settings.banner_text(),  # system use notification (AC-8)
    )


NOTICES = {
    "idle": "You were signed out after a period without activity. Please sign in again.",
    "absolute": "Your session reached its maximum length. Please sign in again.",
}


async def login_get(request: web.Request) -> web.StreamResponse:
    if maybe_principal(request) is not None:
        return redirect(safe_next(request.query.get("next")))
    notice = NOTICES.get(request.query.get("expired", ""))
    if request.query.get("signed_out"):
        notice = "You have signed out."
    return _login_page(request, kind=request.query.get("kind", "staff"), notice=notice)


async def login_post(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    kind = str(form.get("kind", "staff"))
    login = str(form.get("login", "")).strip()
    attempt = Attempt(
        kind=kind,
        login=login,
        password=str(form.get("password", "")),
        code=str(form.get("code", "")),
        address=request.remote or "",
    )
    context = ctx(request)
    if kind not in KINDS or not login:
        message = "Choose hospital staff or vendor and enter your login."
        return _login_page(request, status=400, error=message, kind=kind, login=login)
    outcome = await authenticate(context, attempt)
    if outcome.user is None:
        if outcome.reason not in ("rate-limited", "locked"):
            await note_failure(context, login, attempt.address)
        extra: dict[str, Any] = {}
        if outcome.locked_until is not None:
            extra["locked_until"] = outcome.locked_until.isoformat()
        await context.audit.record(
            "web:login:failed",
            actor=f"{kind}:{login[:64]}",
            reason=outcome.reason,
            address=attempt.address,
            **extra,
        )
        status = 429 if outcome.reason in ("rate-limited", "locked") else 401
        return _login_page(request, status=status, error=outcome.message, kind=kind, login=login)
    await sign_in(request, outcome.user, "password+totp")
    return redirect(safe_next(str(form.get("next", "")) or None))


async def logout_post(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    await sessions.end(request)
    await ctx(request).audit.record(
        "web:session:ended", actor=who.name, reason="logout", address=request.remote or ""
    )
    return redirect("/login?signed_out=1")


def setup(app: web.Application) -> None:
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout_post)


__all__ = [
    "BARE",
    "CTX",
    "PUBLIC",
    "Principal",
    "actor",
    "auth_middleware",
    "maybe_principal",
    "principal",
    "requires",
    "setup",
]
