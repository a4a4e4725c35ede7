"""One-time tickets for the gateway's browser door: the portal issues, the gateway redeems.

The portal (``web/``) never talks to the gateway. A vendor who has stepped up with a fresh
TOTP code gets a *connect* ticket for one grant, device and service; a staff observer gets
a *watch* ticket for one live session. The browser presents the ticket in its first
WebSocket message to the gateway, which calls ``redeem``.

A ticket is 32 random bytes (URL-safe base64); only its SHA-256 is stored, so a database
dump holds no usable ticket. It lives ``TICKET_SECONDS`` and is good once: ``redeem``
consumes it with one conditional UPDATE (not consumed, not expired), so of two gateway
nodes racing for the same ticket exactly one wins, on SQLite and PostgreSQL alike. A ticket
is also bound to the portal session that asked for it: once that session has ended (sign-
out, expiry) the ticket is refused even inside its minute.

Redeeming checks only the ticket. Whether the grant still covers the device now, and
whether the session is still live, are the gateway's questions (``policy.decide``), asked
right after, with the answer's reason shown in the browser.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from policy.errors import PolicyError
from policy.models import ConnectTicket, WebSession

TICKET_SECONDS = 60
CONNECT = "connect"
WATCH = "watch"
TOKEN_BYTES = 32
MAX_TOKEN = 100  # a real token is 43 characters; anything much longer is not one
KEEP = timedelta(days=1)  # expired tickets stay this long, so a late replay says "expired"

MESSAGES = {
    "ticket-malformed": "This is not a sallyport ticket. Open the terminal again from the portal.",
    "ticket-unknown": "This ticket is not known here. Open the terminal again from the portal.",
    "ticket-used": (
        "This ticket was already used: each one opens one session. Open the terminal "
        "again from the portal."
    ),
    "ticket-expired": (
        f"This ticket has expired (tickets are good for {TICKET_SECONDS} seconds). "
        "Open the terminal again from the portal."
    ),
    "portal-session-ended": (
        "The portal session that asked for this ticket has ended (signed out or expired). "
        "Sign in to the portal again."
    ),
}


class TicketRefused(PolicyError):
    """The ticket cannot be redeemed; ``code`` is one of ``MESSAGES``."""

    def __init__(self, code: str) -> None:
        super().__init__(code, MESSAGES[code])


@dataclass(frozen=True)
class Redeemed:
    """What a redeemed ticket was issued for."""

    purpose: str  # "connect" | "watch"
    actor: str  # login
    vendor_user_id: int | None
    staff_user_id: int | None
    grant_id: int | None
    device_id: int | None
    service: str | None
    session_id: str | None  # watch: the live session to join
    web_session_id: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _issue(db: AsyncSession, ticket: ConnectTicket, now: datetime) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    ticket.token_hash = token_hash(token)
    ticket.created_at = now
    ticket.expires_at = now + timedelta(seconds=TICKET_SECONDS)
    await db.execute(delete(ConnectTicket).where(ConnectTicket.expires_at <= now - KEEP))
    db.add(ticket)
    await db.commit()
    return token


async def issue_connect(
    db: AsyncSession,
    *,
    vendor_user_id: int,
    actor: str,
    grant_id: int,
    device_id: int,
    service: str,
    web_session_id: str,
    step_up_at: datetime,
    now: datetime,
) -> str:
    """A ticket for the vendor user to open ``service`` on the device under the grant;
    returns the token (shown once, to the browser). Commits."""
    ticket = ConnectTicket(
        purpose=CONNECT,
        vendor_user_id=vendor_user_id,
        actor=actor,
        grant_id=grant_id,
        device_id=device_id,
        service=service,
        web_session_id=web_session_id,
        step_up_at=step_up_at,
    )
    return await _issue(db, ticket, now)


async def issue_watch(
    db: AsyncSession,
    *,
    staff_user_id: int,
    actor: str,
    session_id: str,
    web_session_id: str,
    now: datetime,
) -> str:
    """A ticket for the staff user to watch the live session; returns the token. Commits."""
    ticket = ConnectTicket(
        purpose=WATCH,
        staff_user_id=staff_user_id,
        actor=actor,
        session_id=session_id,
        web_session_id=web_session_id,
    )
    return await _issue(db, ticket, now)


def _well_formed(token: str) -> bool:
    if not token or len(token) > MAX_TOKEN:
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in token)


async def redeem(db: AsyncSession, token: str, *, now: datetime, node: str) -> Redeemed:
    """Consume the ticket (once, atomically) and say what it was for; else raise
    ``TicketRefused`` naming why. Commits (a consumed ticket stays consumed even when its
    portal session turns out to have ended)."""
    if not _well_formed(token):
        raise TicketRefused("ticket-malformed")
    digest = token_hash(token)
    result = await db.execute(
        update(ConnectTicket)
        .where(
            ConnectTicket.token_hash == digest,
            ConnectTicket.consumed_at.is_(None),
            ConnectTicket.expires_at > now,
        )
        .values(consumed_at=now, consumed_node=node[:100])
        .execution_options(synchronize_session=False)
    )
    won = getattr(result, "rowcount", 0) == 1
    ticket = await db.scalar(select(ConnectTicket).where(ConnectTicket.token_hash == digest))
    if not won or ticket is None:
        why = (
            "ticket-unknown"
            if ticket is None
            else "ticket-used"
            if ticket.consumed_at is not None
            else "ticket-expired"
        )
        await db.rollback()
        raise TicketRefused(why)
    portal = await db.get(WebSession, ticket.web_session_id)
    alive = portal is not None and portal.expires_at > now
    redeemed = Redeemed(
        purpose=ticket.purpose,
        actor=ticket.actor,
        vendor_user_id=ticket.vendor_user_id,
        staff_user_id=ticket.staff_user_id,
        grant_id=ticket.grant_id,
        device_id=ticket.device_id,
        service=ticket.service,
        session_id=ticket.session_id,
        web_session_id=ticket.web_session_id,
    )
    await db.commit()
    if not alive:
        raise TicketRefused("portal-session-ended")
    return redeemed
