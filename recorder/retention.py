"""Retention: delete recordings older than N days, leaving the reason in the evidence.

Each expired recording gets an audit event ``recorder:recording:expire`` with its storage
key, SHA-256 and size (so the chain still says what existed and what it hashed to), and
its row's status becomes ``expired``, which exports and the portal show instead of a
missing file. Order: audit event, then the row, then the object; a crash in between
leaves at worst an orphaned object already marked expired, never an unexplained gap.
Audit events themselves are never expired (the chain would not verify without them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.models import Recording, RecordingStatus, utcnow
from recorder import chain
from recorder.audit import AuditLog
from recorder.storage import Storage

EXPIRE_TAG = "recorder:recording:expire"


@dataclass(frozen=True)
class Expired:
    recording_id: int
    session_id: str
    key: str
    sha256: str | None
    size: int | None


async def expire_recordings(
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    audit: AuditLog,
    days: int,
    *,
    now: datetime | None = None,
    actor: str = "retention",
) -> list[Expired]:
    """Expire finished recordings whose end (or start) is more than ``days`` ago."""
    if days <= 0:
        raise ValueError("retention days must be positive (0 means keep forever)")
    cutoff = (now or utcnow()) - timedelta(days=days)
    async with sessions() as db:
        rows = list(
            await db.scalars(
                select(Recording)
                .where(
                    Recording.status.in_([RecordingStatus.FINAL, RecordingStatus.INCOMPLETE]),
                    func.coalesce(Recording.finished_at, Recording.started_at) < cutoff,
                )
                .order_by(Recording.id)
            )
        )
    done: list[Expired] = []
    for rec in rows:
        ended = rec.finished_at or rec.started_at
        await audit.record(
            EXPIRE_TAG,
            actor=actor,
            session_id=rec.session_id,
            key=rec.storage_key,
            sha256=rec.sha256,
            size=rec.size,
            status=str(rec.status),
            finished_at=chain.iso(ended),
            retention_days=days,
        )
        async with sessions() as db:
            row = await db.get(Recording, rec.id)
            assert row is not None
            row.status = RecordingStatus.EXPIRED
            await db.commit()
        await asyncio.to_thread(storage.delete, rec.storage_key)
        done.append(Expired(rec.id, rec.session_id, rec.storage_key, rec.sha256, rec.size))
    return done
