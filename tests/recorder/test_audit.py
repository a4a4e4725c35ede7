"""The audit log's hash chain and signed checkpoints on the real database."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from policy.config import Settings
from policy.keyfiles import load_signing_key
from policy.models import AuditChainHead, AuditCheckpoint, AuditEvent, utcnow
from recorder import chain
from recorder.audit import AuditLog, CheckpointPolicy
from recorder.verify import verify_chain

Sessions = async_sessionmaker[AsyncSession]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def key(settings: Settings) -> Ed25519PrivateKey:
    return load_signing_key(settings.audit_key_path)


async def events(db: Sessions) -> list[AuditEvent]:
    async with db() as s:
        return list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


async def test_events_form_a_chain_from_genesis(db: Sessions, key: Ed25519PrivateKey) -> None:
    audit = AuditLog(db, signing_key=key)
    await audit.record("broker:login:success", actor="vendor1", device="pump-12", client="x")
    await audit.record("broker:session:start", actor="vendor1", session_id="s1", kind=("a", 1))
    await audit.record("broker:session:end", actor="vendor1", session_id="s1", reason="exit")

    rows = await events(db)
    assert [r.id for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == chain.GENESIS
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert rows[1].detail == {"kind": ["a", 1]}  # stored as hashed: JSON-normalized
    content = chain.event_content(
        id=1, at=rows[0].at, tag="broker:login:success", actor="vendor1", device="pump-12",
        session_id=None, request_id=None, detail={"client": "x"},
    )  # fmt: skip
    assert rows[0].hash == chain.link_hash(chain.GENESIS, chain.content_hash(content))
    async with db() as s:
        result = await verify_chain(s, key.public_key())
    assert result.ok and result.checked == 3 and result.first_bad is None


async def test_bad_tag_is_refused_and_nothing_is_written(db: Sessions) -> None:
    audit = AuditLog(db)
    with pytest.raises(ValueError, match="source:subject:action"):
        await audit.record("Broker login")
    assert await events(db) == []


async def test_checkpoint_every_n_events_is_signed_and_logged(
    db: Sessions, key: Ed25519PrivateKey
) -> None:
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=3, seconds=3600))
    with capture_logs() as logs:
        for n in range(7):
            await audit.record("test:audit:append", n=n)

    async with db() as s:
        cps = list(await s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
        result = await verify_chain(s, key.public_key())
    assert [(c.id, c.event_id) for c in cps] == [(1, 3), (2, 6)]
    rows = await events(db)
    assert cps[1].hash == rows[5].hash
    assert cps[0].key_id == chain.key_id(key.public_key())
    message = chain.checkpoint_message(2, 6, cps[1].hash, cps[1].at, cps[1].key_id)
    assert chain.signature_ok(key.public_key(), cps[1].signature, message)
    witnessed = [e for e in logs if e["event"] == "recorder:audit:checkpoint"]
    assert [(e["checkpoint"], e["event_id"], e["hash"]) for e in witnessed] == [
        (1, 3, cps[0].hash),
        (2, 6, cps[1].hash),
    ]
    assert witnessed[1]["signature"] == cps[1].signature
    assert result.ok and result.checkpoints == 2 and result.uncovered == 1


async def test_checkpoint_after_t_seconds(db: Sessions, key: Ed25519PrivateKey) -> None:
    now = [utcnow()]
    audit = AuditLog(
        db,
        signing_key=key,
        checkpoints=CheckpointPolicy(every=1000, seconds=60),
        clock=lambda: now[0],
    )
    await audit.record("test:audit:append", n=1)
    await audit.checkpoint(force=True)  # (the chain head may already be old)
    await audit.record("test:audit:append", n=2)
    assert await audit.checkpoint() is None  # not due yet
    now[0] += timedelta(seconds=61)
    cp = await audit.checkpoint()  # the timer's call: due by time
    assert cp is not None and cp.event_id == 2
    assert await audit.checkpoint(force=True) is None  # nothing new to cover
    await audit.record("test:audit:append", n=3)
    now[0] += timedelta(seconds=61)
    await audit.record("test:audit:append", n=4)  # due by time at append
    async with db() as s:
        cps = list(await s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
    assert [c.event_id for c in cps] == [1, 2, 4]


async def test_no_key_keeps_the_chain_without_checkpoints(db: Sessions) -> None:
    audit = AuditLog(db)
    for n in range(3):
        await audit.record("test:audit:append", n=n)
    assert await audit.checkpoint(force=True) is None
    async with db() as s:
        assert await s.scalar(select(func.count()).select_from(AuditCheckpoint)) == 0
        head = await s.get(AuditChainHead, 1)
    assert head is not None and head.last_event_id == 3


async def test_from_settings_signs_with_the_audit_key(db: Sessions, settings: Settings) -> None:
    audit = AuditLog.from_settings(db, settings)
    await audit.record("test:audit:append")
    cp = await audit.checkpoint(force=True)
    assert cp is not None
    assert cp.key_id == chain.key_id(load_signing_key(settings.audit_key_path).public_key())


async def test_concurrent_processes_keep_one_consistent_chain(
    db: Sessions, settings: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Four OS processes append at once; the chain stays whole and no event is lost."""
    workers, count = 4, 60
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.audit_worker",
            settings.database_url,
            str(settings.audit_key_path),
            f"w{i}",
            str(count),
            str(go),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(workers)
    ]
    await asyncio.sleep(1.0)  # let every worker import and connect, then start together
    go.touch()
    for proc in procs:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]

    rows = await events(db)
    assert [r.id for r in rows] == list(range(1, workers * count + 1))
    per_worker = Counter(r.actor for r in rows)
    assert per_worker == {f"w{i}": count for i in range(workers)}
    for i in range(workers):  # each worker's own events keep their order
        mine = [r.detail["n"] for r in rows if r.actor == f"w{i}"]
        assert mine == list(range(count))
    switches = sum(a.actor != b.actor for a, b in itertools.pairwise(rows))
    assert switches > workers, "the appends did not interleave"
    async with db() as s:
        result = await verify_chain(s, key.public_key())
        cps = list(await s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
    assert result.ok, result.first_bad
    assert result.checked == workers * count
    assert [c.id for c in cps] == list(range(1, len(cps) + 1))
    assert result.checkpoints == len(cps) >= (workers * count) // 7
