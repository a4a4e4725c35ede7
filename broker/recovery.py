"""After a crash: close out the sessions this gateway node left open.

A gateway killed with ``kill -9`` (or a lost machine) leaves Session rows without an end
and recordings without a hash. On start, each such session of this node is ended with
the reason ``gateway-crash`` and its recording is sealed as incomplete, hashed exactly as
far as it reached storage, so the evidence explains the gap. On S3 the unfinished
multipart upload is completed from the parts that arrived (``S3Storage.recover``).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from policy.models import RecordingStatus, Session, utcnow
from recorder.errors import StorageError

if TYPE_CHECKING:
    from broker.context import GatewayContext
    from recorder.storage import Storage

log = structlog.get_logger(__name__)


def _seal(storage: Storage, key: str) -> tuple[str, int]:
    """The hash and size of what a crashed session's recording holds (on S3, after
    completing its unfinished upload from the parts that arrived)."""
    try:
        stored = storage.recover(key)
        if stored is not None:
            return stored.sha256, stored.size
        data = storage.read(key)
    except StorageError as exc:
        log.error("recording lost in the crash", key=key, error=exc.message)
        data = b""
    return hashlib.sha256(data).hexdigest(), len(data)


async def recover_orphans(ctx: GatewayContext) -> int:
    now = utcnow()
    async with ctx.sessions() as db:
        orphans = list(
            await db.scalars(
                select(Session)
                .where(Session.ended_at.is_(None), Session.gateway_node == ctx.settings.node_name)
                .options(selectinload(Session.recordings))
            )
        )
        sealed = []
        for session in orphans:
            session.ended_at, session.end_reason = now, "gateway-crash"
            for rec in session.recordings:
                if rec.status is not RecordingStatus.RECORDING:
                    continue
                sha256, size = await asyncio.to_thread(_seal, ctx.storage, rec.storage_key)
                rec.status, rec.finished_at = RecordingStatus.INCOMPLETE, now
                rec.sha256, rec.size = sha256, size
                sealed.append((session.id, rec.storage_key, rec.sha256, rec.size))
        await db.commit()
    for session_id, key, sha256, size in sealed:
        await ctx.audit.record(
            "broker:recording:final",
            actor="gateway",
            session_id=session_id,
            key=key,
            sha256=sha256,
            size=size,
            status=str(RecordingStatus.INCOMPLETE),
        )
    for session in orphans:
        await ctx.audit.record(
            "broker:session:end",
            actor="gateway",
            session_id=session.id,
            reason="gateway-crash",
            node=ctx.settings.node_name,
        )
    if orphans:
        log.warning("closed sessions left open by a crash", count=len(orphans))
    return len(orphans)
