"""Retention deletes old recordings, and the evidence still explains and verifies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.config import Settings
from policy.models import AuditEvent, Recording
from policy.vault import Vault
from recorder.errors import StorageError
from recorder.retention import EXPIRE_TAG, expire_recordings
from recorder.verify import verify_chain
from tests.support.evidence_world import World, build_world

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def world(db: Sessions, vault: Vault, settings: Settings) -> World:
    return await build_world(db, vault, settings)


async def test_old_recordings_expire_with_an_audit_event(world: World) -> None:
    data = world.storage.read(world.recording_key)
    assert await expire_recordings(world.db, world.storage, world.audit, 30) == []  # too new

    later = datetime.now(UTC) + timedelta(days=31)
    expired = await expire_recordings(world.db, world.storage, world.audit, 30, now=later)

    assert [e.key for e in expired] == [world.recording_key]
    with pytest.raises(StorageError):
        world.storage.read(world.recording_key)
    async with world.db() as s:
        rec = await s.scalar(select(Recording))
        event = await s.scalar(select(AuditEvent).where(AuditEvent.tag == EXPIRE_TAG))
        result = await verify_chain(s, world.key.public_key())
    assert rec is not None and rec.status == "expired"
    assert rec.sha256 is not None  # the hash of what was deleted stays on the row
    assert event is not None and event.session_id == world.session_id
    assert event.detail["key"] == world.recording_key
    assert event.detail["sha256"] == rec.sha256 and event.detail["size"] == len(data)
    assert event.detail["retention_days"] == 30
    assert result.ok, result.first_bad
    # a second run finds nothing more to do
    assert await expire_recordings(world.db, world.storage, world.audit, 30, now=later) == []


async def test_zero_days_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="positive"):
        await expire_recordings(world.db, world.storage, world.audit, 0)
