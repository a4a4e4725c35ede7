"""Several audit events in one transaction (``AuditLog.record_many``), on the real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.models import AuditChainHead, AuditCheckpoint, Vendor
from recorder import chain
from recorder.audit import AuditLog, CheckpointPolicy, Event
from recorder.verify import verify_chain
from tests.recorder.test_audit_spool import chained

Sessions = async_sessionmaker[AsyncSession]


async def checkpoints(db: Sessions) -> list[AuditCheckpoint]:
    async with db() as s:
        return list(await s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))


async def test_a_batch_is_chained_in_order_each_event_its_own_link(
    db: Sessions, key: Ed25519PrivateKey
) -> None:
    audit = AuditLog(db, signing_key=key)
    await audit.record("broker:session:start", actor="vendor1", session_id="s1")
    await audit.record_many(
        [
            Event("broker:recording:final", actor="vendor1", session_id="s1",
                  detail={"key": "k", "size": 3}),
            Event("broker:session:end", actor="vendor1", device="pump-12", session_id="s1",
                  detail={"reason": "exit", "exit_status": 0}),
        ]
    )  # fmt: skip

    rows = await chained(db)
    assert [(r.id, r.tag) for r in rows] == [
        (1, "broker:session:start"),
        (2, "broker:recording:final"),
        (3, "broker:session:end"),
    ]
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert rows[2].device == "pump-12" and rows[2].detail == {"reason": "exit", "exit_status": 0}
    content = chain.event_content(
        id=3, at=rows[2].at, tag="broker:session:end", actor="vendor1", device="pump-12",
        session_id="s1", request_id=None, detail={"reason": "exit", "exit_status": 0},
    )  # fmt: skip
    assert rows[2].hash == chain.link_hash(rows[1].hash, chain.content_hash(content))
    async with db() as s:
        head = await s.get(AuditChainHead, 1)
        result = await verify_chain(s, key.public_key())
    assert head is not None and (head.last_event_id, head.last_hash) == (3, rows[2].hash)
    assert result.ok and result.checked == 3


async def test_a_checkpoint_falling_inside_a_batch_signs_that_event(
    db: Sessions, key: Ed25519PrivateKey
) -> None:
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=3, seconds=3600))
    await audit.record("test:audit:append", n=0)
    await audit.record_many([Event("test:audit:append", detail={"n": n}) for n in (1, 2, 3, 4)])

    rows, cps = await chained(db), await checkpoints(db)
    assert [(c.id, c.event_id, c.hash) for c in cps] == [(1, 3, rows[2].hash)]
    message = chain.checkpoint_message(1, 3, rows[2].hash, cps[0].at, cps[0].key_id)
    assert chain.signature_ok(key.public_key(), cps[0].signature, message)
    async with db() as s:
        head = await s.get(AuditChainHead, 1)
        result = await verify_chain(s, key.public_key())
    assert head is not None and (head.checkpoints, head.checkpoint_event_id) == (1, 3)
    assert result.ok and result.checked == 5 and result.checkpoints == 1 and result.uncovered == 2


async def test_many_appends_single_and_batched_keep_one_verifiable_chain(
    db: Sessions, key: Ed25519PrivateKey
) -> None:
    """The statements are built once and reused: hundreds of appends still chain."""
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=7, seconds=3600))
    expected = []
    for n in range(150):
        if n % 3:
            await audit.record("test:audit:append", actor=f"a{n}", n=n)
            expected.append(n)
        else:
            batch = [
                Event("test:audit:append", actor=f"a{n}", detail={"n": n, "k": k}) for k in (0, 1)
            ]
            await audit.record_many(batch)
            expected += [n, n]

    rows = await chained(db)
    assert [r.id for r in rows] == list(range(1, len(expected) + 1))
    assert [r.detail["n"] for r in rows] == expected
    cps = await checkpoints(db)
    assert [c.event_id for c in cps] == list(range(7, len(expected) + 1, 7))
    async with db() as s:
        result = await verify_chain(s, key.public_key())
    assert result.ok and result.checked == len(expected) and result.checkpoints == len(cps)


async def test_a_batch_with_a_bad_tag_writes_nothing(db: Sessions) -> None:
    audit = AuditLog(db)
    with pytest.raises(ValueError, match="source:subject:action"):
        await audit.record_many([Event("broker:session:end"), Event("Session end")])
    await audit.record_many([])
    assert await chained(db) == []


async def test_a_batch_spooled_during_an_outage_keeps_all_its_events(
    db: Sessions, unreachable: Sessions, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    down = AuditLog(unreachable, signing_key=key, spool_dir=spool)
    await down.record_many(
        [
            Event("broker:recording:final", actor="vendor1", session_id="s1",
                  detail={"status": "final"}),
            Event("broker:session:end", actor="vendor1", session_id="s1",
                  detail={"reason": "database-unreachable"}),
            Event("broker:forward:deny", actor="vendor1", detail={"reason": "x"}),
        ]
    )  # fmt: skip
    assert down._spool is not None
    down._spool.rotate()
    (spooled,) = spool.glob("*.jsonl")
    lines = [json.loads(line) for line in spooled.read_text().splitlines()]
    assert [e["tag"] for e in lines] == [
        "broker:recording:final", "broker:session:end", "broker:forward:deny"
    ]  # fmt: skip
    assert len({e["detail"]["spool_id"] for e in lines}) == 3

    up = AuditLog(db, signing_key=key, spool_dir=spool)
    assert await up.replay_spool() == 3
    rows = await chained(db)
    assert [r.tag for r in rows] == [e["tag"] for e in lines]
    assert rows[1].session_id == "s1" and rows[1].detail["reason"] == "database-unreachable"
    async with db() as s:
        assert (await verify_chain(s, key.public_key())).ok


async def test_rows_are_written_with_their_events_in_one_transaction(db: Sessions) -> None:
    audit = AuditLog(db)
    vendor = Vendor(name="Infusia")
    await audit.record_many([Event("policy:vendor:add", detail={"name": "Infusia"})], rows=[vendor])

    async with db() as s:
        stored = await s.scalar(select(Vendor).where(Vendor.name == "Infusia"))
    assert stored is not None and stored.id == vendor.id
    assert [r.tag for r in await chained(db)] == ["policy:vendor:add"]


async def test_a_row_that_fails_takes_its_events_with_it(db: Sessions, tmp_path: Path) -> None:
    audit = AuditLog(db, spool_dir=tmp_path / "spool")
    await audit.record_many([Event("policy:vendor:add")], rows=[Vendor(name="Infusia")])
    with pytest.raises(IntegrityError):  # the name is taken
        await audit.record_many([Event("policy:vendor:add")], rows=[Vendor(name="Infusia")])

    assert [r.id for r in await chained(db)] == [1]
    async with db() as s:
        head = await s.get(AuditChainHead, 1)
        assert len(list(await s.scalars(select(Vendor)))) == 1
    assert head is not None and head.last_event_id == 1
    assert not (tmp_path / "spool").exists()


async def test_with_rows_an_outage_raises_instead_of_spooling(
    unreachable: Sessions, tmp_path: Path
) -> None:
    """An event about a row that was never written must not reach the chain later."""
    audit = AuditLog(unreachable, spool_dir=tmp_path / "spool")
    with pytest.raises(OSError):
        await audit.record_many([Event("policy:vendor:add")], rows=[Vendor(name="Infusia")])
    assert not (tmp_path / "spool").exists()
