"""The browser door's pages: a vendor's terminal on a device, a staff observer's live view.

* ``GET /connect/{device}/terminal`` (vendors): what is about to open (device, ticket,
  window end) and a form for a fresh TOTP code. Every open needs its own code: the
  sign-in's code does not count.
* ``POST /connect/{device}/terminal``: checks again that a grant covers ``ssh`` on the
  device now (``policy.decide.decide_target``, as the gateway asks it), checks the code
  with sign-in's rules and replay guard (``web.auth.check_second_factor``), issues a
  one-time connect ticket bound to this portal session (``policy.tickets``) and answers
  the terminal page: xterm.js, talking to the gateway's browser door (the WebSocket URL
  ``Settings.browser_door_url()``) with the ticket. The gateway redeems the ticket,
  decides again and runs the session; the portal never talks to the gateway.
* ``GET /live/{session_id}/watch`` (security, biomed): a watch ticket for a live
  session and a read-only terminal with an "End session" button.

Audit: ``web:ticket:issue`` (purpose, device, grant or session; never the ticket),
``web:ticket:deny`` with the reason (no grant, no ssh service, session not live) and
``web:stepup:fail`` with the reason of a refused code; each refusal page says why.

CSP: the terminal pages add ``connect-src`` for the door's origin. xterm.js writes its
own ``<style>`` elements (cell size, colours) and colours some cells with ``style``
attributes: the page allows style elements carrying its per-response nonce (the glue
script sets it on the elements xterm.js creates) and inline style attributes; scripts
stay ``'self'`` only, and images and connections stay where they were, so an injected
style has nowhere to send anything.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from policy import store, tickets
from policy.config import Settings
from policy.decide import Decision, Reason, decide_target
from policy.errors import Conflict, Forbidden, NotFound, PolicyError
from policy.models import Device, VendorUser
from policy.models import Session as SessionRow
from policy.moderation import OBSERVER_ROLES
from web import sessions
from web.auth import check_second_factor, principal, requires
from web.context import ctx
from web.errors import status_for
from web.render import render
from web.security import CSP

SERVICE = "ssh"
WATCHERS = tuple(sorted(OBSERVER_ROLES))  # the gateway lets only these watch
XTERM_DIR = Path(__file__).parent / "assets" / "node_modules" / "@xterm"
XTERM_FILES = {
    "xterm.js": XTERM_DIR / "xterm" / "lib" / "xterm.js",
    "xterm.css": XTERM_DIR / "xterm" / "css" / "xterm.css",
    "addon-fit.js": XTERM_DIR / "addon-fit" / "lib" / "addon-fit.js",
}
assert "style-src 'self'" in CSP, "web.security.CSP no longer has style-src 'self'"

# Why a vendor may not open a terminal, said for people (from policy.decide's reasons).
DENIED = {
    Reason.DEVICE_UNKNOWN: "You have no grant for {device}.",
    Reason.NO_GRANT: "You have no grant for {device}.",
    Reason.SERVICE_NOT_GRANTED: "Your grant for {device} does not include ssh.",
    Reason.GRANT_REVOKED: "Your grant for {device} was revoked.",
}


def door_origin(url: str) -> str:
    """The scheme, host and port of the door's WebSocket URL, as a CSP source."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("ws", "wss") or not host:
        raise ValueError(f"the browser door URL {url!r} is not a ws:// or wss:// URL")
    return f"{parts.scheme}://{host}"


def door_csp(settings: Settings, nonce: str) -> str:
    """The portal's CSP for a terminal page (see the module docstring)."""
    styles = (
        f"style-src 'self' 'nonce-{nonce}'; style-src-elem 'self' 'nonce-{nonce}'; "
        "style-src-attr 'unsafe-inline'"
    )
    origin = door_origin(settings.browser_door_url())
    return CSP.replace("style-src 'self'", styles) + f"; connect-src 'self' {origin}"


def _page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    settings = ctx(request).settings
    response = render(
        request,
        template,
        status=status,
        door_url=settings.browser_door_url(),
        style_nonce=nonce,
        **values,
    )
    response.headers["Content-Security-Policy"] = door_csp(settings, nonce)
    return response


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


# --- the vendor's terminal ---------------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """What the vendor is about to open: the device and the grant that covers it now."""

    device: Device
    decision: Decision

    @property
    def ticket_ref(self) -> str:
        assert self.decision.grant is not None
        return self.decision.grant.ticket_ref

    @property
    def grant_id(self) -> int:
        assert self.decision.grant is not None
        return self.decision.grant.id


async def _opening(db: AsyncSession, vendor_user_id: int, name: str, now: datetime) -> Opening:
    """The grant covering ssh on the device now, else a refusal naming why."""
    device = await store.device(db, name)
    grants = await store.grants_for(db, vendor_user_id)
    decision = decide_target(name, device is not None, SERVICE, grants, now)
    if not decision.allow:
        template = DENIED.get(decision.reason)
        if template is not None:
            message = template.format(device=name)
        else:  # the window: when it starts, ended, or the next occurrence
            message = f"Your grant for {name} is not open now: {decision.detail}."
        code = "no-grant" if decision.reason is Reason.DEVICE_UNKNOWN else decision.reason.value
        raise Forbidden(code, message)
    assert device is not None
    if not any(s.name == SERVICE for s in device.services):
        raise Conflict("no-ssh-service", f"{name} has no ssh service to open a terminal on.")
    return Opening(device, decision)


async def _deny(request: web.Request, exc: PolicyError, **detail: Any) -> web.Response:
    await ctx(request).audit.record(
        "web:ticket:deny",
        actor=principal(request).name,
        reason=exc.code,
        message=exc.message,
        **detail,
    )
    return render(
        request,
        "terminal_refused.html",
        status=status_for(exc),
        error=exc.message,
        **detail,
    )


def _form(
    request: web.Request, opening: Opening, status: int = 200, error: str = ""
) -> web.Response:
    return render(
        request,
        "terminal_stepup.html",
        status=status,
        error=error or None,
        device=opening.device.name,
        ticket_ref=opening.ticket_ref,
        window_end=when(opening.decision.window_end),
    )


@requires("vendor")
async def terminal_get(request: web.Request) -> web.StreamResponse:
    name = request.match_info["device"]
    context = ctx(request)
    try:
        async with context.sessions() as db:
            opening = await _opening(db, principal(request).id, name, context.clock())
    except PolicyError as exc:
        return await _deny(request, exc, device=name[:100], purpose=tickets.CONNECT)
    return _form(request, opening)


@requires("vendor")
async def terminal_post(request: web.Request) -> web.StreamResponse:
    name = request.match_info["device"]
    context = ctx(request)
    who = principal(request)
    now = context.clock()
    portal = sessions.session(request).key
    try:
        if portal is None:
            raise Forbidden(
                "browser-session-required", "Open the terminal from a signed-in browser."
            )
        async with context.sessions() as db:
            opening = await _opening(db, who.id, name, now)
            user = await db.get(VendorUser, who.id)
    except PolicyError as exc:
        return await _deny(request, exc, device=name[:100], purpose=tickets.CONNECT)
    assert user is not None
    form = await request.post()
    outcome = await check_second_factor(context, user, str(form.get("code", "")).strip(), now)
    if outcome.user is None:
        await context.audit.record(
            "web:stepup:fail",
            actor=who.name,
            device=opening.device.name,
            reason=outcome.reason,
            purpose=tickets.CONNECT,
        )
        status = 429 if outcome.reason == "locked" or outcome.locked_until else 401
        message = outcome.message
        if outcome.reason == "code-replayed":
            message = "That code was already used. Wait for the next code and enter it."
        return _form(request, opening, status=status, error=message)
    async with context.sessions() as db:
        token = await tickets.issue_connect(
            db,
            vendor_user_id=who.id,
            actor=who.login,
            grant_id=opening.grant_id,
            device_id=opening.device.id,
            service=SERVICE,
            web_session_id=portal,
            step_up_at=now,
            now=now,
        )
    await context.audit.record(
        "web:ticket:issue",
        actor=who.name,
        device=opening.device.name,
        purpose=tickets.CONNECT,
        grant_id=opening.grant_id,
        ticket_ref=opening.ticket_ref,
        service=SERVICE,
    )
    return _page(
        request,
        "terminal.html",
        mode="vendor",
        ticket=token,
        device=opening.device.name,
        ticket_ref=opening.ticket_ref,
        window_end=when(opening.decision.window_end),
    )


# --- watching a live session -------------------------------------------------------------


@requires(*WATCHERS)
async def watch_get(request: web.Request) -> web.StreamResponse:
    session_id = request.match_info["session_id"]
    context = ctx(request)
    who = principal(request)
    portal = sessions.session(request).key
    now = context.clock()
    try:
        if portal is None:
            raise Forbidden("browser-session-required", "Watch from a signed-in browser.")
        async with context.sessions() as db:
            live = await db.get(SessionRow, session_id[:32])
            if live is None:
                raise NotFound("session-unknown", f"There is no session {session_id}.")
            if live.ended_at is not None:
                raise Conflict(
                    "session-ended",
                    f"Session {session_id} has ended ({live.end_reason or 'no reason given'}); "
                    "its recording is on the session page.",
                )
            device = (live.device_snapshot or {}).get("name") or ""
            token = await tickets.issue_watch(
                db,
                staff_user_id=who.id,
                actor=who.login,
                session_id=live.id,
                web_session_id=portal,
                now=now,
            )
    except PolicyError as exc:
        return await _deny(request, exc, session_id=session_id[:32], purpose=tickets.WATCH)
    await context.audit.record(
        "web:ticket:issue",
        actor=who.name,
        device=device or None,
        session_id=live.id,
        purpose=tickets.WATCH,
    )
    return _page(
        request,
        "watch.html",
        mode="observer",
        ticket=token,
        session=live,
        device=device,
        ticket_ref=live.ticket_ref,
        moderated=live.observer_required,
    )


# --- xterm.js's files ----------------------------------------------------------------------


def _xterm_file(name: str) -> Any:
    path = XTERM_FILES[name]

    async def serve(request: web.Request) -> web.StreamResponse:
        """One file of the npm packages; missing means ``./dev`` (npm ci) did not run."""
        if not path.is_file():
            raise NotFound(
                "xterm-missing", "the browser terminal is not installed; run the project setup"
            )
        return web.FileResponse(path)

    return serve


def setup(app: web.Application) -> None:
    for name in XTERM_FILES:
        app.router.add_get(f"/static/xterm/{name}", _xterm_file(name))
    app.router.add_get("/connect/{device}/terminal", terminal_get)
    app.router.add_post("/connect/{device}/terminal", terminal_post)
    app.router.add_get("/live/{session_id}/watch", watch_get)
