"""``audit verify``: walk the audit chain in the database and name the first bad item.

Detects an edited row (its content no longer gives its hash), a deleted row (a gap in
the ids, or a tail shorter than the chain head), an inserted row (beyond the chain head,
or a broken link after it), a reordered row (its prev_hash no longer links), and a
checkpoint that is missing, signed by another key, badly signed, or over a hash that is
not the chain's at its event.

What it cannot see alone: someone with write access to the database who rewrites the
tail after the last checkpoint and the head together. Checkpoints are also written as
log lines (``recorder:audit:checkpoint``) so a SIEM holds a copy outside the database,
and ``uncovered`` says how many events the newest checkpoint does not yet cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from policy.models import AuditChainHead, AuditCheckpoint, AuditEvent
from recorder import chain

BATCH = 2000


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    first_bad: str | None
    checked: int  # events whose hash and link were verified
    checkpoints: int = 0  # checkpoints whose signature was verified
    uncovered: int = 0  # events after the newest verified checkpoint


class ChainBroken(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def row_content(row: AuditEvent) -> dict[str, Any]:
    return chain.event_content(
        id=row.id,
        at=row.at,
        tag=row.tag,
        actor=row.actor,
        device=row.device,
        session_id=row.session_id,
        request_id=row.request_id,
        detail=row.detail,
    )


def check_checkpoint(
    checkpoint_id: int,
    event_id: int,
    signed_hash: str,
    at_text: str,
    key: str,
    signature: str,
    public_key: Ed25519PublicKey,
) -> None:
    """Raise ChainBroken unless the checkpoint is signed by ``public_key``."""
    expected = chain.key_id(public_key)
    if key != expected:
        raise ChainBroken(
            f"audit checkpoint {checkpoint_id}: signed by key {key[:16]}..., "
            f"not the given public key {expected[:16]}..."
        )
    try:
        message = chain.checkpoint_message(
            checkpoint_id, event_id, signed_hash, chain.parse_iso(at_text), key
        )
    except ValueError:
        raise ChainBroken(f"audit checkpoint {checkpoint_id}: malformed time") from None
    if not chain.signature_ok(public_key, signature, message):
        raise ChainBroken(f"audit checkpoint {checkpoint_id}: signature does not verify")


async def verify_chain(db: AsyncSession, public_key: Ed25519PublicKey) -> VerifyResult:
    state = _Walk(public_key)
    try:
        head = await db.scalar(select(AuditChainHead).where(AuditChainHead.id == 1))
        checkpoints = list(await db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
        state.load_checkpoints(checkpoints, head)
        last = 0
        while True:
            rows = list(
                await db.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.id > last)
                    .order_by(AuditEvent.id)
                    .limit(BATCH)
                )
            )
            for row in rows:
                state.event(row, head)
            if len(rows) < BATCH:
                break
            last = rows[-1].id
            db.expunge_all()
        state.finish(head)
    except ChainBroken as exc:
        return VerifyResult(False, exc.message, state.checked, state.signed)
    return VerifyResult(True, None, state.checked, state.signed, state.uncovered())


class _Walk:
    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.key = public_key
        self.prev = chain.GENESIS
        self.next_id = 1
        self.checked = 0
        self.signed = 0
        self.signed_event = 0
        self.pending: dict[int, list[AuditCheckpoint]] = {}

    def load_checkpoints(
        self, checkpoints: list[AuditCheckpoint], head: AuditChainHead | None
    ) -> None:
        last_event = 0
        for number, cp in enumerate(checkpoints, start=1):
            if cp.id != number:
                raise ChainBroken(f"audit checkpoint {number}: missing (next is {cp.id})")
            if cp.event_id < last_event:
                raise ChainBroken(
                    f"audit checkpoint {cp.id}: covers event {cp.event_id}, before the "
                    f"previous checkpoint's event {last_event} (reordered)"
                )
            last_event = cp.event_id
            self.pending.setdefault(cp.event_id, []).append(cp)
        if head is not None and head.checkpoints > len(checkpoints):
            raise ChainBroken(
                f"audit checkpoint {len(checkpoints) + 1}: missing "
                f"(the chain head counts {head.checkpoints})"
            )

    def event(self, row: AuditEvent, head: AuditChainHead | None) -> None:
        if row.id != self.next_id:
            raise ChainBroken(
                f"audit event {self.next_id}: missing (deleted; the next event is {row.id})"
            )
        if head is None:
            raise ChainBroken(f"audit event {row.id}: the chain head row is missing")
        if row.id > head.last_event_id:
            raise ChainBroken(
                f"audit event {row.id}: beyond the chain head at event {head.last_event_id} "
                "(inserted outside the audit log)"
            )
        if row.prev_hash != self.prev:
            raise ChainBroken(
                f"audit event {row.id}: prev_hash does not link to event {row.id - 1} "
                "(an event was inserted, deleted, reordered or rewritten here)"
            )
        try:
            content = row_content(row)
        except (TypeError, ValueError) as exc:
            raise ChainBroken(f"audit event {row.id}: content unreadable ({exc})") from None
        if chain.link_hash(self.prev, chain.content_hash(content)) != row.hash:
            raise ChainBroken(f"audit event {row.id}: content does not match its hash (edited)")
        self.prev = row.hash
        self.next_id += 1
        self.checked += 1
        for cp in self.pending.pop(row.id, []):
            if cp.hash != row.hash:
                raise ChainBroken(
                    f"audit checkpoint {cp.id}: its hash differs from the chain at event {row.id}"
                )
            check_checkpoint(
                cp.id, cp.event_id, cp.hash, chain.iso(cp.at), cp.key_id, cp.signature, self.key
            )
            self.signed += 1
            self.signed_event = row.id

    def finish(self, head: AuditChainHead | None) -> None:
        if self.pending:
            first = min(cp.id for cps in self.pending.values() for cp in cps)
            event = min(self.pending)
            raise ChainBroken(f"audit checkpoint {first}: covers event {event}, which is missing")
        last = self.next_id - 1
        if head is None:
            return  # no head and no events: an empty chain
        if head.last_event_id > last:
            raise ChainBroken(
                f"audit event {last + 1}: missing (deleted; the chain head is at event "
                f"{head.last_event_id})"
            )
        if head.last_hash != self.prev:
            raise ChainBroken(
                f"audit chain head: its hash differs from event {last}'s (head rewritten)"
            )

    def uncovered(self) -> int:
        return self.next_id - 1 - self.signed_event
