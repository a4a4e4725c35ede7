"""A bounded soak: 200 recorded sessions through one gateway process, and nothing leaks.

One ``sallyport serve`` process (its own OS process, so its ``/proc`` can be read) relays
200 OpenSSH exec sessions to a real sshd device, in waves of 10 at once. After two
warm-up waves (pools, caches and worker threads have reached their working size) the
process's open file descriptors and resident memory are sampled with no session live;
after the last wave they are sampled again and must be back at that level: fds within a
few, memory within a bound that a per-session leak over 180 sessions would exceed. Then
every session must have a final recording whose SHA-256 is the stored file's and is in
the audit chain, and ``sallyport audit verify`` must pass.

The database follows ``SALLYPORT_TEST_DB``. Each session is a vendor user of its own, as
a TOTP code is accepted once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, totp
from policy.config import Settings
from policy.models import AuditEvent, Device, Recording, RecordingStatus, Session
from policy.vault import Vault
from recorder.readers import parse
from recorder.storage import LocalStorage
from tests.support.nodes import Node, sallyport_cli, start_node
from tests.support.openssh import ClientIdentity, make_identity, run_ssh

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
RecordProperty = Callable[[str, object], None]  # pytest's record_property fixture

SESSIONS = 200
WAVE = 10  # concurrent sessions
WARMUP_WAVES = 2
FD_SLACK = 5
RSS_SLACK = 20 * 1024 * 1024  # a leak bound, not a speed target
ORG = "Soak Medical"


@dataclass
class Vendor:
    login: str
    secret: str
    identity: ClientIdentity


@dataclass
class Sample:
    fds: int
    rss: int


async def enroll(db: Sessions, vault: Vault, workdir: Path, count: int) -> list[Vendor]:
    """``count`` vendor users, each with a key of its own and a live grant on pump-12."""
    logins = [f"soak{i:03d}" for i in range(count)]
    keys = workdir / "keys"
    identities = await asyncio.gather(*(asyncio.to_thread(make_identity, keys, x) for x in logins))
    now = datetime.now(UTC)
    vendors = []
    async with db() as s:
        await admin.add_vendor(s, ORG)
        for login, identity in zip(logins, identities, strict=True):
            _user, secret = await admin.add_vendor_user(
                s, vault, login=login, vendor=ORG, public_keys=[identity.public_key_line]
            )
            await admin.add_grant(
                s,
                login=login,
                devices=["pump-12"],
                services=["ssh"],
                ticket="CHG0006002",
                start=now - timedelta(minutes=1),
                end=now + timedelta(hours=2),
                approved_by="soak-test",
            )
            vendors.append(Vendor(login, secret, identity))
    return vendors


async def one_session(node: Node, workdir: Path, vendor: Vendor) -> str | None:
    """A short exec session; None when it did what the vendor asked, else what went wrong."""
    result = await run_ssh(
        workdir,
        host="127.0.0.1",
        port=node.gateway_port,
        user=f"{vendor.login}:pump-12",
        identity=vendor.identity,
        command=f"echo hello {vendor.login}",
        answers=[totp.code_at(vendor.secret, datetime.now(UTC))],
        timeout=60,
    )
    if result.returncode != 0 or result.stdout != f"hello {vendor.login}\n".encode():
        return f"{vendor.login}: exit {result.returncode}, {result.stdout!r}, {result.stderr!r}"
    return None


async def closed_out(db: Sessions, count: int) -> None:
    """Until ``count`` sessions exist and all are closed out (recordings sealed)."""
    for _ in range(600):
        async with db() as s:
            total = await s.scalar(select(func.count()).select_from(Session))
            still_open = await s.scalar(
                select(func.count()).select_from(Session).where(Session.ended_at.is_(None))
            )
        if total == count and still_open == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{total} sessions of {count}, {still_open} never closed out")


async def quiet_sample(node: Node) -> Sample:
    """fds and RSS once the fd count has held still for half a second (upstream
    connections are torn down just after the sessions' rows are closed)."""
    counts = [node.fd_count()]
    for _ in range(100):
        await asyncio.sleep(0.1)
        counts.append(node.fd_count())
        if len(counts) >= 6 and len(set(counts[-6:])) == 1:
            break
    return Sample(counts[-1], node.rss_bytes())


async def test_soak_leaves_no_fds_or_memory_behind_and_records_every_session(
    settings: Settings,
    db: Sessions,
    vault: Vault,
    pump: Device,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    began = time.monotonic()
    vendors = await enroll(db, vault, tmp_path, SESSIONS)
    node = start_node(tmp_path / "node", replace(settings, node_name="soak"))
    try:
        baseline: Sample | None = None
        for start in range(0, SESSIONS, WAVE):
            wave = vendors[start : start + WAVE]
            failures = await asyncio.gather(*(one_session(node, tmp_path, v) for v in wave))
            assert [f for f in failures if f] == []
            await closed_out(db, start + len(wave))
            if start + WAVE == WARMUP_WAVES * WAVE:
                baseline = await quiet_sample(node)
        final = await quiet_sample(node)
        live = node.metric("sallyport_sessions_live")
        assert node.stop() == 0  # SIGTERM: a clean shutdown
    finally:
        node.stop()
    assert baseline is not None
    mib = 1024 * 1024
    print(
        f"soak: {SESSIONS} sessions in {time.monotonic() - began:.0f} s; fds {baseline.fds} "
        f"after warm-up, {final.fds} at the end; RSS {baseline.rss / mib:.1f} MiB after "
        f"warm-up, {final.rss / mib:.1f} MiB at the end"
    )
    record_property("fds", f"{baseline.fds} -> {final.fds}")
    record_property("rss_mib", f"{baseline.rss / mib:.1f} -> {final.rss / mib:.1f}")

    assert live == 0
    assert final.fds <= baseline.fds + FD_SLACK
    assert final.rss - baseline.rss < RSS_SLACK
    await every_session_has_audited_final_recording(db, settings)
    result = await sallyport_cli(node.config, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "audit chain intact" in result.stdout


async def every_session_has_audited_final_recording(db: Sessions, settings: Settings) -> None:
    async with db() as s:
        rows = (
            await s.execute(
                select(Session, Recording).join(Recording, Recording.session_id == Session.id)
            )
        ).all()
        audited = {
            e.session_id: e.detail["sha256"]
            for e in await s.scalars(
                select(AuditEvent).where(AuditEvent.tag == "broker:recording:final")
            )
        }
    assert len(rows) == SESSIONS
    assert len({session.id for session, _ in rows}) == SESSIONS  # one recording each
    storage = LocalStorage(settings.recordings_dir)
    for session, recording in rows:
        assert (session.end_reason, session.exit_status) == ("exit", 0)
        assert recording.status == RecordingStatus.FINAL
        data = storage.read(recording.storage_key)
        assert recording.sha256 == hashlib.sha256(data).hexdigest() == audited[session.id]
        assert parse(data).output().startswith(b"hello soak")
