"""Fixtures the audit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.config import Settings
from policy.db import create_engine, session_factory
from policy.keyfiles import load_signing_key


@pytest.fixture
def key(settings: Settings) -> Ed25519PrivateKey:
    return load_signing_key(settings.audit_key_path)


@pytest.fixture
async def unreachable() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A database that does not answer: PostgreSQL on a port nobody listens on."""
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    yield session_factory(engine)
    await engine.dispose()
