"""Migration 0002 chains the audit events that existed before it (renumbered 1..n)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text

from policy import migrate
from policy.db import create_engine as create_async_engine
from policy.db import session_factory
from policy.models import AuditEvent
from recorder import chain
from recorder.audit import AuditLog
from recorder.verify import verify_chain
from tests.support.pgdb import scratch_database


@pytest.fixture
def fresh_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of the configured backend, not yet migrated."""
    if os.environ.get("SALLYPORT_TEST_DB", "sqlite") == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    with scratch_database("sallyport_mig") as url:
        yield url


async def test_existing_events_are_chained_and_the_log_continues(fresh_url: str) -> None:

    await asyncio.to_thread(migrate.upgrade, fresh_url, "0001")
    sync_url = fresh_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_engine(sync_url)
    with engine.begin() as conn:
        for event_id, tag in (
            (3, "broker:login:success"),
            (7, "broker:session:start"),
            (20, "broker:session:end"),
        ):
            conn.execute(
                text(
                    "INSERT INTO audit_event (id, at, tag, actor, detail) "
                    "VALUES (:id, '2026-01-02 03:04:05.123456', :tag, 'vendor1', :detail)"
                ),
                {"id": event_id, "tag": tag, "detail": f'{{"n": {event_id}, "t": [1, 2]}}'},
            )
    engine.dispose()

    await asyncio.to_thread(migrate.upgrade, fresh_url)

    aengine = create_async_engine(fresh_url)
    sessions = session_factory(aengine)
    try:
        key = Ed25519PrivateKey.generate()
        await AuditLog(sessions, signing_key=key).record("broker:login:fail", actor="x")
        await AuditLog(sessions, signing_key=key).checkpoint(force=True)
        async with sessions() as s:
            rows = (
                await s.execute(text("SELECT id, tag, prev_hash FROM audit_event ORDER BY id"))
            ).all()
            result = await verify_chain(s, key.public_key())
            first = await s.get(AuditEvent, 1)
    finally:
        await aengine.dispose()
    assert [(r[0], r[1]) for r in rows] == [
        (1, "broker:login:success"),
        (2, "broker:session:start"),
        (3, "broker:session:end"),
        (4, "broker:login:fail"),
    ]
    assert rows[0][2] == chain.GENESIS
    assert first is not None and first.detail == {"n": 3, "t": [1, 2]}
    assert result.ok, result.first_bad
    assert result.checked == 4 and result.checkpoints == 1
