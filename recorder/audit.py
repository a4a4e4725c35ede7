"""The audit log: every decision and session event, as rows and as structured log lines.

Tags read ``source:subject:action`` (``broker:session:start``). Each row is a link in a
hash chain (``recorder.chain``), and every ``checkpoint_every`` events or
``checkpoint_seconds`` the chain hash is signed with the Ed25519 audit key.

Appending is serialized across processes by the single ``audit_chain_head`` row, in the
same transaction as the insert: the transaction's first statement is a write to that row
(``INSERT`` the genesis head ``ON CONFLICT DO UPDATE`` with a no-op ``RETURNING`` the
head), which on SQLite takes the database write lock at once (waiting up to
``busy_timeout``, never failing on a stale snapshot) and on PostgreSQL locks the row, as
``SELECT ... FOR UPDATE`` would. Under that lock each event gets
``id = last_event_id + 1`` and ``prev_hash = last_hash``, the head moves on, and the
commit releases the lock: ids are consecutive and the chain has one order, whatever
number of gateway and web processes append at once. ``record_many`` appends several
events in one such transaction (optionally with new rows they describe); the statements
are built once per process, not per append.

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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog
from sqlalchemy import Executable, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as OrmSession

from policy.models import AuditChainHead, AuditCheckpoint, AuditEvent, Base, UTCDateTime, utcnow
from recorder import chain

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

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

    def due(self, head: Head, now: datetime) -> bool:
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
        await self.record_many(
            [Event(tag, actor=actor, device=device, session_id=session_id,
                   request_id=request_id, detail=detail)]
        )  # fmt: skip

    async def record_many(self, events: Sequence[Event], *, rows: Sequence[Base] = ()) -> None:
        """Append ``events`` in one transaction, each its own link, in order.

        With ``rows`` (new ORM objects), those are inserted in the same transaction, just
        after the head lock: all of it is written or none. Then an outage raises instead of
        spooling, since an event about a row that was never written must not reach the
        chain later. Without ``rows`` an outage spools every event of the batch."""
        for event in events:
            if not _TAG.match(event.tag):
                raise ValueError(f"audit tag {event.tag!r} is not source:subject:action")
        if not events:
            return
        try:
            await self._append([(e.tag, e.refs(), e.detail) for e in events], rows)
        except (SQLAlchemyError, OSError) as exc:
            if self._spool is None or rows or isinstance(exc, _NOT_OUTAGES):
                raise
            self._spool.put_many([(e.tag, e.refs(), e.detail) for e in events], self._clock())
            for event in events:
                log.warning("audit event spooled: the database is unreachable", tag=event.tag,
                            error=str(exc), **event.refs(), **event.detail)  # fmt: skip

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
                    await self._append([(entry["tag"], entry["refs"], entry["detail"])])
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

    async def _append(
        self, entries: list[tuple[str, dict[str, Any], dict[str, Any]]], rows: Sequence[Base] = ()
    ) -> None:
        """One transaction: lock the head, insert ``rows``, chain the entries, move the head
        (signing a checkpoint where one falls due), commit."""
        async with self._sessions() as db:
            checkpoints = await db.run_sync(self._append_sync, entries, rows)
        for tag, refs, detail in entries:
            log.info(tag, **refs, **detail)
        for checkpoint in checkpoints:
            _log_checkpoint(checkpoint)

    def _append_sync(
        self,
        db: OrmSession,
        entries: list[tuple[str, dict[str, Any], dict[str, Any]]],
        rows: Sequence[Base],
    ) -> list[AuditCheckpoint]:
        head = lock_head(db)
        if rows:
            db.add_all(rows)
            db.flush()
        now = self._clock()
        links, checkpoints = [], []
        for tag, refs, detail in entries:
            fields: dict[str, Any] = {
                "id": head.last_event_id + 1, "at": now, "tag": tag, **refs,
                "detail": chain.normalize(detail),
            }  # fmt: skip
            digest = chain.link_hash(
                head.last_hash, chain.content_hash(chain.event_content(**fields))
            )
            links.append({**fields, "prev_hash": head.last_hash, "hash": digest})
            head.last_event_id, head.last_hash = fields["id"], digest
            if self._key is not None and self._policy.due(head, now):
                checkpoints.append(self._checkpoint(head, now))
        conn = db.connection()
        conn.execute(_INSERT_EVENT, links)
        if checkpoints:
            conn.execute(_INSERT_CHECKPOINT, [_checkpoint_row(c) for c in checkpoints])
        conn.execute(_ADVANCE_HEAD, {**head.changes(signed=bool(checkpoints)), "updated_at": now})
        db.commit()
        return checkpoints

    async def checkpoint(self, force: bool = False) -> AuditCheckpoint | None:
        """Sign the chain's current end if a checkpoint is due (or, with ``force``,
        whenever some event is not yet covered). Returns the new checkpoint, if any."""
        if self._key is None:
            return None
        async with self._sessions() as db:
            checkpoint = await db.run_sync(self._checkpoint_sync, force)
        if checkpoint is not None:
            _log_checkpoint(checkpoint)
        return checkpoint

    def _checkpoint_sync(self, db: OrmSession, force: bool) -> AuditCheckpoint | None:
        head = lock_head(db)
        now = self._clock()
        uncovered = head.last_event_id > head.checkpoint_event_id
        if not (self._policy.due(head, now) or (force and uncovered)):
            db.rollback()
            return None
        checkpoint = self._checkpoint(head, now)
        conn = db.connection()
        conn.execute(_INSERT_CHECKPOINT, [_checkpoint_row(checkpoint)])
        conn.execute(_ADVANCE_HEAD, head.changes(signed=True))
        db.commit()
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

    def _checkpoint(self, head: Head, now: datetime) -> AuditCheckpoint:
        """Sign the head's end (the caller writes the checkpoint row and the head)."""
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
        head.checkpoints = number
        head.checkpoint_event_id, head.checkpoint_at = head.last_event_id, now
        return checkpoint


@dataclass(frozen=True)
class Event:
    """One audit event to append (``AuditLog.record_many``)."""

    tag: str
    actor: str = ""
    device: str | None = None
    session_id: str | None = None
    request_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def refs(self) -> dict[str, Any]:
        return {
            "actor": self.actor, "device": self.device, "session_id": self.session_id,
            "request_id": self.request_id,
        }  # fmt: skip


@dataclass
class Head:
    """The chain head as locked by this transaction."""

    last_event_id: int
    last_hash: str
    checkpoints: int
    checkpoint_event_id: int
    checkpoint_at: datetime

    def changes(self, signed: bool) -> dict[str, Any]:
        """The columns to write back: the chain's end, and the checkpoint's when one was
        signed (unchanged columns are left alone)."""
        changed: dict[str, Any] = {"last_event_id": self.last_event_id, "last_hash": self.last_hash}
        if signed:
            changed.update(
                checkpoints=self.checkpoints,
                checkpoint_event_id=self.checkpoint_event_id,
                checkpoint_at=self.checkpoint_at,
            )
        return changed


# The statements of an append, built once (their compiled forms are cached by SQLAlchemy).
_HEAD_TABLE = Base.metadata.tables[AuditChainHead.__tablename__]
_HEAD_COLUMNS = [
    _HEAD_TABLE.c[name]
    for name in ("last_event_id", "last_hash", "checkpoints", "checkpoint_event_id",
                 "checkpoint_at")
]  # fmt: skip


def _lock_statement(insert: Callable[[Table], Any]) -> Executable:
    """``INSERT`` the genesis head ``ON CONFLICT DO UPDATE`` (a no-op write that locks the
    existing row) ``RETURNING`` the head: the write lock and the read in one statement."""
    genesis_at = bindparam("genesis_at", type_=UTCDateTime)
    stmt = insert(_HEAD_TABLE).values(
        id=HEAD_ID, last_event_id=0, last_hash=chain.GENESIS, checkpoints=0,
        checkpoint_event_id=0, checkpoint_at=genesis_at, updated_at=genesis_at,
    )  # fmt: skip
    locked: Executable = stmt.on_conflict_do_update(
        index_elements=[_HEAD_TABLE.c.id], set_={"id": stmt.excluded.id}
    ).returning(*_HEAD_COLUMNS)
    return locked


_LOCK_HEAD = {
    "postgresql": _lock_statement(postgresql.insert),
    "sqlite": _lock_statement(sqlite.insert),
}
_INSERT_EVENT = insert(Base.metadata.tables[AuditEvent.__tablename__])
_INSERT_CHECKPOINT = insert(Base.metadata.tables[AuditCheckpoint.__tablename__])
_ADVANCE_HEAD = update(_HEAD_TABLE).where(_HEAD_TABLE.c.id == HEAD_ID)


def _checkpoint_row(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "id": checkpoint.id, "event_id": checkpoint.event_id, "hash": checkpoint.hash,
        "at": checkpoint.at, "key_id": checkpoint.key_id, "signature": checkpoint.signature,
    }  # fmt: skip


def lock_head(db: OrmSession) -> Head:
    """Take the chain lock for this transaction and return the head (created at the
    genesis when missing). Must be the transaction's first statement: on SQLite the
    write takes the database write lock at once (never a read upgraded later); on
    PostgreSQL the conflict update locks the row until commit."""
    dialect = db.get_bind().dialect.name
    stmt = _LOCK_HEAD.get(dialect)
    if stmt is None:
        raise NotImplementedError(f"the audit chain does not support {dialect}")
    row = db.connection().execute(stmt, {"genesis_at": utcnow()}).one()
    return Head(*row)


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

    def put_many(
        self, entries: Sequence[tuple[str, dict[str, Any], dict[str, Any]]], now: datetime
    ) -> None:
        """Spool the entries in order, each on its own line, with one fsync."""
        if self._file is None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._path = self.dir / f"{os.getpid()}-{uuid.uuid4().hex}.jsonl"
            self._file = self._path.open("a", encoding="utf-8")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        for tag, refs, detail in entries:
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
