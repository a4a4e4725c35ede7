"""The audit log: every decision and session event, as rows and as structured log lines.

Tags read ``source:subject:action`` (``broker:session:start``). The hash chain and the
signed checkpoints over these rows belong to the evidence store.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.models import AuditEvent, utcnow

log = structlog.get_logger("audit")
_TAG = re.compile(r"^[a-z]+:[a-z0-9-]+:[a-z0-9-]+$")


class AuditLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(
        self,
        tag: str,
        *,
        actor: str = "",
        device: str | None = None,
        session_id: str | None = None,
        request_id: int | None = None,
        **detail: Any,
    ) -> None:
        if not _TAG.match(tag):
            raise ValueError(f"audit tag {tag!r} is not source:subject:action")
        event = AuditEvent(
            at=utcnow(),
            tag=tag,
            actor=actor,
            device=device,
            session_id=session_id,
            request_id=request_id,
            detail=detail,
        )
        async with self._sessions() as db:
            db.add(event)
            await db.commit()
        log.info(
            tag, actor=actor, device=device, session_id=session_id, request_id=request_id, **detail
        )
