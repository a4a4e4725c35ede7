"""Evidence export: everything about one session, or one ticket, in a signed bundle.

The bundle (format in ``recorder.bundle``) carries the recordings as stored, the
session, grant, request and approval records, the device snapshot taken at session
start, and a contiguous slice of the audit chain from just after the last checkpoint
before the first event in scope to the first checkpoint at or after the last one, so
both ends are anchored by signatures. Events in the slice that belong to other sessions
are redacted to their content hash. Before reading, the export signs a checkpoint over
the chain's current end, so a session that just ended is covered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy.models import (
    AccessRequest,
    AuditCheckpoint,
    AuditEvent,
    Device,
    Grant,
    RecordingStatus,
    Session,
    VendorUser,
    utcnow,
)
from policy.snapshot import device_snapshot
from recorder import bundle, chain
from recorder.audit import AuditLog
from recorder.errors import RecorderError
from recorder.report import render_report, typed_lines
from recorder.storage import Storage
from recorder.verify import row_content

LOGIN_LOOKBACK = timedelta(hours=1)


class EvidenceError(RecorderError):
    pass


@dataclass
class ExportResult:
    path: Path
    sessions: int
    recordings: int
    events_in_scope: int
    slice: tuple[int, int] | None
    warnings: list[str] = field(default_factory=list)


def _t(value: datetime | None) -> str | None:
    return chain.iso(value) if value is not None else None


async def export_bundle(
    db: AsyncSession,
    storage: Storage,
    key: Ed25519PrivateKey,
    out: Path,
    *,
    session_id: str | None = None,
    ticket: str | None = None,
    audit: AuditLog | None = None,
) -> ExportResult:
    if (session_id is None) == (ticket is None):
        raise ValueError("give exactly one of session_id and ticket")
    if audit is not None:
        await audit.checkpoint(force=True)
    scope = {"kind": "session", "value": session_id} if session_id else {}
    scope = scope or {"kind": "ticket", "value": str(ticket)}
    query = select(Session).options(selectinload(Session.recordings)).order_by(Session.started_at)
    if session_id is not None:
        query = query.where(Session.id == session_id)
    else:
        query = query.where(Session.ticket_ref == ticket)
    sessions = list(await db.scalars(query))
    grant_query = select(Grant).options(
        selectinload(Grant.devices), selectinload(Grant.user).selectinload(VendorUser.vendor)
    )
    grant_ids = {s.grant_id for s in sessions}
    if ticket is not None:
        grant_query = grant_query.where(or_(Grant.ticket_ref == ticket, Grant.id.in_(grant_ids)))
    else:
        grant_query = grant_query.where(Grant.id.in_(grant_ids))
    grants = list(await db.scalars(grant_query.order_by(Grant.id)))
    if not sessions and not grants:
        raise EvidenceError(
            "evidence-empty", f"no sessions or grants for {scope['kind']} {scope['value']}"
        )
    warnings: list[str] = []
    files: dict[str, bytes] = {}
    session_docs = [await _session_doc(db, s, storage, files, warnings) for s in sessions]
    grant_docs = [await _grant_doc(db, g) for g in grants]
    events, checkpoints, bounds = await _audit_slice(db, sessions, grants, ticket)
    files[bundle.SESSIONS] = _json({"sessions": session_docs})
    files[bundle.ACCESS] = _json({"grants": grant_docs})
    files[bundle.EVENTS] = b"".join(
        json.dumps(e, sort_keys=True, ensure_ascii=False).encode() + b"\n" for e in events
    )
    files[bundle.CHECKPOINTS] = _json(checkpoints)
    in_scope = [e for e in events if not e.get("redacted")]
    commands = {
        name: typed_lines(data)
        for name, data in files.items()
        if name.startswith("recordings/") and name.endswith(".cast")
    }
    created = chain.iso(utcnow())
    key_id = chain.key_id(key.public_key())
    files[bundle.REPORT] = render_report(
        scope=scope,
        created_at=created,
        key_id=key_id,
        sessions=session_docs,
        grants=grant_docs,
        events=in_scope,
        commands=commands,
        audit=bounds,
        warnings=warnings,
    ).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bundle(out, files, key=key, scope=scope, audit=bounds, created_at=created)
    slice_ = (bounds["first_event"], bounds["last_event"]) if events else None
    recordings = sum(1 for name in files if name.startswith("recordings/"))
    return ExportResult(out, len(sessions), recordings, len(in_scope), slice_, warnings)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


async def _session_doc(
    db: AsyncSession, s: Session, storage: Storage, files: dict[str, bytes], warnings: list[str]
) -> dict[str, Any]:
    user = await db.scalar(
        select(VendorUser)
        .where(VendorUser.id == s.vendor_user_id)
        .options(selectinload(VendorUser.vendor))
    )
    snapshot, source = s.device_snapshot, "snapshot at session start"
    if snapshot is None:
        device = await db.scalar(
            select(Device)
            .where(Device.id == s.device_id)
            .options(selectinload(Device.segment), selectinload(Device.services))
        )
        assert device is not None
        snapshot, source = device_snapshot(device), "current record at export (no snapshot)"
    recordings = []
    for rec in sorted(s.recordings, key=lambda r: r.id):
        doc: dict[str, Any] = {
            "id": rec.id,
            "format": rec.format,
            "storage_key": rec.storage_key,
            "status": str(rec.status),
            "sha256": rec.sha256,
            "size": rec.size,
            "started_at": _t(rec.started_at),
            "finished_at": _t(rec.finished_at),
            "file": None,
        }
        if rec.status is RecordingStatus.EXPIRED:
            doc["missing"] = "expired by retention (see recorder:recording:expire)"
        else:
            try:
                data = await asyncio.to_thread(storage.read, rec.storage_key)
            except RecorderError as exc:
                doc["missing"] = f"unreadable: {exc.message}"
                warnings.append(f"recording {rec.storage_key} could not be read: {exc.message}")
            else:
                name = f"recordings/{s.id}/{rec.id}-{posixpath.basename(rec.storage_key)}"
                files[name] = data
                doc["file"] = name
                if rec.sha256 and hashlib.sha256(data).hexdigest() != rec.sha256:
                    warnings.append(
                        f"recording {rec.storage_key} in storage differs from the SHA-256 "
                        "recorded at session end: it was changed after the session"
                    )
        recordings.append(doc)
    return {
        "id": s.id,
        "kind": s.kind,
        "command": s.command,
        "ticket_ref": s.ticket_ref,
        "grant_id": s.grant_id,
        "client_address": s.client_address,
        "gateway_node": s.gateway_node,
        "started_at": _t(s.started_at),
        "ended_at": _t(s.ended_at),
        "end_reason": s.end_reason,
        "exit_status": s.exit_status,
        "vendor_user": _user_doc(user),
        "device": snapshot,
        "device_snapshot_source": source,
        "recordings": recordings,
    }


def _user_doc(user: VendorUser | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {
        "login": user.login,
        "display_name": user.display_name,
        "email": user.email,
        "vendor": user.vendor.name,
    }


async def _grant_doc(db: AsyncSession, g: Grant) -> dict[str, Any]:
    request_doc = None
    if g.request_id is not None:
        request = await db.scalar(
            select(AccessRequest)
            .where(AccessRequest.id == g.request_id)
            .options(selectinload(AccessRequest.approvals), selectinload(AccessRequest.devices))
        )
        if request is not None:
            request_doc = {
                "id": request.id,
                "ticket_ref": request.ticket_ref,
                "reason": request.reason,
                "services": request.services,
                "devices": [d.name for d in request.devices],
                "window_start": _t(request.window_start),
                "window_end": _t(request.window_end),
                "status": str(request.status),
                "created_at": _t(request.created_at),
                "approvals": [
                    {
                        "approver": a.approver,
                        "role": a.role,
                        "decision": a.decision,
                        "comment": a.comment,
                        "decided_at": _t(a.decided_at),
                    }
                    for a in sorted(request.approvals, key=lambda a: a.decided_at)
                ],
            }
    return {
        "id": g.id,
        "ticket_ref": g.ticket_ref,
        "vendor_user": _user_doc(g.user),
        "devices": sorted(d.name for d in g.devices),
        "services": g.services,
        "window_start": _t(g.window_start),
        "window_end": _t(g.window_end),
        "approved_by": g.approved_by,
        "revoked_at": _t(g.revoked_at),
        "revoked_by": g.revoked_by,
        "revoke_reason": g.revoke_reason,
        "created_at": _t(g.created_at),
        "request": request_doc,
    }


async def _audit_slice(
    db: AsyncSession, sessions: list[Session], grants: list[Grant], ticket: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    ids = {s.id for s in sessions}
    requests = {g.request_id for g in grants if g.request_id is not None}
    grant_ids = {g.id for g in grants}
    direct = set(
        await db.scalars(
            select(AuditEvent.id).where(
                or_(AuditEvent.session_id.in_(ids), AuditEvent.request_id.in_(requests))
            )
        )
    )
    logins = await _login_events(db, sessions)
    scoped = direct | logins
    empty: dict[str, Any] = {
        "format": chain.FORMAT,
        "first_event": None,
        "last_event": None,
        "first_prev_hash": None,
        "events_in_scope": 0,
    }
    if not scoped:
        return [], [], empty
    lo, hi = min(scoped), max(scoped)
    before = await db.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.event_id < lo)
        .order_by(AuditCheckpoint.event_id.desc(), AuditCheckpoint.id.desc())
        .limit(1)
    )
    after = await db.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.event_id >= hi)
        .order_by(AuditCheckpoint.event_id, AuditCheckpoint.id)
        .limit(1)
    )
    if after is None:
        raise EvidenceError(
            "evidence-unanchored",
            f"no signed checkpoint covers audit event {hi}; export with the audit signing key",
        )
    start = before.event_id + 1 if before is not None else 1
    events: list[dict[str, Any]] = []
    position = start - 1
    while position < after.event_id:
        rows = list(
            await db.scalars(
                select(AuditEvent)
                .where(AuditEvent.id > position, AuditEvent.id <= after.event_id)
                .order_by(AuditEvent.id)
                .limit(2000)
            )
        )
        if not rows:
            break
        for row in rows:
            mine = row.id in scoped or (
                row.session_id is None
                and (
                    (ticket is not None and row.detail.get("ticket") == ticket)
                    or row.detail.get("grant") in grant_ids
                )
            )
            events.append(_event_doc(row, mine))
        position = rows[-1].id
    cps = await db.scalars(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.event_id >= start - 1, AuditCheckpoint.event_id <= after.event_id)
        .order_by(AuditCheckpoint.id)
    )
    checkpoints = [
        {
            "id": c.id,
            "event_id": c.event_id,
            "hash": c.hash,
            "at": chain.iso(c.at),
            "key_id": c.key_id,
            "signature": c.signature,
        }
        for c in cps
        if c.event_id >= start or (before is not None and c.id == before.id)
    ]
    bounds = {
        "format": chain.FORMAT,
        "first_event": start,
        "last_event": after.event_id,
        "first_prev_hash": before.hash if before is not None else chain.GENESIS,
        "events_in_scope": sum(1 for e in events if not e.get("redacted")),
    }
    return events, checkpoints, bounds


async def _login_events(db: AsyncSession, sessions: list[Session]) -> set[int]:
    """The login events of each session's connection: same vendor, same client address
    and port, no session yet, shortly before the session started."""
    found: set[int] = set()
    for s in sessions:
        login = await db.scalar(select(VendorUser.login).where(VendorUser.id == s.vendor_user_id))
        rows = await db.scalars(
            select(AuditEvent).where(
                AuditEvent.session_id.is_(None),
                AuditEvent.actor == login,
                AuditEvent.at >= s.started_at - LOGIN_LOOKBACK,
                AuditEvent.at <= s.started_at,
            )
        )
        found |= {r.id for r in rows if r.detail.get("client") == s.client_address}
    return found


def _event_doc(row: AuditEvent, in_scope: bool) -> dict[str, Any]:
    content = row_content(row)
    if not in_scope:
        return {
            "id": row.id,
            "redacted": True,
            "content_hash": chain.content_hash(content),
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        }
    return {**content, "prev_hash": row.prev_hash, "hash": row.hash}
