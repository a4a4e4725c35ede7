"""A small hospital with recorded sessions and an audit chain, for evidence tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncssh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin
from policy.config import Settings
from policy.keyfiles import load_signing_key
from policy.models import (
    AccessRequest,
    Approval,
    Grant,
    Recording,
    RecordingStatus,
    RequestStatus,
    Session,
)
from policy.vault import Vault
from recorder.audit import AuditLog, CheckpointPolicy
from recorder.channel import AsciicastRecording
from recorder.storage import LocalStorage

Sessions = async_sessionmaker[AsyncSession]
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


@dataclass
class World:
    db: Sessions
    storage: LocalStorage
    key: Ed25519PrivateKey
    audit: AuditLog
    session_id: str
    other_session_id: str
    recording_key: str


async def add_session(
    world_db: Sessions, grant_id: int, session_id: str, client: str, started: datetime
) -> None:
    async with world_db() as s:
        g = await s.get(Grant, grant_id)
        assert g is not None
        s.add(
            Session(
                id=session_id,
                vendor_user_id=g.vendor_user_id,
                device_id=1,
                grant_id=grant_id,
                ticket_ref=g.ticket_ref,
                kind="shell",
                client_address=client,
                gateway_node="gw-1",
                started_at=started,
                device_snapshot={"name": "pump-12", "firmware": "4.2.1", "version": 1},
            )
        )
        await s.commit()


async def build_world(db: Sessions, vault: Vault, settings: Settings) -> World:
    """Vendor1 on pump-12 for CHG0001234 (request with two approvals), one recorded shell
    session with a file transfer; another vendor's session interleaved in the chain."""
    key = load_signing_key(settings.audit_key_path)
    storage = LocalStorage(settings.recordings_dir)
    audit = AuditLog(db, signing_key=key, checkpoints=CheckpointPolicy(every=4, seconds=3600))
    now = datetime.now(UTC)
    async with db() as s:
        await admin.add_segment(s, "icu")
        await admin.add_device(
            s,
            vault,
            name="pump-12",
            segment="icu",
            address="10.20.0.12",
            services=[admin.ServiceSpec("ssh", 22)],
            credential=None,
            host_key=HOST_KEY,
            manufacturer="Infusia",
            model="IP-9",
        )
        await admin.add_vendor(s, "Infusia Medical")
        await admin.add_vendor(s, "Other Corp")
        for login, vendor in (("vendor1", "Infusia Medical"), ("vendor2", "Other Corp")):
            await admin.add_vendor_user(
                s, vault, login=login, vendor=vendor, password="pw-long-enough"
            )
        g1 = await admin.add_grant(
            s,
            login="vendor1",
            devices=["pump-12"],
            services=["ssh"],
            ticket="CHG0001234",
            start=now - timedelta(hours=1),
            end=now + timedelta(hours=1),
            approved_by="b1,s1",
        )
        g2 = await admin.add_grant(
            s,
            login="vendor2",
            devices=["pump-12"],
            services=["ssh"],
            ticket="INC0000999",
            start=now - timedelta(hours=1),
            end=now + timedelta(hours=1),
            approved_by="b1",
        )
        request = AccessRequest(
            vendor_user_id=g1.vendor_user_id,
            ticket_ref="CHG0001234",
            reason="firmware fix",
            services=["ssh"],
            window_start=g1.window_start,
            window_end=g1.window_end,
            status=RequestStatus.APPROVED,
        )
        request.approvals = [
            Approval(approver="bea.biomed", role="biomed", decision="approve", comment="ok"),
            Approval(approver="sam.security", role="security", decision="approve"),
        ]
        s.add(request)
        await s.flush()
        g1.request_id = request.id
        await s.commit()
        g1_id, g2_id, request_id = g1.id, g2.id, request.id

    await audit.record("broker:login:success", actor="vendor2", client="10.9.9.9:1")
    await audit.record("broker:login:success", actor="vendor1", client="10.1.1.1:5000")
    await add_session(db, g1_id, "a" * 32, "10.1.1.1:5000", datetime.now(UTC))
    await add_session(db, g2_id, "b" * 32, "10.9.9.9:1", datetime.now(UTC))
    await audit.record("policy:request:approve", actor="sam.security", request_id=request_id)
    await audit.record(
        "broker:session:start",
        actor="vendor1",
        session_id="a" * 32,
        grant=g1_id,
        ticket="CHG0001234",
        kind="shell",
    )
    await audit.record(
        "broker:session:start",
        actor="vendor2",
        session_id="b" * 32,
        grant=g2_id,
        ticket="INC0000999",
        kind="shell",
    )
    rec_key = f"2026/11/23/{'a' * 32}/shell.cast"
    cast = AsciicastRecording(storage.create(rec_key), width=80, height=24, started_at=1.0)
    cast.output(b"pump-12> ")
    cast.input(b"stauts\x7f\x7f\x7f\x7fatus\r")
    cast.output(b"status\r\nok\r\npump-12> ")
    cast.input(b"cat /etc/pump.conf\r")
    cast.output(b"<script>alert(1)</script>\r\n")
    stored = cast.close()
    async with db() as s:
        s.add(
            Recording(
                session_id="a" * 32,
                format=cast.format,
                storage_key=rec_key,
                status=RecordingStatus.FINAL,
                sha256=stored.sha256,
                size=stored.size,
                finished_at=datetime.now(UTC),
            )
        )
        await s.commit()
    await audit.record(
        "broker:transfer:file",
        actor="vendor1",
        session_id="a" * 32,
        path="/var/log/pump.log",
        size=1234,
        sha256="ab" * 32,
        direction="download",
    )
    await audit.record(
        "broker:recording:final",
        actor="vendor1",
        session_id="a" * 32,
        key=rec_key,
        sha256=stored.sha256,
        size=stored.size,
        status="final",
    )
    await audit.record(
        "broker:session:end", actor="vendor1", session_id="a" * 32, reason="exit", exit_status=0
    )
    await audit.record("broker:session:end", actor="vendor2", session_id="b" * 32, reason="exit")
    return World(db, storage, key, audit, "a" * 32, "b" * 32, rec_key)
