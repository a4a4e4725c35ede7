"""Server-side browser sessions in the ``web_session`` table.

The cookie ``sallyport_session`` holds 32 random bytes (URL-safe base64); the row's id is
their SHA-256, so a copy of the database does not hand out live cookies. The row holds
the session's data (who signed in, the CSRF secret, flash messages, an enrollment in
progress) as JSON.

Expiry is enforced here, on the server: a session ends ``web_session_minutes`` after it
began (absolute) or ``web_idle_minutes`` after the last request (idle). ``expires_at``
is the earlier of the two and moves forward as requests come in; to keep a busy browser
from writing the row on every click it moves only when it would gain ``TOUCH`` or more.

Cookie attributes: HttpOnly; Secure unless ``web_cookie_secure`` is off (plain-HTTP
demos and tests); SameSite=Lax. Lax, not Strict, because staff follow links from
notification emails ("request 12 needs your approval"): under Strict that first
top-level navigation arrives without the cookie and a signed-in user is sent to the login
page. Lax still withholds the cookie from cross-site POSTs, frames and subresource loads,
GET handlers change nothing, and every unsafe method also needs the CSRF token
(web.security). Invite links carry no session either way, so they are not the reason.

A session is created in the database only when something is stored in it (a sign-in, a
flash message, an enrollment); anonymous page views write nothing. ``start`` replaces
the current session with a fresh id (sign-in, so a planted cookie cannot be promoted:
no session fixation) and ``end`` deletes the row (sign-out).

``web.auth.auth_middleware`` loads the session before the handler and saves it after.
Handlers that change the session must *return* their response (or raise an aiohttp
``HTTPException``); a ``PolicyError`` discards the session changes of that request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import delete

from policy.models import WebSession
from web.context import CTX, WebContext

COOKIE = "sallyport_session"
CSRF_COOKIE = "sallyport_csrf"  # the CSRF secret of a browser without a stored session
TOUCH = timedelta(seconds=60)


@dataclass
class BrowserSession:
    """One request's view of its session; the middleware writes it back after the handler."""

    data: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # the row id (SHA-256 of the cookie token); None: not stored
    created_at: datetime | None = None
    expires_at: datetime | None = None
    changed: bool = False
    new_token: str | None = None  # a cookie to send (a new session)
    clear_cookie: bool = False  # the browser holds a cookie for a session that is gone
    ended: str | None = None  # why the cookie's session is gone: "idle", "absolute", "logout"
    ended_data: dict[str, Any] = field(default_factory=dict)  # its data, for the audit event

    @property
    def stored(self) -> bool:
        return self.key is not None

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    def __setitem__(self, name: str, value: Any) -> None:
        self.data[name] = value
        self.changed = True

    def pop(self, name: str, default: Any = None) -> Any:
        if name in self.data:
            self.changed = True
        return self.data.pop(name, default)


SESSION: web.RequestKey[BrowserSession] = web.RequestKey("sallyport_session", BrowserSession)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session(request: web.Request) -> BrowserSession:
    """The request's session (an empty, unstored one where sessions are not loaded)."""
    found = request.get(SESSION)
    if found is None:
        found = BrowserSession()
        request[SESSION] = found
    return found


def _limits(ctx: WebContext) -> tuple[timedelta, timedelta]:
    settings = ctx.settings
    return timedelta(minutes=settings.web_session_minutes), timedelta(
        minutes=settings.web_idle_minutes
    )


async def load(request: web.Request) -> BrowserSession:
    """The session the request's cookie names, or an empty one when it has none, names
    an unknown row, or names an expired one (whose row is then deleted)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return BrowserSession()
    ctx = request.app[CTX]
    key = token_hash(token)
    async with ctx.sessions() as db:
        row = await db.get(WebSession, key)
        if row is None:
            return BrowserSession(clear_cookie=True)
        now = ctx.clock()
        absolute, _idle = _limits(ctx)
        if row.created_at + absolute <= now or row.expires_at <= now:
            reason = "absolute" if row.created_at + absolute <= now else "idle"
            data = dict(row.data)
            await db.delete(row)
            await db.commit()
            return BrowserSession(clear_cookie=True, ended=reason, ended_data=data)
        return BrowserSession(dict(row.data), key, row.created_at, row.expires_at)


async def start(request: web.Request, data: dict[str, Any]) -> BrowserSession:
    """Replace the request's session with a new one holding ``data`` and a fresh CSRF
    secret, under a new cookie; the old row (if any) is deleted."""
    ctx = request.app[CTX]
    old = session(request)
    token = secrets.token_urlsafe(32)
    now = ctx.clock()
    absolute, idle = _limits(ctx)
    fresh = BrowserSession(
        {**data, "csrf": secrets.token_urlsafe(32)},
        token_hash(token),
        now,
        min(now + absolute, now + idle),
        new_token=token,
    )
    async with ctx.sessions() as db:
        if old.key is not None:
            await db.execute(delete(WebSession).where(WebSession.id == old.key))
        db.add(
            WebSession(id=fresh.key, data=fresh.data, created_at=now, expires_at=fresh.expires_at)
        )
        await db.commit()
    request[SESSION] = fresh
    return fresh


async def end(request: web.Request) -> dict[str, Any]:
    """Delete the request's session (sign-out); returns the data it held."""
    ctx = request.app[CTX]
    old = session(request)
    if old.key is not None:
        async with ctx.sessions() as db:
            await db.execute(delete(WebSession).where(WebSession.id == old.key))
            await db.commit()
    request[SESSION] = BrowserSession(clear_cookie=True, ended="logout", ended_data=old.data)
    return old.data


async def purge_expired(ctx: WebContext) -> int:
    """Delete every expired row (called at sign-in; rows of abandoned browsers go too)."""
    async with ctx.sessions() as db:
        result = await db.execute(delete(WebSession).where(WebSession.expires_at <= ctx.clock()))
        await db.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def save(request: web.Request, response: web.StreamResponse) -> None:
    """Write the session back (new data, a later idle deadline) and set or clear the cookie."""
    current = request.get(SESSION)
    if current is None:
        return
    ctx = request.app[CTX]
    if current.new_token is not None:
        _set_cookie(ctx, response, current.new_token)
    elif current.clear_cookie and not current.stored and not current.changed:
        response.del_cookie(COOKIE, path="/")
    if current.stored:
        await _write_back(ctx, current)
    elif current.changed and current.data:
        await _store_anonymous(request, ctx, current, response)


async def _write_back(ctx: WebContext, current: BrowserSession) -> None:
    assert current.key is not None and current.created_at is not None
    now = ctx.clock()
    absolute, idle = _limits(ctx)
    deadline = min(current.created_at + absolute, now + idle)
    moved = current.expires_at is None or deadline - current.expires_at >= TOUCH
    if not (current.changed or moved):
        return
    async with ctx.sessions() as db:
        row = await db.get(WebSession, current.key)
        if row is None:  # signed out by another request meanwhile
            return
        if current.changed:  # else leave the data alone: a parallel request may have written
            row.data = dict(current.data)
        row.expires_at = deadline
        await db.commit()


async def _store_anonymous(
    request: web.Request, ctx: WebContext, current: BrowserSession, response: web.StreamResponse
) -> None:
    """An anonymous browser stored something (a flash, an enrollment): give it a row."""
    token = secrets.token_urlsafe(32)
    now = ctx.clock()
    absolute, idle = _limits(ctx)
    data = dict(current.data)
    # the CSRF secret the page was rendered with carries over, so its forms still work
    data.setdefault("csrf", request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32))
    async with ctx.sessions() as db:
        db.add(
            WebSession(
                id=token_hash(token),
                data=data,
                created_at=now,
                expires_at=min(now + absolute, now + idle),
            )
        )
        await db.commit()
    _set_cookie(ctx, response, token)


def _set_cookie(ctx: WebContext, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        path="/",
        httponly=True,
        secure=ctx.settings.web_cookie_secure,
        samesite="Lax",
    )
