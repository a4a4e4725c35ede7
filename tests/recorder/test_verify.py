"""Tampering with the audit chain directly in the database: verify names the first bad item."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.config import Settings
from policy.keyfiles import load_signing_key
from policy.models import AuditEvent
from recorder import chain
from recorder.audit import AuditLog, CheckpointPolicy
from recorder.verify import VerifyResult, verify_chain

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def key(settings: Settings) -> Ed25519PrivateKey:
    return load_signing_key(settings.audit_key_path)


@pytest.fixture
async def six(db: Sessions, key: Ed25519PrivateKey) -> Sessions:
    """Six events; checkpoints after events 2, 4 and 6."""
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=2, seconds=3600))
    for n in range(1, 7):
        await audit.record(
            "broker:session:start", actor="vendor1", device="pump-12", session_id=f"s{n}", n=n
        )
    return db


async def run_sql(db: Sessions, *statements: str, **params: Any) -> None:
    async with db() as s:
        for statement in statements:
            await s.execute(text(statement), params)
        await s.commit()


async def verify(db: Sessions, key: Ed25519PrivateKey) -> VerifyResult:
    async with db() as s:
        return await verify_chain(s, key.public_key())


async def test_intact_chain_verifies(six: Sessions, key: Ed25519PrivateKey) -> None:
    result = await verify(six, key)
    assert result == VerifyResult(True, None, 6, 3, 0)


@pytest.mark.parametrize(
    "statement",
    [
        """UPDATE audit_event SET detail = '{"n": 33}' WHERE id = 3""",
        "UPDATE audit_event SET actor = 'someone-else' WHERE id = 3",
        "UPDATE audit_event SET session_id = NULL WHERE id = 3",
        "UPDATE audit_event SET tag = 'broker:session:end' WHERE id = 3",
    ],
)
async def test_edited_row_is_named(six: Sessions, key: Ed25519PrivateKey, statement: str) -> None:
    await run_sql(six, statement)
    result = await verify(six, key)
    assert not result.ok
    assert result.first_bad == "audit event 3: content does not match its hash (edited)"
    assert result.checked == 2


async def test_edited_time_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    async with six() as s:
        row = await s.get(AuditEvent, 5)
        assert row is not None
        await s.execute(
            text("UPDATE audit_event SET at = :at WHERE id = 5"),
            {"at": row.at.replace(tzinfo=None, microsecond=(row.at.microsecond + 1) % 1000000)},
        )
        await s.commit()
    result = await verify(six, key)
    assert result.first_bad is not None and result.first_bad.startswith("audit event 5:")


async def test_edit_with_recomputed_hash_breaks_the_next_link(
    six: Sessions, key: Ed25519PrivateKey
) -> None:
    async with six() as s:
        row = await s.get(AuditEvent, 3)
        assert row is not None
        content = chain.event_content(
            id=3, at=row.at, tag=row.tag, actor=row.actor, device=row.device,
            session_id=row.session_id, request_id=row.request_id, detail={"n": 99},
        )  # fmt: skip
        forged = chain.link_hash(row.prev_hash, chain.content_hash(content))
    await run_sql(
        six, """UPDATE audit_event SET detail = '{"n": 99}', hash = :h WHERE id = 3""", h=forged
    )
    result = await verify(six, key)
    assert result.first_bad is not None
    assert result.first_bad.startswith("audit event 4: prev_hash does not link to event 3")


async def test_deleted_row_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    await run_sql(six, "DELETE FROM audit_event WHERE id = 4")
    result = await verify(six, key)
    assert result.first_bad == "audit event 4: missing (deleted; the next event is 5)"


async def test_deleted_last_row_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    await run_sql(six, "DELETE FROM audit_event WHERE id = 6")
    result = await verify(six, key)
    assert result.first_bad == "audit checkpoint 3: covers event 6, which is missing"


async def test_deleted_tail_without_checkpoint_is_named(
    db: Sessions, key: Ed25519PrivateKey
) -> None:
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=100, seconds=3600))
    for n in range(4):
        await audit.record("test:audit:append", n=n)
    await run_sql(db, "DELETE FROM audit_event WHERE id = 4")
    result = await verify(db, key)
    assert result.first_bad == "audit event 4: missing (deleted; the chain head is at event 4)"


async def test_inserted_row_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    async with six() as s:
        last = await s.get(AuditEvent, 6)
        assert last is not None
    await run_sql(
        six,
        "INSERT INTO audit_event (id, at, tag, actor, detail, prev_hash, hash) "
        "VALUES (7, :at, 'broker:session:end', 'vendor1', '{}', :prev, :hash)",
        at=last.at.replace(tzinfo=None),
        prev=last.hash,
        hash="ab" * 32,
    )
    result = await verify(six, key)
    assert result.first_bad == (
        "audit event 7: beyond the chain head at event 6 (inserted outside the audit log)"
    )


async def test_inserted_row_in_the_middle_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    """Rows 3..6 moved up one; a forged row 3 with a correct link of its own."""
    async with six() as s:
        prev = await s.get(AuditEvent, 2)
        assert prev is not None
    for n in range(6, 2, -1):
        await run_sql(six, "UPDATE audit_event SET id = :new WHERE id = :old", new=n + 1, old=n)
    content = chain.event_content(
        id=3, at=prev.at, tag="broker:session:end", actor="vendor1", device=None,
        session_id=None, request_id=None, detail={},
    )  # fmt: skip
    forged = chain.link_hash(prev.hash, chain.content_hash(content))
    await run_sql(
        six,
        "INSERT INTO audit_event (id, at, tag, actor, detail, prev_hash, hash) "
        "VALUES (3, :at, 'broker:session:end', 'vendor1', '{}', :prev, :hash)",
        "UPDATE audit_chain_head SET last_event_id = 7",
        at=prev.at.replace(tzinfo=None),
        prev=prev.hash,
        hash=forged,
    )
    result = await verify(six, key)
    assert result.first_bad is not None
    assert result.first_bad.startswith("audit event 4: prev_hash does not link to event 3")


async def test_reordered_rows_are_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    await run_sql(
        six,
        "UPDATE audit_event SET id = 1000 WHERE id = 2",
        "UPDATE audit_event SET id = 2 WHERE id = 4",
        "UPDATE audit_event SET id = 4 WHERE id = 1000",
    )
    result = await verify(six, key)
    assert result.first_bad is not None
    assert result.first_bad.startswith("audit event 2: prev_hash does not link to event 1")


def flip(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[10] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


async def test_flipped_checkpoint_signature_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    async with six() as s:
        sig = await s.scalar(text("SELECT signature FROM audit_checkpoint WHERE id = 2"))
    await run_sql(six, "UPDATE audit_checkpoint SET signature = :s WHERE id = 2", s=flip(sig))
    result = await verify(six, key)
    assert result.first_bad == "audit checkpoint 2: signature does not verify"
    assert result.checkpoints == 1


async def test_checkpoint_over_another_hash_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    await run_sql(six, "UPDATE audit_checkpoint SET hash = :h WHERE id = 1", h="cd" * 32)
    result = await verify(six, key)
    assert result.first_bad == "audit checkpoint 1: its hash differs from the chain at event 2"


async def test_deleted_checkpoint_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    await run_sql(six, "DELETE FROM audit_checkpoint WHERE id = 2")
    result = await verify(six, key)
    assert result.first_bad == "audit checkpoint 2: missing (next is 3)"
    await run_sql(six, "DELETE FROM audit_checkpoint WHERE id = 3")
    result = await verify(six, key)
    assert result.first_bad == "audit checkpoint 2: missing (the chain head counts 3)"


async def test_other_public_key_is_refused(six: Sessions) -> None:
    other = Ed25519PrivateKey.generate()
    result = await verify(six, other)
    assert result.first_bad is not None
    assert result.first_bad.startswith("audit checkpoint 1: signed by key")


async def test_rewritten_head_is_named(six: Sessions, key: Ed25519PrivateKey) -> None:
    await run_sql(six, "UPDATE audit_chain_head SET last_hash = :h", h="ef" * 32)
    result = await verify(six, key)
    assert result.first_bad == "audit chain head: its hash differs from event 6's (head rewritten)"


async def test_empty_chain_verifies(db: Sessions, key: Ed25519PrivateKey) -> None:
    assert await verify(db, key) == VerifyResult(True, None, 0, 0, 0)


async def test_many_events_verify_across_batches(
    db: Sessions, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recorder.verify.BATCH", 16)
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=10, seconds=3600))
    for n in range(53):
        await audit.record("test:audit:append", n=n)
    assert await verify(db, key) == VerifyResult(True, None, 53, 5, 3)
    await run_sql(db, """UPDATE audit_event SET detail = '{"n": 0}' WHERE id = 50""")
    result = await verify(db, key)
    assert result.first_bad == "audit event 50: content does not match its hash (edited)"
    assert result.checked == 49 and result.checkpoints == 4
    async with db() as s:
        assert len(list(await s.scalars(select(AuditEvent.id)))) == 53
