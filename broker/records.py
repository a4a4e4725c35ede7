"""The session core's bookkeeping (``broker.session``), whatever the front door: the Session
row, its Recording rows, the audit events that open and close them, and the
session.started / session.ended notifications."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from policy.models import Recording, RecordingStatus, Session, new_id, utcnow
from policy.notify import session_payload
from policy.snapshot import device_snapshot
from recorder import metrics
from recorder.audit import Event
from recorder.storage import StoredObject

if TYPE_CHECKING:
    from broker.context import GatewayContext
    from broker.session import LiveSession

log = structlog.get_logger(__name__)


@dataclass
class SessionEnd:
    reason: str
    exit_status: int | None = None
    stored: list[StoredObject] = field(default_factory=list)
    bytes_from_vendor: int | None = None
    bytes_from_device: int | None = None


async def open_session(live: LiveSession) -> str:
    """Create the Session row and audit its start, in one transaction (both or neither:
    a failure raises and the session is refused); returns the session id."""
    ctx, device, grant = live.ctx, live.device, live.grant
    session = Session(
        id=new_id(),
        vendor_user_id=live.who.user_id,
        device_id=device.id,
        grant_id=grant.id,
        ticket_ref=grant.ticket_ref,
        kind=live.kind,
        command=live.command,
        client_address=live.who.client,
        gateway_node=ctx.settings.node_name,
        device_snapshot=device_snapshot(device),  # later inventory edits do not rewrite this
        observer_required=live.moderated,
    )
    start = _event(
        live,
        "broker:session:start",
        session_id=session.id,
        grant=grant.id,
        ticket=grant.ticket_ref,
        kind=live.kind,
        command=live.command,
        node=ctx.settings.node_name,
        **({"moderated": True} if live.moderated else {}),
    )
    await ctx.audit.record_many([start], rows=[session])
    metrics.session_started(live.kind)
    _notify(ctx, "session.started", session_payload(session, live.who.login, device.name))
    return session.id


def recording_key(session_id: str, name: str) -> str:
    return f"{utcnow():%Y/%m/%d}/{session_id}/{name}"


async def add_recording(ctx: GatewayContext, session_id: str, key: str, fmt: str) -> None:
    async with ctx.sessions() as db:
        db.add(Recording(session_id=session_id, format=fmt, storage_key=key))
        await db.commit()


async def close_session(live: LiveSession, end: SessionEnd) -> None:
    """Record the end of a session and its recording's hash; audit both.

    Without the database the audit events are spooled (``recorder.audit``) and the row
    write is retried in the background until the database answers again."""
    ctx = live.ctx
    assert live.session_id is not None
    session_id = live.session_id
    metrics.session_ended()
    now = utcnow()
    try:
        session = await _write_end(ctx, session_id, end, now)
    except (SQLAlchemyError, OSError) as exc:
        log.error("session end not written: database unreachable; retrying",
                  session_id=session_id, error=str(exc))  # fmt: skip
        ctx.tasks.spawn(_retry_write_end(ctx, session_id, end, now), name=f"close-{session_id}")
        session = None
    events = [
        _event(
            live,
            "broker:recording:final",
            session_id=session_id,
            key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
            status=str(_status(stored)),
        )
        for stored in end.stored
    ]
    detail: dict[str, object] = {"reason": end.reason, "exit_status": end.exit_status}
    if end.bytes_from_vendor is not None:
        detail.update(
            bytes_from_vendor=end.bytes_from_vendor, bytes_from_device=end.bytes_from_device
        )
    events.append(
        _event(
            live,
            "broker:session:end",
            session_id=session_id,
            node=ctx.settings.node_name,
            **detail,
        )
    )
    await ctx.audit.record_many(events)  # one transaction; spooled together if down
    if session is not None:
        device = (session.device_snapshot or {}).get("name") or str(session.device_id)
        _notify(ctx, "session.ended", session_payload(session, live.who.login, device))


def _status(stored: StoredObject) -> RecordingStatus:
    return RecordingStatus.FINAL if stored.complete else RecordingStatus.INCOMPLETE


async def _write_end(
    ctx: GatewayContext, session_id: str, end: SessionEnd, now: datetime
) -> Session:
    async with ctx.sessions() as db:
        session = await db.get(Session, session_id)
        assert session is not None
        session.ended_at = now
        session.end_reason = end.reason
        session.exit_status = end.exit_status
        session.bytes_from_vendor = end.bytes_from_vendor
        session.bytes_from_device = end.bytes_from_device
        for stored in end.stored:
            rec = await db.scalar(select(Recording).where(Recording.storage_key == stored.key))
            assert rec is not None
            rec.status, rec.finished_at = _status(stored), now
            rec.sha256, rec.size = stored.sha256, stored.size
        await db.commit()
    return session


async def _retry_write_end(
    ctx: GatewayContext, session_id: str, end: SessionEnd, now: datetime, every: float = 1.0
) -> None:
    """Write the session's end once the database is back (a restart's orphan recovery
    covers a gateway that dies first; the spooled audit events keep the true reason)."""
    while True:
        await asyncio.sleep(every)
        try:
            await _write_end(ctx, session_id, end, now)
        except (SQLAlchemyError, OSError):
            continue
        log.info("session end written after the database came back", session_id=session_id)
        return


def _event(live: LiveSession, tag: str, *, session_id: str, **detail: Any) -> Event:
    """An audit event of this session, with what every session event carries (who, which
    device, from where)."""
    return Event(
        tag, actor=live.who.login, device=live.device.name, session_id=session_id,
        detail={"client": live.who.client, **detail},
    )  # fmt: skip


def _notify(ctx: GatewayContext, event: str, payload: dict[str, object]) -> None:
    """Queue the event (never waits: delivery is the notifier's worker's business)."""
    if ctx.notifier is not None:
        ctx.notifier.emit(event, payload)
