"""Audit events survive a database outage: spooled to disk, then chained once it is back."""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.models import AuditChainHead, AuditEvent
from recorder.audit import AuditLog
from recorder.verify import verify_chain

Sessions = async_sessionmaker[AsyncSession]


async def chained(db: Sessions) -> list[AuditEvent]:
    async with db() as s:
        return list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


async def test_events_written_during_an_outage_reach_the_chain_later(
    db: Sessions, unreachable: Sessions, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    down = AuditLog(unreachable, signing_key=key, spool_dir=spool)
    await down.record("broker:session:end", actor="vendor1", session_id="s1", reason="db-lost")
    await down.record("broker:target:deny", actor="vendor2", reason="database-unreachable")
    assert await chained(db) == []

    # the writer still holds its file: nobody else may replay it yet
    up = AuditLog(db, signing_key=key, spool_dir=spool)
    assert await up.replay_spool() == 0
    assert down._spool is not None
    down._spool.rotate()

    assert await up.replay_spool() == 2
    rows = await chained(db)
    assert [r.tag for r in rows] == ["broker:session:end", "broker:target:deny"]
    assert rows[0].session_id == "s1" and rows[0].actor == "vendor1"
    assert rows[0].detail["reason"] == "db-lost" and "occurred_at" in rows[0].detail
    assert rows[1].detail["spool_id"] != rows[0].detail["spool_id"]
    assert list(spool.glob("*.jsonl")) == []
    async with db() as s:
        assert (await verify_chain(s, key.public_key())).ok


async def test_a_replay_cut_off_midway_does_not_chain_an_event_twice(
    db: Sessions, unreachable: Sessions, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    down = AuditLog(unreachable, spool_dir=spool)
    await down.record("broker:session:end", actor="vendor1", reason="a")
    await down.record("broker:session:end", actor="vendor1", reason="b")
    assert down._spool is not None
    down._spool.rotate()
    (spooled,) = spool.glob("*.jsonl")
    copy = tmp_path / "copy.jsonl"
    shutil.copyfile(spooled, copy)

    up = AuditLog(db, spool_dir=spool)
    assert await up.replay_spool() == 2
    shutil.copyfile(copy, spooled)  # as if the process died before removing the file
    assert await up.replay_spool() == 0
    assert [r.detail["reason"] for r in await chained(db)] == ["a", "b"]


async def test_a_line_torn_by_a_crash_is_dropped_and_the_rest_replayed(
    db: Sessions, unreachable: Sessions, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    down = AuditLog(unreachable, spool_dir=spool)
    await down.record("broker:session:end", actor="vendor1", reason="whole")
    assert down._spool is not None
    down._spool.rotate()
    (spooled,) = spool.glob("*.jsonl")
    with spooled.open("a") as f:
        f.write('{"tag": "broker:session:e')
    assert await AuditLog(db, spool_dir=spool).replay_spool() == 1
    assert [r.detail["reason"] for r in await chained(db)] == ["whole"]


async def test_a_file_locked_by_a_live_process_is_left_alone(
    db: Sessions, unreachable: Sessions, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    live = spool / "123-live.jsonl"
    live.write_text("")
    with live.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert await AuditLog(db, spool_dir=spool).replay_spool() == 0
        assert live.exists()


async def test_without_a_spool_an_outage_raises(unreachable: Sessions) -> None:
    with pytest.raises(OSError):
        await AuditLog(unreachable).record("broker:session:end", actor="x")


async def test_our_own_errors_are_raised_not_spooled(db: Sessions, tmp_path: Path) -> None:
    """A constraint violation is a bug to see, not an outage to wait out."""
    audit = AuditLog(db, spool_dir=tmp_path / "spool")
    await audit.record("broker:session:end", actor="x")
    async with db() as s:  # wind the head back: the next event's id is taken
        await s.execute(update(AuditChainHead).values(last_event_id=0))
        await s.commit()
    with pytest.raises(IntegrityError):
        await audit.record("broker:session:end", actor="y")
    assert not (tmp_path / "spool").exists()
