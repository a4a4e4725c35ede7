"""Supervision with the real OpenSSH client: revocation, kill, window warnings, idle, shutdown."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.cli import main
from broker.gateway import Gateway
from policy.models import AuditEvent, Device, Session
from policy.supervise import Limits
from tests.broker.test_gateway import only_session
from tests.conftest import Clock, VendorLogin, grant

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


async def live_session_id(db: Sessions) -> str:
    for _ in range(200):
        async with db() as s:
            sid = await s.scalar(select(Session.id).where(Session.ended_at.is_(None)))
        if sid:
            return str(sid)
        await asyncio.sleep(0.05)
    raise AssertionError("no session started")


async def wait_recorded(db: Sessions, gateway: Gateway, text: bytes) -> None:
    """Until ``text`` is in the live session's recording (so the vendor has seen it)."""
    from policy.models import Recording
    from recorder.readers import parse

    for _ in range(200):
        async with db() as s:
            key = await s.scalar(select(Recording.storage_key))
        if key:
            path = gateway.ctx.storage.path(key)  # type: ignore[attr-defined]
            if path.exists() and text in parse(path.read_bytes()).output():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never reached the recording")


async def test_revocation_from_the_cli_ends_the_live_session(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: object
) -> None:
    from policy.config import render_settings

    grant_id = await grant(db, devices=["pump-12"])
    config = gateway.ctx.settings.data_dir / "sallyport.toml"
    config.write_text(render_settings(gateway.ctx.settings))
    ssh = asyncio.ensure_future(vendor.ssh("pump-12", "echo started; sleep 60; echo never"))
    await live_session_id(db)
    await wait_recorded(db, gateway, b"started")
    # another process's view: the CLI writes the revocation to the database
    code = await asyncio.to_thread(
        main,
        ["grant", "revoke", str(grant_id), "--reason", "ticket closed", "--config", str(config)],
    )
    assert code == 0
    result = await asyncio.wait_for(ssh, 10)
    assert result.stdout == b"started\n"
    assert "your grant was revoked" in result.stderr
    session, recording = await only_session(db)
    assert session.end_reason == "revoked" and recording.status == "final"
    async with db() as s:
        tags = list(await s.scalars(select(AuditEvent.tag)))
    assert "policy:grant:revoke" in tags


async def test_kill_request_ends_the_session_and_names_who(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway
) -> None:
    from policy.config import render_settings

    await grant(db, devices=["pump-12"])
    config = gateway.ctx.settings.data_dir / "sallyport.toml"
    config.write_text(render_settings(gateway.ctx.settings))
    ssh = asyncio.ensure_future(vendor.ssh("pump-12", "sleep 60"))
    sid = await live_session_id(db)
    code = await asyncio.to_thread(main, ["sessions", "kill", sid, "--config", str(config)])
    assert code == 0
    result = await asyncio.wait_for(ssh, 10)
    assert "session ended by cli:" in result.stderr
    session, _ = await only_session(db)
    assert session.end_reason == "killed"


async def test_window_warnings_then_close(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, clock: Clock
) -> None:
    gateway.ctx.supervisor.limits = Limits(warnings=(3,), idle_timeout=None, max_session=None)
    code = vendor.code()
    now = clock()
    await grant(
        db, devices=["pump-12"], start=now - timedelta(minutes=1), end=now + timedelta(seconds=5)
    )
    result = await vendor.ssh("pump-12", "sleep 60", answers=[code])
    assert "your access window ends in" in result.stderr
    assert result.stderr.index("ends in") < result.stderr.index("has ended")
    session, _ = await only_session(db)
    assert session.end_reason == "window-ended"


async def test_idle_session_is_closed(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway
) -> None:
    gateway.ctx.supervisor.limits = Limits(warnings=(), idle_timeout=1, max_session=None)
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh("pump-12", "sleep 60")
    assert "idle for 1 s" in result.stderr
    session, _ = await only_session(db)
    assert session.end_reason == "idle-timeout"


async def test_shutdown_tells_the_vendor_and_seals_the_recording(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway
) -> None:
    await grant(db, devices=["pump-12"])
    ssh = asyncio.ensure_future(vendor.ssh("pump-12", "echo up; sleep 60"))
    await live_session_id(db)
    await asyncio.sleep(0.3)
    await gateway.close()
    result = await asyncio.wait_for(ssh, 10)
    assert "the gateway is shutting down" in result.stderr
    session, recording = await only_session(db)
    assert session.end_reason == "gateway-shutdown"
    assert recording.status == "final" and recording.sha256
