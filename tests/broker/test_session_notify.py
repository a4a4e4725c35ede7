"""The gateway tells webhooks when a session starts and ends (stock OpenSSH, real sshd)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.config import Settings
from policy.models import Device, Session
from tests.conftest import VendorLogin, grant
from tests.policy.test_notify import Hit, Receiver, serving

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
SECRET = "gateway-hook-secret"


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with serving(receiver):
        yield receiver


@pytest.fixture
def settings(settings: Settings, hooks: Receiver) -> Settings:
    """The shared settings with a webhook: the ``gateway`` fixture builds its notifier
    from these (and closes the gateway before the receiver stops)."""
    hook = f"{hooks.url}/events"
    return replace(settings, notify_webhooks=(hook,), notify_webhook_secret=SECRET)


async def received(hooks: Receiver, count: int) -> list[Hit]:
    for _ in range(300):
        if len(hooks.hits) >= count:
            return hooks.hits
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(hooks.hits)} of {count} webhooks arrived")


async def test_exec_session_start_and_end_reach_the_webhook(
    vendor: VendorLogin, pump: Device, db: Sessions, hooks: Receiver
) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh("pump-12", "echo hello; exit 4")
    assert result.stdout == b"hello\n" and result.returncode == 4

    started, ended = await received(hooks, 2)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()

    assert started.json()["event"] == "session.started"
    assert ended.json()["event"] == "session.ended"
    for hit in (started, ended):
        assert hit.path == "/events"
        signature = hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hit.headers["X-Sallyport-Signature"] == f"sha256={signature}"
        data = hit.json()["data"]
        assert data["session_id"] == session.id
        assert data["vendor"] == "vendor1"
        assert data["device"] == "pump-12"
        assert data["ticket"] == "CHG0001234"
        assert data["kind"] == "exec"
        assert data["started_at"] == session.started_at.isoformat()

    begin, end = started.json()["data"], ended.json()["data"]
    assert begin["ended_at"] is None and begin["end_reason"] is None
    assert session.ended_at is not None
    assert end["ended_at"] == session.ended_at.isoformat()
    assert end["end_reason"] == "exit" and end["exit_status"] == 4
    # byte counts are kept for forwards; a shell or exec session has its recording instead
    assert end["bytes_from_device"] == session.bytes_from_device
    assert end["bytes_from_vendor"] == session.bytes_from_vendor
    assert len(hooks.hits) == 2
