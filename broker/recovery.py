"""After a crash: close out the sessions this gateway node left open.

A gateway killed with ``kill -9`` (or a lost machine) leaves Session rows without an end
and recordings without a hash. On start, each such session of this node is ended with
the reason ``gateway-crash`` and its recording is sealed as incomplete, hashed exactly as
far as it reached storage, so the evidence explains the gap.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from policy.models import RecordingStatus, Session, utcnow
from recorder.errors import StorageError

if TYPE_CHECKING:
    from broker.context import GatewayContext

log = structlog.get_logger(__name__)


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
                try:
                    data = ctx.storage.read(rec.storage_key)
                except StorageError:
                    data = b""
                rec.status, rec.finished_at = RecordingStatus.INCOMPLETE, now
                rec.sha256, rec.size = hashlib.sha256(data).hexdigest(), len(data)
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
