"""What the security reviewer's pages show, as plain data: the session list (live ones
included), one session with everything around it, and the recording for the player.

The values are frozen dataclasses of plain types (``dataclasses.asdict`` gives the JSON
API its documents), read in a few queries; no web code here. The device is the snapshot
taken at session start, so later inventory edits do not change what a reviewer sees.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy.errors import InvalidInput, NotFound
from policy.models import (
    AccessRequest,
    AuditEvent,
    Device,
    Grant,
    Recording,
    RecordingStatus,
    Session,
    Vendor,
    VendorUser,
)
from policy.snapshot import device_snapshot
from recorder.channel import ASCIICAST
from recorder.commands import Command, commands_from_recording, exec_command
from recorder.errors import RecorderError
from recorder.storage import Storage

TRANSFER_TAG = "broker:transfer:file"
TRANSFER_DENY_TAG = "broker:transfer:deny"
MAX_LIST = 1000


@dataclass(frozen=True)
class RecordingInfo:
    id: int
    format: str
    status: str
    sha256: str | None
    size: int | None
    storage_key: str
    started_at: datetime
    finished_at: datetime | None
    playable: bool  # the browser player can replay it: a terminal recording, not expired


@dataclass(frozen=True)
class SessionRow:
    """One line of the session list (and of ``sallyport sessions list``)."""

    id: str
    vendor_login: str
    vendor_name: str  # the vendor organization
    device: str  # the device's name when the session started
    ticket_ref: str
    kind: str
    command: str | None
    client_address: str
    gateway_node: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    exit_status: int | None
    kill_requested_at: datetime | None
    kill_requested_by: str | None
    recordings: tuple[RecordingInfo, ...]
    live: bool  # not ended yet: the live list shows it with a kill button
    observer_required: bool = False  # moderated: input waits for a staff observer


@dataclass(frozen=True)
class ApprovalInfo:
    approver: str
    role: str
    decision: str
    comment: str
    decided_at: datetime


@dataclass(frozen=True)
class RequestInfo:
    id: int
    ticket_ref: str
    reason: str
    services: list[str]
    devices: list[str]
    window_start: datetime
    window_end: datetime
    status: str
    filed_by: str
    created_at: datetime
    approvals: list[ApprovalInfo]


@dataclass(frozen=True)
class GrantInfo:
    id: int
    ticket_ref: str
    devices: list[str]
    services: list[str]
    window_start: datetime
    window_end: datetime
    approved_by: str
    transfers: str  # the grant's file transfer rule (read-write, download-only, ...)
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    created_at: datetime


@dataclass(frozen=True)
class TransferInfo:
    """A file moved (``broker:transfer:file``) or refused (``broker:transfer:deny``)."""

    at: datetime
    path: str
    direction: str | None  # "upload" / "download"; None for a refusal
    size: int | None
    sha256: str | None
    complete: bool | None
    refused: bool
    reason: str | None  # why it was refused
    operation: str | None  # what was refused (open, remove, ...)


@dataclass(frozen=True)
class EventInfo:
    id: int
    at: datetime
    tag: str
    actor: str
    device: str | None
    request_id: int | None
    detail: dict[str, Any]
    hash: str


@dataclass(frozen=True)
class SessionReview:
    session: SessionRow
    vendor_display_name: str
    vendor_email: str
    device: dict[str, Any]  # policy.snapshot.device_snapshot
    device_source: str  # "snapshot at session start" or "current record (no snapshot)"
    ticket: str
    grant: GrantInfo | None
    request: RequestInfo | None
    transfers: list[TransferInfo]
    commands: list[Command]
    events: list[EventInfo]
    bytes_from_vendor: int | None = None
    bytes_from_device: int | None = None
    warnings: list[str] = field(default_factory=list)  # unreadable or altered recordings

    @property
    def recordings(self) -> tuple[RecordingInfo, ...]:
        return self.session.recordings


def recording_info(rec: Recording) -> RecordingInfo:
    return RecordingInfo(
        id=rec.id,
        format=rec.format,
        status=str(rec.status),
        sha256=rec.sha256,
        size=rec.size,
        storage_key=rec.storage_key,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        playable=rec.format == ASCIICAST and rec.status is not RecordingStatus.EXPIRED,
    )


def _row(session: Session, user: VendorUser, device_name: str) -> SessionRow:
    snapshot_name = (session.device_snapshot or {}).get("name")
    return SessionRow(
        id=session.id,
        vendor_login=user.login,
        vendor_name=user.vendor.name,
        device=str(snapshot_name or device_name),
        ticket_ref=session.ticket_ref,
        kind=session.kind,
        command=session.command,
        client_address=session.client_address,
        gateway_node=session.gateway_node,
        started_at=session.started_at,
        ended_at=session.ended_at,
        end_reason=session.end_reason,
        exit_status=session.exit_status,
        kill_requested_at=session.kill_requested_at,
        kill_requested_by=session.kill_requested_by,
        recordings=tuple(recording_info(r) for r in sorted(session.recordings, key=lambda r: r.id)),
        live=session.ended_at is None,
        observer_required=session.observer_required,
    )


async def list_sessions(
    db: AsyncSession,
    *,
    device: str | None = None,
    vendor: str | None = None,
    ticket: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    end_reason: str | None = None,
    live: bool | None = None,
    limit: int = 200,
) -> list[SessionRow]:
    """Sessions newest first. ``device`` is a device name; ``vendor`` a vendor user's
    login or a vendor organization's name; ``since``/``until`` keep sessions that were
    open at some time in ``[since, until)``; ``live`` True keeps only sessions still open,
    False only ended ones."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput("limit-invalid", f"limit must be between 1 and {MAX_LIST}")
    if since is not None and until is not None and since >= until:
        raise InvalidInput(
            "time-range-invalid", "the start of the time range is not before its end"
        )
    query = (
        select(Session, VendorUser, Device.name)
        .join(VendorUser, VendorUser.id == Session.vendor_user_id)
        .join(Vendor, Vendor.id == VendorUser.vendor_id)
        .join(Device, Device.id == Session.device_id)
        .options(selectinload(Session.recordings), selectinload(VendorUser.vendor))
        .order_by(Session.started_at.desc(), Session.id)
        .limit(limit)
    )
    if device is not None:
        query = query.where(Device.name == device)
    if vendor is not None:
        query = query.where(or_(VendorUser.login == vendor, Vendor.name == vendor))
    if ticket is not None:
        query = query.where(Session.ticket_ref == ticket)
    if since is not None:
        query = query.where(or_(Session.ended_at.is_(None), Session.ended_at >= since))
    if until is not None:
        query = query.where(Session.started_at < until)
    if end_reason is not None:
        query = query.where(Session.end_reason == end_reason)
    if live is not None:
        query = query.where(Session.ended_at.is_(None) if live else Session.ended_at.is_not(None))
    rows = await db.execute(query)
    return [_row(session, user, name) for session, user, name in rows]


async def session_review(db: AsyncSession, storage: Storage, session_id: str) -> SessionReview:
    """Everything the session page shows. Raises NotFound for an unknown session."""
    found = (
        await db.execute(
            select(Session, VendorUser, Device)
            .join(VendorUser, VendorUser.id == Session.vendor_user_id)
            .join(Device, Device.id == Session.device_id)
            .where(Session.id == session_id)
            .options(
                selectinload(Session.recordings),
                selectinload(VendorUser.vendor),
                selectinload(Device.segment),
                selectinload(Device.services),
            )
        )
    ).one_or_none()
    if found is None:
        raise NotFound("session-unknown", f"session {session_id} does not exist")
    session, user, device = found
    row = _row(session, user, device.name)
    snapshot, source = session.device_snapshot, "snapshot at session start"
    if snapshot is None:  # sessions from before snapshots were taken
        snapshot, source = device_snapshot(device), "current record (no snapshot was taken)"
    grant, request = await _grant_and_request(db, session.grant_id)
    events = await _events(db, session_id)
    warnings: list[str] = []
    commands = await session_commands(storage, session, warnings)
    return SessionReview(
        session=row,
        vendor_display_name=user.display_name,
        vendor_email=user.email,
        device=snapshot,
        device_source=source,
        ticket=session.ticket_ref,
        grant=grant,
        request=request,
        transfers=[t for e in events if (t := _transfer(e)) is not None],
        commands=commands,
        events=events,
        bytes_from_vendor=session.bytes_from_vendor,
        bytes_from_device=session.bytes_from_device,
        warnings=warnings,
    )


async def session_commands(
    storage: Storage, session: Session, warnings: list[str] | None = None
) -> list[Command]:
    """The exec command, then every line typed in the session's terminal recordings.

    ``session.recordings`` must be loaded. A terminal recording (read here anyway) that
    cannot be read, or no longer matches the SHA-256 taken when it was sealed, adds a line
    to ``warnings``; stream recordings, possibly gigabytes of file data, are not read.
    """
    commands = exec_command(session.command, session.started_at)
    for rec in sorted(session.recordings, key=lambda r: r.id):
        if rec.format != ASCIICAST or rec.status is RecordingStatus.EXPIRED:
            continue
        try:
            data = await asyncio.to_thread(storage.read, rec.storage_key)
        except RecorderError as exc:
            _warn(warnings, f"recording {rec.id} could not be read: {exc.message}")
            continue
        if rec.sha256 and hashlib.sha256(data).hexdigest() != rec.sha256:
            _warn(
                warnings,
                f"recording {rec.id} in storage differs from the SHA-256 recorded when it "
                "was sealed: it was changed after the session",
            )
        try:
            commands += await asyncio.to_thread(commands_from_recording, data, rec.started_at)
        except RecorderError as exc:
            _warn(warnings, f"recording {rec.id} could not be parsed: {exc.message}")
    return commands


def _warn(warnings: list[str] | None, text: str) -> None:
    if warnings is not None:
        warnings.append(text)


async def _grant_and_request(
    db: AsyncSession, grant_id: int
) -> tuple[GrantInfo | None, RequestInfo | None]:
    grant = await db.scalar(
        select(Grant).where(Grant.id == grant_id).options(selectinload(Grant.devices))
    )
    if grant is None:
        return None, None
    info = GrantInfo(
        id=grant.id,
        ticket_ref=grant.ticket_ref,
        devices=sorted(d.name for d in grant.devices),
        services=list(grant.services),
        window_start=grant.window_start,
        window_end=grant.window_end,
        approved_by=grant.approved_by,
        transfers=grant.transfers,
        revoked_at=grant.revoked_at,
        revoked_by=grant.revoked_by,
        revoke_reason=grant.revoke_reason,
        created_at=grant.created_at,
    )
    if grant.request_id is None:
        return info, None
    request = await db.scalar(
        select(AccessRequest)
        .where(AccessRequest.id == grant.request_id)
        .options(selectinload(AccessRequest.approvals), selectinload(AccessRequest.devices))
    )
    if request is None:
        return info, None
    return info, RequestInfo(
        id=request.id,
        ticket_ref=request.ticket_ref,
        reason=request.reason,
        services=list(request.services),
        devices=sorted(d.name for d in request.devices),
        window_start=request.window_start,
        window_end=request.window_end,
        status=str(request.status),
        filed_by=request.filed_by,
        created_at=request.created_at,
        approvals=[
            ApprovalInfo(a.approver, a.role, a.decision, a.comment, a.decided_at)
            for a in sorted(request.approvals, key=lambda a: (a.decided_at, a.id))
        ],
    )


async def _events(db: AsyncSession, session_id: str) -> list[EventInfo]:
    rows = await db.scalars(
        select(AuditEvent).where(AuditEvent.session_id == session_id).order_by(AuditEvent.id)
    )
    return [
        EventInfo(e.id, e.at, e.tag, e.actor, e.device, e.request_id, dict(e.detail), e.hash)
        for e in rows
    ]


def _transfer(event: EventInfo) -> TransferInfo | None:
    d = event.detail
    if event.tag == TRANSFER_TAG:
        return TransferInfo(
            at=event.at,
            path=str(d.get("path", "")),
            direction=d.get("direction"),
            size=d.get("size"),
            sha256=d.get("sha256"),
            complete=d.get("complete"),
            refused=False,
            reason=None,
            operation=None,
        )
    if event.tag == TRANSFER_DENY_TAG:
        return TransferInfo(
            at=event.at,
            path=str(d.get("path", "")),
            direction=None,
            size=None,
            sha256=None,
            complete=None,
            refused=True,
            reason=d.get("reason"),
            operation=d.get("operation"),
        )
    return None


class _StoredRecording(Protocol):
    @property
    def format(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def storage_key(self) -> str: ...


async def asciicast_bytes(storage: Storage, recording: _StoredRecording) -> bytes:
    """The asciicast file for the browser player: a Recording row or a RecordingInfo.

    A recording still being written (a live session) or cut short by a crash may end in
    a partial line; that line is left out so the player can parse every line it gets.
    Raises InvalidInput for a recording without a terminal, NotFound for one expired by
    retention or missing from storage.
    """
    if recording.format != ASCIICAST:
        raise InvalidInput(
            "recording-not-terminal",
            "this recording has no terminal (exec or file transfer) and cannot be replayed",
        )
    if recording.status == RecordingStatus.EXPIRED:
        raise NotFound(
            "recording-expired",
            "this recording was deleted by the retention policy; its hash is in the audit log",
        )
    try:
        data = await asyncio.to_thread(storage.read, recording.storage_key)
    except RecorderError as exc:
        raise NotFound("recording-missing", f"the recording cannot be read: {exc.message}") from exc
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return data
