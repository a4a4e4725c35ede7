"""The reviewer's data (recorder/review.py): the session list and its filters, one session
with its device snapshot, grant, request, approvals, transfers, recordings, commands and
audit events, and the recording served to the browser player."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy import admin
from policy.config import Settings
from policy.errors import InvalidInput, NotFound
from policy.models import (
    AccessRequest,
    Approval,
    Device,
    Grant,
    Recording,
    RecordingStatus,
    RequestStatus,
    Session,
    VendorUser,
)
from policy.snapshot import device_snapshot
from policy.vault import Vault
from recorder.audit import AuditLog
from recorder.channel import AsciicastRecording, StreamRecording
from recorder.readers import parse
from recorder.review import asciicast_bytes, list_sessions, session_review
from recorder.storage import LocalStorage
from tests.broker.test_gateway import settled
from tests.broker.test_transfers import run_tool
from tests.conftest import VendorLogin, grant

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)

# (seconds, code, text): what a recording holds
Script = Sequence[tuple[float, str, str]]


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """A hospital with two devices, two vendors, an approved request and its grant."""

    db: Sessions
    storage: LocalStorage
    audit: AuditLog
    grant_id: int
    other_grant_id: int

    async def session(
        self,
        *,
        login: str = "vendor1",
        device: str = "pump-12",
        grant_id: int | None = None,
        started: datetime = T0,
        ended: datetime | None = None,
        end_reason: str | None = None,
        kind: str = "shell",
        command: str | None = None,
        script: Script = (),
        terminal: bool = True,
        complete: bool = True,
    ) -> str:
        """A session row with a real recording of ``script`` in storage."""
        async with self.db() as s:
            user = await s.scalar(select(VendorUser).where(VendorUser.login == login))
            dev = await s.scalar(select(Device).where(Device.name == device))
            assert user is not None and dev is not None
            await s.refresh(dev, ["segment", "services"])
            gid = grant_id or (self.grant_id if login == "vendor1" else self.other_grant_id)
            grant_row = await s.get(Grant, gid)
            assert grant_row is not None
            row = Session(
                vendor_user_id=user.id,
                device_id=dev.id,
                grant_id=gid,
                ticket_ref=grant_row.ticket_ref,
                kind=kind,
                command=command,
                client_address="127.0.0.1:50000",
                gateway_node="node-a",
                started_at=started,
                ended_at=ended,
                end_reason=end_reason,
                exit_status=0 if ended else None,
                device_snapshot=device_snapshot(dev),
            )
            s.add(row)
            await s.commit()
            session_id = row.id
        await self.record(session_id, started, script, terminal, complete, command)
        return session_id

    async def record(
        self,
        session_id: str,
        started: datetime,
        script: Script,
        terminal: bool = True,
        complete: bool = True,
        command: str | None = None,
    ) -> Recording:
        key = f"{started:%Y/%m/%d}/{session_id}/{'shell.cast' if terminal else 'exec.sps'}"
        clock = StepClock()
        sink = self.storage.create(key)
        rec: AsciicastRecording | StreamRecording
        if terminal:
            rec = AsciicastRecording(
                sink, width=80, height=24, started_at=started.timestamp(), clock=clock
            )
        else:
            rec = StreamRecording(
                sink, started_at=started.timestamp(), command=command, clock=clock
            )
        for at, code, text in script:
            clock.now = at
            if code == "i":
                rec.input(text.encode())
            else:
                rec.output(text.encode())
        row = Recording(session_id=session_id, format=rec.format, storage_key=key)
        row.started_at = started
        if complete:
            stored = rec.close()
            row.status, row.sha256, row.size = RecordingStatus.FINAL, stored.sha256, stored.size
            row.finished_at = started + timedelta(seconds=script[-1][0] if script else 0)
        async with self.db() as s:
            s.add(row)
            await s.commit()
        return row


@pytest.fixture
async def world(db: Sessions, vault: Vault, settings: Settings) -> World:
    async with db() as s:
        await admin.add_segment(s, "icu")
        for name, address in (("pump-12", "10.1.0.12"), ("monitor-3", "10.1.0.3")):
            await admin.add_device(
                s,
                vault,
                name=name,
                segment="icu",
                address=address,
                services=[admin.ServiceSpec("ssh", 22)],
                credential=None,
                host_key=None,
            )
        await admin.add_vendor(s, "Infusia Medical")
        await admin.add_vendor(s, "Monitron")
        await admin.add_vendor_user(
            s,
            vault,
            login="vendor1",
            vendor="Infusia Medical",
            display_name="Vera Vendor",
            password="correct horse battery staple",
        )
        await admin.add_vendor_user(
            s, vault, login="mon1", vendor="Monitron", password="correct horse battery staple"
        )
        user = await s.scalar(select(VendorUser).where(VendorUser.login == "vendor1"))
        devices = list(await s.scalars(select(Device).where(Device.name == "pump-12")))
        assert user is not None
        request = AccessRequest(
            vendor_user_id=user.id,
            ticket_ref="CHG0001234",
            reason="replace the pump firmware",
            services=["ssh"],
            window_start=T0 - timedelta(hours=1),
            window_end=T0 + timedelta(hours=8),
            status=RequestStatus.APPROVED,
            filed_by="vendor:vendor1",
            devices=devices,
        )
        request.approvals = [
            Approval(
                approver="sec1",
                role="security",
                decision="approve",
                comment="ok after review",
                decided_at=T0 - timedelta(minutes=20),
            ),
            Approval(
                approver="bio1",
                role="biomed",
                decision="approve",
                comment="downtime agreed",
                decided_at=T0 - timedelta(minutes=30),
            ),
        ]
        s.add(request)
        await s.commit()
        window = {"start": T0 - timedelta(hours=1), "end": T0 + timedelta(hours=8)}
        g = await admin.add_grant(
            s,
            login="vendor1",
            devices=["pump-12"],
            services=["ssh"],
            ticket="CHG0001234",
            approved_by="bio1, sec1",
            **window,
        )
        g.request_id = request.id
        other = await admin.add_grant(
            s,
            login="mon1",
            devices=["monitor-3"],
            services=["ssh"],
            ticket="INC0000777",
            approved_by="bio1",
            **window,
        )
        await s.commit()
        grant_id, other_id = g.id, other.id
    return World(db, LocalStorage(settings.recordings_dir), AuditLog(db), grant_id, other_id)


SHELL: Script = [
    (0.1, "o", "\x1b[01;32mspdevice@pump\x1b[00m:~$ "),
    (1.0, "i", "cat /etc/pump/vers"),
    (1.1, "o", "cat /etc/pump/vers"),
    (1.5, "i", "\x7f\x7f\x7f\x7fversion"),
    (1.6, "o", "\b \b\b \b\b \b\b \bversion"),
    (2.0, "i", "\r"),
    (2.1, "o", "\r\nfirmware 4.2.1\r\n$ "),
    (3.0, "i", "exit\r"),
]


# -- one session -------------------------------------------------------------------------


async def test_review_shows_everything_about_a_session(world: World, db: Sessions) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    other = await world.session(login="mon1", device="monitor-3", script=SHELL)
    await world.audit.record("broker:session:start", actor="vendor1", session_id=sid)
    await world.audit.record(
        "broker:transfer:file",
        actor="vendor1",
        session_id=sid,
        path="/tmp/fw.bin",
        direction="upload",
        size=4096,
        sha256="ab" * 32,
        complete=True,
    )
    await world.audit.record(
        "broker:transfer:deny",
        actor="vendor1",
        session_id=sid,
        operation="remove",
        path="/etc/passwd",
        reason="upload not allowed",
    )
    await world.audit.record("broker:session:start", actor="mon1", session_id=other)
    async with db() as s:  # an inventory edit after the session: the review keeps the past
        await s.execute(update(Device).where(Device.name == "pump-12").values(firmware="9.9"))
        await s.commit()

    async with db() as s:
        review = await session_review(s, world.storage, sid)

    row = review.session
    assert (row.id, row.vendor_login, row.vendor_name, row.device) == (
        sid,
        "vendor1",
        "Infusia Medical",
        "pump-12",
    )
    assert row.ended_at == T0 + timedelta(minutes=5) and row.end_reason == "exit" and not row.live
    assert review.vendor_display_name == "Vera Vendor"
    assert review.ticket == "CHG0001234"
    assert review.device["name"] == "pump-12" and review.device["firmware"] == ""
    assert review.device_source == "snapshot at session start"
    assert review.grant is not None and review.grant.id == world.grant_id
    assert review.grant.devices == ["pump-12"] and review.grant.approved_by == "bio1, sec1"
    assert review.request is not None and review.request.reason == "replace the pump firmware"
    assert [(a.approver, a.role, a.comment) for a in review.request.approvals] == [
        ("bio1", "biomed", "downtime agreed"),
        ("sec1", "security", "ok after review"),
    ]
    assert [(t.path, t.direction, t.size, t.refused, t.reason) for t in review.transfers] == [
        ("/tmp/fw.bin", "upload", 4096, False, None),
        ("/etc/passwd", None, None, True, "upload not allowed"),
    ]
    [rec] = review.recordings
    data = (world.storage.root / rec.storage_key).read_bytes()
    assert rec.format == "asciicast-v2" and rec.status == "final" and rec.playable
    assert (rec.sha256, rec.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert [c.text for c in review.commands] == ["cat /etc/pump/version", "exit"]
    assert review.commands[0].started_at == T0 + timedelta(seconds=2)
    assert [e.tag for e in review.events] == [
        "broker:session:start",
        "broker:transfer:file",
        "broker:transfer:deny",
    ]
    assert all(len(e.hash) == 64 for e in review.events)
    assert review.warnings == []
    assert dataclasses.asdict(review)["session"]["recordings"][0]["id"] == rec.id


async def test_review_of_an_exec_session_lists_its_command(world: World, db: Sessions) -> None:
    sid = await world.session(
        kind="exec",
        command="systemctl status pumpd",
        terminal=False,
        script=[(0.2, "o", "active (running)\n")],
    )
    async with db() as s:
        review = await session_review(s, world.storage, sid)
    assert [(c.text, c.at, c.started_at) for c in review.commands] == [
        ("systemctl status pumpd", 0.0, T0)
    ]
    assert not review.recordings[0].playable


async def test_review_warns_when_a_recording_was_changed_or_lost(
    world: World, db: Sessions
) -> None:
    changed = await world.session(script=SHELL)
    lost = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    async with db() as s:
        rows = await s.execute(select(Recording.session_id, Recording.storage_key))
        keys = {sid: key for sid, key in rows}
    path = world.storage.root / keys[changed]
    os.chmod(path, 0o640)
    path.write_bytes(path.read_bytes().replace(b"4.2.1", b"4.2.2"))
    (world.storage.root / keys[lost]).unlink()

    async with db() as s:
        review = await session_review(s, world.storage, changed)
        gone = await session_review(s, world.storage, lost)
    assert any("differs from the SHA-256" in w for w in review.warnings)
    assert [c.text for c in gone.commands] == []
    assert any("could not be read" in w for w in gone.warnings)


async def test_review_falls_back_to_the_current_device_record(world: World, db: Sessions) -> None:
    sid = await world.session(script=SHELL)
    async with db() as s:
        await s.execute(update(Session).values(device_snapshot=None))
        await s.commit()
        review = await session_review(s, world.storage, sid)
    assert review.device["name"] == "pump-12"
    assert review.device_source == "current record (no snapshot was taken)"


async def test_review_of_an_unknown_session_says_so(world: World, db: Sessions) -> None:
    async with db() as s:
        with pytest.raises(NotFound) as caught:
            await session_review(s, world.storage, "0" * 32)
    assert caught.value.code == "session-unknown"


# -- the session list --------------------------------------------------------------------


async def test_list_filters_by_device_vendor_ticket_reason_and_liveness(
    world: World, db: Sessions
) -> None:
    done = await world.session(ended=T0 + timedelta(minutes=10), end_reason="exit")
    killed = await world.session(
        started=T0 + timedelta(hours=1), ended=T0 + timedelta(hours=2), end_reason="killed"
    )
    live = await world.session(login="mon1", device="monitor-3", started=T0 + timedelta(hours=3))

    async def ids(**filters: object) -> list[str]:
        async with db() as s:
            return [r.id for r in await list_sessions(s, **filters)]  # type: ignore[arg-type]

    assert await ids() == [live, killed, done]  # newest first
    assert await ids(device="pump-12") == [killed, done]
    assert await ids(device="monitor-3") == [live]
    assert await ids(vendor="vendor1") == [killed, done]
    assert await ids(vendor="Monitron") == [live]
    assert await ids(ticket="INC0000777") == [live]
    assert await ids(end_reason="killed") == [killed]
    assert await ids(live=True) == [live]
    assert await ids(live=False) == [killed, done]
    assert await ids(limit=1) == [live]
    assert await ids(device="no-such-device") == []
    async with db() as s:
        [row] = await list_sessions(s, live=True)
    assert row.live and row.vendor_login == "mon1" and row.device == "monitor-3"
    assert row.recordings[0].format == "asciicast-v2"


async def test_list_time_range_keeps_sessions_open_during_it(world: World, db: Sessions) -> None:
    early = await world.session(ended=T0 + timedelta(minutes=30), end_reason="exit")
    late = await world.session(
        started=T0 + timedelta(hours=2), ended=T0 + timedelta(hours=3), end_reason="exit"
    )
    live = await world.session(started=T0 + timedelta(hours=4))

    async def ids(since: datetime | None, until: datetime | None) -> set[str]:
        async with db() as s:
            return {r.id for r in await list_sessions(s, since=since, until=until)}

    assert await ids(T0 + timedelta(minutes=20), T0 + timedelta(minutes=25)) == {early}
    assert await ids(T0 + timedelta(hours=1), T0 + timedelta(hours=2, minutes=1)) == {late}
    assert await ids(T0 + timedelta(hours=5), None) == {live}
    assert await ids(None, T0 + timedelta(hours=1)) == {early}


@pytest.mark.parametrize(
    ("filters", "code"),
    [
        ({"limit": 0}, "limit-invalid"),
        ({"limit": 100_000}, "limit-invalid"),
        ({"since": T0, "until": T0}, "time-range-invalid"),
    ],
)
async def test_list_refuses_bad_filters_with_a_reason(
    world: World, db: Sessions, filters: dict[str, object], code: str
) -> None:
    async with db() as s:
        with pytest.raises(InvalidInput) as caught:
            await list_sessions(s, **filters)  # type: ignore[arg-type]
    assert caught.value.code == code and caught.value.message


# -- the player's file -------------------------------------------------------------------


async def test_player_gets_the_stored_cast(world: World, db: Sessions) -> None:
    sid = await world.session(script=SHELL)
    async with db() as s:
        rec = await s.scalar(select(Recording).where(Recording.session_id == sid))
    assert rec is not None
    data = await asciicast_bytes(world.storage, rec)
    assert data == (world.storage.root / rec.storage_key).read_bytes()
    assert "firmware 4.2.1" in parse(data).output().decode()


async def test_player_gets_only_whole_lines_of_a_recording_being_written(
    world: World, db: Sessions
) -> None:
    sid = await world.session(script=SHELL, complete=False)
    async with db() as s:
        rec = await s.scalar(select(Recording).where(Recording.session_id == sid))
    assert rec is not None and rec.status is RecordingStatus.RECORDING
    path = world.storage.root / rec.storage_key
    with path.open("ab") as fh:  # the writer is in the middle of a line
        fh.write(b'[4.0, "o", "half a li')
    data = await asciicast_bytes(world.storage, rec)
    assert data.endswith(b"\n") and b"half a li" not in data
    assert not parse(data).truncated and len(parse(data).events) == len(SHELL)


async def test_player_refuses_what_it_cannot_play_with_a_reason(world: World, db: Sessions) -> None:
    exec_sid = await world.session(kind="exec", command="id", terminal=False)
    expired = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    missing = await world.session(script=SHELL, started=T0 + timedelta(hours=2))
    async with db() as s:
        recs = {r.session_id: r for r in await s.scalars(select(Recording))}
        await s.execute(
            update(Recording)
            .where(Recording.session_id == expired)
            .values(status=RecordingStatus.EXPIRED)
        )
        await s.commit()
        await s.refresh(recs[expired])
    (world.storage.root / recs[missing].storage_key).unlink()

    for sid, error, code in (
        (exec_sid, InvalidInput, "recording-not-terminal"),
        (expired, NotFound, "recording-expired"),
        (missing, NotFound, "recording-missing"),
    ):
        with pytest.raises(error) as caught:
            await asciicast_bytes(world.storage, recs[sid])
        assert caught.value.code == code and caught.value.message


# -- a real session through the gateway --------------------------------------------------


@pytest.mark.integration
async def test_review_of_a_real_scp_upload(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    await grant(db, devices=["pump-12"])
    source = tmp_path / "settings.json"
    source.write_text('{"rate": 5}\n')
    remote = f"/tmp/sallyport-review-{os.getpid()}-{tmp_path.name}.json"
    try:
        up = await run_tool("scp", vendor, gateway, ["-O", str(source), f"127.0.0.1:{remote}"])
        assert up.returncode == 0, up.stderr
    finally:
        Path(remote).unlink(missing_ok=True)
    await settled(db)
    async with db() as s:
        [row] = await list_sessions(s, device="pump-12", vendor="vendor1")
        review = await session_review(s, gateway.ctx.storage, row.id)
    assert row.kind == "exec" and row.end_reason == "exit" and row.recordings[0].sha256
    [command] = review.commands
    assert command.text.startswith("scp ") and remote in command.text
    [transfer] = review.transfers
    assert transfer.path.startswith(remote)  # the scp tap names the target and the file
    assert (transfer.direction, transfer.size, transfer.complete) == (
        "upload",
        source.stat().st_size,
        True,
    )
    assert transfer.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert {"broker:session:start", "broker:transfer:file", "broker:session:end"} <= {
        e.tag for e in review.events
    }
    assert review.device["name"] == "pump-12" and review.warnings == []
