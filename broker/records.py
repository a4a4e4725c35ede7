"""Session bookkeeping shared by every relayed channel (shell, exec, forward, file transfer):
the Session row, its Recording row, and the audit events that open and close them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from policy.decide import GrantView
from policy.models import Device, Recording, RecordingStatus, Session, utcnow
from policy.snapshot import device_snapshot
from recorder import metrics
from recorder.storage import StoredObject

if TYPE_CHECKING:
    from broker.auth import VendorServer


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
    """Create the Session row and audit its start; returns the session id."""
    assert server.user is not None
    session = Session(
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
    async with server.ctx.sessions() as db:
        db.add(session)
        await db.commit()
    metrics.session_started(kind)
    await server._audit(
        "broker:session:start",
        session_id=session.id,
        grant=grant.id,
        ticket=grant.ticket_ref,
        kind=kind,
        command=command,
    )
    return session.id


def recording_key(session_id: str, name: str) -> str:
    return f"{utcnow():%Y/%m/%d}/{session_id}/{name}"


async def add_recording(server: VendorServer, session_id: str, key: str, fmt: str) -> None:
    async with server.ctx.sessions() as db:
        db.add(Recording(session_id=session_id, format=fmt, storage_key=key))
        await db.commit()


async def close_session(server: VendorServer, session_id: str, end: SessionEnd) -> None:
    """Record the end of a session and its recording's hash; audit both."""
    metrics.session_ended()
    now = utcnow()
    stored = end.stored
    status = RecordingStatus.FINAL
    if stored is not None and not stored.complete:
        status = RecordingStatus.INCOMPLETE
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
    if stored is not None:
        await server._audit(
            "broker:recording:final",
            session_id=session_id,
            key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
            status=str(status),
        )
    detail: dict[str, object] = {"reason": end.reason, "exit_status": end.exit_status}
    if end.bytes_from_vendor is not None:
        detail.update(
            bytes_from_vendor=end.bytes_from_vendor, bytes_from_device=end.bytes_from_device
        )
    await server._audit("broker:session:end", session_id=session_id, **detail)
