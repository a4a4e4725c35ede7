"""The audit log: every decision and session event, as rows and as structured log lines.

Tags read ``source:subject:action`` (``broker:session:start``). Each row is a link in a
hash chain (``recorder.chain``), and every ``checkpoint_every`` events or
``checkpoint_seconds`` the chain hash is signed with the Ed25519 audit key.

Appending is serialized across processes by the single ``audit_chain_head`` row, in the
same transaction as the insert: the transaction's first statement is a write to that row
(``INSERT ... ON CONFLICT DO NOTHING``), which on SQLite takes the database write lock
at once (waiting up to ``busy_timeout``, never failing on a stale snapshot); then
``SELECT ... FOR UPDATE`` locks the row on PostgreSQL. Under that lock the event gets
``id = last_event_id + 1`` and ``prev_hash = last_hash``, the head moves on, and the
commit releases the lock: ids are consecutive and the chain has one order, whatever
number of gateway and web processes append at once.

When the database cannot be reached, an event is not lost: it goes to a spool file (one
per process, JSON lines, fsynced, under ``data_dir/audit-spool``) and is appended to the
chain once the database answers again, by this process or, after a crash, by the next one
that starts (``replay_spool``). A replayed event is stamped with the time it entered the
chain; ``detail.occurred_at`` keeps when it happened and ``detail.spool_id`` makes the
replay idempotent.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.models import AuditChainHead, AuditCheckpoint, AuditEvent, utcnow
from recorder import chain

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from policy.config import Settings

log = structlog.get_logger("audit")
_TAG = re.compile(r"^[a-z]+:[a-z0-9-]+:[a-z0-9-]+$")
HEAD_ID = 1
CHECKPOINT_TAG = "recorder:audit:checkpoint"
# database errors that are our bug, not an outage: raised, never spooled
_NOT_OUTAGES = (IntegrityError, ProgrammingError, DataError)


@dataclass(frozen=True)
class CheckpointPolicy:
    every: int = 1000
    seconds: float = 300.0

    def due(self, head: AuditChainHead, now: datetime) -> bool:
        if head.last_event_id <= head.checkpoint_event_id:
            return False  # nothing new to sign
        if head.last_event_id - head.checkpoint_event_id >= self.every:
            return True
        return now - head.checkpoint_at >= timedelta(seconds=self.seconds)


class AuditLog:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoints: CheckpointPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        spool_dir: Path | None = None,
    ) -> None:
        """Without ``signing_key`` the chain is kept but no checkpoint is signed; without
        ``spool_dir`` an event that cannot be written raises instead of being spooled."""
        self._sessions = sessions
        self._key = signing_key
        self._key_id = chain.key_id(signing_key.public_key()) if signing_key else ""
        self._policy = checkpoints or CheckpointPolicy()
        self._clock = clock
        self._spool = Spool(spool_dir) if spool_dir is not None else None

    @classmethod
    def from_settings(
        cls, sessions: async_sessionmaker[AsyncSession], settings: Settings
    ) -> AuditLog:
        from policy.keyfiles import load_signing_key

        return cls(
            sessions,
            signing_key=load_signing_key(settings.audit_key_path),
            checkpoints=CheckpointPolicy(
                settings.audit_checkpoint_every, settings.audit_checkpoint_seconds
            ),
            spool_dir=settings.data_dir / "audit-spool",
        )

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
        refs: dict[str, Any] = {
            "actor": actor, "device": device, "session_id": session_id, "request_id": request_id
        }  # fmt: skip
        try:
            await self._append(tag, refs, detail)
        except (SQLAlchemyError, OSError) as exc:
            if self._spool is None or isinstance(exc, _NOT_OUTAGES):
                raise
            self._spool.put(tag, refs, detail, self._clock())
            log.warning("audit event spooled: the database is unreachable", tag=tag,
                        error=str(exc), **refs, **detail)  # fmt: skip

    async def replay_spool(self) -> int:
        """Append spooled events to the chain (ours, and those of dead processes);
        returns how many went in. Stops at the first database error, keeping the rest."""
        if self._spool is None:
            return 0
        count = 0
        for path in self._spool.ready_files():
            with path.open("r+", encoding="utf-8") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process is still writing it
                entries = _read_spool(handle)
                done = await self._replayed_ids(entries)
                for entry in entries:
                    if entry["detail"]["spool_id"] in done:
                        continue
                    await self._append(entry["tag"], entry["refs"], entry["detail"])
                    count += 1
                path.unlink()
        if count:
            log.info("audit spool replayed", events=count)
        return count

    async def _replayed_ids(self, entries: list[dict[str, Any]]) -> set[str]:
        """Spool ids already in the chain (a replay cut off before its file was removed)."""
        if not entries:
            return set()
        since = min(chain.parse_iso(e["detail"]["occurred_at"]) for e in entries)
        async with self._sessions() as db:
            rows = await db.scalars(select(AuditEvent.detail).where(AuditEvent.at >= since))
            return {str(d["spool_id"]) for d in rows if isinstance(d, dict) and "spool_id" in d}

    async def _append(self, tag: str, refs: dict[str, Any], detail: dict[str, Any]) -> None:
        actor, device = refs["actor"], refs["device"]
        session_id, request_id = refs["session_id"], refs["request_id"]
        clean = chain.normalize(detail)
        async with self._sessions() as db:
            head = await lock_head(db)
            now = self._clock()
            event_id = head.last_event_id + 1
            fields: dict[str, Any] = {
                "id": event_id,
                "at": now,
                "tag": tag,
                "actor": actor,
                "device": device,
                "session_id": session_id,
                "request_id": request_id,
                "detail": clean,
            }
            digest = chain.link_hash(
                head.last_hash, chain.content_hash(chain.event_content(**fields))
            )
            db.add(AuditEvent(**fields, prev_hash=head.last_hash, hash=digest))
            head.last_event_id, head.last_hash, head.updated_at = event_id, digest, now
            checkpoint = None
            if self._key is not None and self._policy.due(head, now):
                checkpoint = self._checkpoint(db, head, now)
            await db.commit()
        log.info(
            tag, actor=actor, device=device, session_id=session_id, request_id=request_id, **detail
        )
        if checkpoint is not None:
            _log_checkpoint(checkpoint)

    async def checkpoint(self, force: bool = False) -> AuditCheckpoint | None:
        """Sign the chain's current end if a checkpoint is due (or, with ``force``,
        whenever some event is not yet covered). Returns the new checkpoint, if any."""
        if self._key is None:
            return None
        async with self._sessions() as db:
            head = await lock_head(db)
            now = self._clock()
            uncovered = head.last_event_id > head.checkpoint_event_id
            if not (self._policy.due(head, now) or (force and uncovered)):
                await db.rollback()
                return None
            checkpoint = self._checkpoint(db, head, now)
            await db.commit()
        _log_checkpoint(checkpoint)
        return checkpoint

    async def run_checkpoints(self, spool_interval: float = 1.0) -> None:
        """Until cancelled: replay spooled events once the database answers, and sign a
        checkpoint whenever one falls due by time (so the last events before a quiet
        spell do not stay unsigned)."""
        interval = max(1.0, min(self._policy.seconds, 60.0))
        waited = 0.0
        while True:
            try:
                if self._spool is not None and self._spool.pending():
                    self._spool.rotate()
                    await self.replay_spool()
                if waited >= interval:
                    waited = 0.0
                    await self.checkpoint()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("audit upkeep: the database is unreachable", error=str(exc))
            except Exception:
                log.exception("audit upkeep failed")
            await asyncio.sleep(spool_interval)
            waited += spool_interval

    def _checkpoint(self, db: AsyncSession, head: AuditChainHead, now: datetime) -> AuditCheckpoint:
        assert self._key is not None
        number = head.checkpoints + 1
        message = chain.checkpoint_message(
            number, head.last_event_id, head.last_hash, now, self._key_id
        )
        checkpoint = AuditCheckpoint(
            id=number,
            event_id=head.last_event_id,
            hash=head.last_hash,
            at=now,
            key_id=self._key_id,
            signature=chain.sign(self._key, message),
        )
        db.add(checkpoint)
        head.checkpoints = number
        head.checkpoint_event_id, head.checkpoint_at = head.last_event_id, now
        return checkpoint


async def lock_head(db: AsyncSession) -> AuditChainHead:
    """Take the chain lock for this transaction and return the head row (created at the
    genesis when missing). Must be the transaction's first statement."""
    dialect = db.get_bind().dialect.name
    values = {
        "id": HEAD_ID,
        "last_event_id": 0,
        "last_hash": chain.GENESIS,
        "checkpoints": 0,
        "checkpoint_event_id": 0,
        "checkpoint_at": utcnow(),
        "updated_at": utcnow(),
    }
    if dialect == "postgresql":
        await db.execute(
            postgresql.insert(AuditChainHead).values(**values).on_conflict_do_nothing()
        )
    elif dialect == "sqlite":
        await db.execute(sqlite.insert(AuditChainHead).values(**values).on_conflict_do_nothing())
    else:
        raise NotImplementedError(f"the audit chain does not support {dialect}")
    head = await db.scalar(
        select(AuditChainHead)
        .where(AuditChainHead.id == HEAD_ID)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert head is not None
    return head


def _log_checkpoint(checkpoint: AuditCheckpoint) -> None:
    """The checkpoint as a log line, so a SIEM witnesses it outside the database."""
    log.info(
        CHECKPOINT_TAG,
        checkpoint=checkpoint.id,
        event_id=checkpoint.event_id,
        hash=checkpoint.hash,
        at=chain.iso(checkpoint.at),
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
    )


class Spool:
    """This process's spool file, locked while it is open so no one else replays it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._file: IO[str] | None = None
        self._path: Path | None = None

    def put(self, tag: str, refs: dict[str, Any], detail: dict[str, Any], now: datetime) -> None:
        if self._file is None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._path = self.dir / f"{os.getpid()}-{uuid.uuid4().hex}.jsonl"
            self._file = self._path.open("a", encoding="utf-8")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        stamped = {**detail, "occurred_at": chain.iso(now), "spool_id": uuid.uuid4().hex}
        line = json.dumps({"tag": tag, "refs": refs, "detail": chain.normalize(stamped)})
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def pending(self) -> bool:
        return self._file is not None or any(self.dir.glob("*.jsonl"))

    def rotate(self) -> None:
        """Close our file (unlocking it) so it can be replayed; new events start another."""
        if self._file is not None:
            self._file.close()
            self._file = self._path = None

    def ready_files(self) -> list[Path]:
        return sorted(self.dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)


def _read_spool(handle: IO[str]) -> list[dict[str, Any]]:
    """The complete lines of a spool file (a line torn by a crash is dropped, logged)."""
    entries = []
    for number, line in enumerate(handle.read().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.error("audit spool: unreadable line dropped", file=handle.name, line=number)
    return entries
