"""Session bookkeeping shared by every relayed channel (shell, exec, forward, file transfer):
the Session row, its Recording row, the audit events that open and close them, and the
session.started / session.ended notifications."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from policy.decide import GrantView
from policy.models import Device, Recording, RecordingStatus, Session, new_id, utcnow
from policy.notify import session_payload
from policy.snapshot import device_snapshot
from recorder import metrics
from recorder.audit import Event
from recorder.storage import StoredObject

if TYPE_CHECKING:
    from broker.auth import VendorServer

log = structlog.get_logger(__name__)


@dataclass
class SessionEnd:
    reason: str
    exit_status: int | None = None
    stored: StoredObject | None = None
    bytes_from_vendor: int | None = None
    bytes_from_device: int | None = None


async def open_session(
    server: VendorServer,
    device: Device,
    grant: GrantView,
    kind: str,
    command: str | None,
) -> str:
    """Create the Session row and audit its start, in one transaction (both or neither:
    a failure raises and the session is refused); returns the session id."""
    assert server.user is not None
    session = Session(
        id=new_id(),
        vendor_user_id=server.user.id,
        device_id=device.id,
        grant_id=grant.id,
        ticket_ref=grant.ticket_ref,
        kind=kind,
        command=command,
        client_address=server.peer,
        gateway_node=server.ctx.settings.node_name,
        device_snapshot=device_snapshot(device),  # later inventory edits do not rewrite this
    )
    start = _event(
        server,
        "broker:session:start",
        session_id=session.id,
        grant=grant.id,
        ticket=grant.ticket_ref,
        kind=kind,
        command=command,
        node=server.ctx.settings.node_name,
    )
    await server.ctx.audit.record_many([start], rows=[session])
    metrics.session_started(kind)
    _notify(server, "session.started", session_payload(session, server.user.login, device.name))
    return session.id


def recording_key(session_id: str, name: str) -> str:
    return f"{utcnow():%Y/%m/%d}/{session_id}/{name}"


async def add_recording(server: VendorServer, session_id: str, key: str, fmt: str) -> None:
    async with server.ctx.sessions() as db:
        db.add(Recording(session_id=session_id, format=fmt, storage_key=key))
        await db.commit()


async def close_session(server: VendorServer, session_id: str, end: SessionEnd) -> None:
    """Record the end of a session and its recording's hash; audit both.

    Without the database the audit events are spooled (``recorder.audit``) and the row
    write is retried in the background until the database answers again."""
    metrics.session_ended()
    now = utcnow()
    stored = end.stored
    status = RecordingStatus.FINAL
    if stored is not None and not stored.complete:
        status = RecordingStatus.INCOMPLETE
    try:
        session = await _write_end(server, session_id, end, status, now)
    except (SQLAlchemyError, OSError) as exc:
        log.error("session end not written: database unreachable; retrying",
                  session_id=session_id, error=str(exc))  # fmt: skip
        server.ctx.tasks.spawn(
            _retry_write_end(server, session_id, end, status, now), name=f"close-{session_id}"
        )
        session = None
    events = []
    if stored is not None:
        events.append(
            _event(
                server,
                "broker:recording:final",
                session_id=session_id,
                key=stored.key,
                sha256=stored.sha256,
                size=stored.size,
                status=str(status),
            )
        )
    detail: dict[str, object] = {"reason": end.reason, "exit_status": end.exit_status}
    if end.bytes_from_vendor is not None:
        detail.update(
            bytes_from_vendor=end.bytes_from_vendor, bytes_from_device=end.bytes_from_device
        )
    events.append(
        _event(
            server,
            "broker:session:end",
            session_id=session_id,
            node=server.ctx.settings.node_name,
            **detail,
        )
    )
    await server.ctx.audit.record_many(events)  # one transaction; spooled together if down
    if session is not None:
        vendor = server.user.login if server.user is not None else server.login
        device = (session.device_snapshot or {}).get("name") or str(session.device_id)
        _notify(server, "session.ended", session_payload(session, vendor, device))


async def _write_end(
    server: VendorServer,
    session_id: str,
    end: SessionEnd,
    status: RecordingStatus,
    now: datetime,
) -> Session:
    stored = end.stored
    async with server.ctx.sessions() as db:
        session = await db.get(Session, session_id)
        assert session is not None
        session.ended_at = now
        session.end_reason = end.reason
        session.exit_status = end.exit_status
        session.bytes_from_vendor = end.bytes_from_vendor
        session.bytes_from_device = end.bytes_from_device
        if stored is not None:
            rec = await db.scalar(select(Recording).where(Recording.storage_key == stored.key))
            assert rec is not None
            rec.status, rec.finished_at = status, now
            rec.sha256, rec.size = stored.sha256, stored.size
        await db.commit()
    return session


async def _retry_write_end(
    server: VendorServer,
    session_id: str,
    end: SessionEnd,
    status: RecordingStatus,
    now: datetime,
    every: float = 1.0,
) -> None:
    """Write the session's end once the database is back (a restart's orphan recovery
    covers a gateway that dies first; the spooled audit events keep the true reason)."""
    while True:
        await asyncio.sleep(every)
        try:
            await _write_end(server, session_id, end, status, now)
        except (SQLAlchemyError, OSError):
            continue
        log.info("session end written after the database came back", session_id=session_id)
        return


def _event(server: VendorServer, tag: str, *, session_id: str, **detail: Any) -> Event:
    """An audit event of this session, with what ``VendorServer._audit`` adds to every
    event (who, which device, from where)."""
    device = server.target.device if server.target else None
    return Event(
        tag, actor=server.login, device=device, session_id=session_id,
        detail={"client": server.peer, **detail},
    )  # fmt: skip


def _notify(server: VendorServer, event: str, payload: dict[str, object]) -> None:
    """Queue the event (never waits: delivery is the notifier's worker's business)."""
    if server.ctx.notifier is not None:
        server.ctx.notifier.emit(event, payload)
