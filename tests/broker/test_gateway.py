"""End to end: stock OpenSSH client -> sallyport gateway -> real sshd device."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy import admin
from policy.models import AuditEvent, CredentialKind, Device, Recording, Session, VendorUser
from recorder.readers import parse
from tests.conftest import VendorLogin, grant
from tests.support.openssh import TmuxSession, make_askpass, ssh_argv
from tests.support.sshd import SshdDevice

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


async def wait_exit(term: TmuxSession, timeout: float = 15) -> int | None:
    for _ in range(int(timeout / 0.1)):
        status = term.exit_status()
        if status is not None:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"ssh did not exit; screen:\n{term.screen()}")


def pty_ssh(vendor: VendorLogin, gateway: Gateway, workdir: Path) -> TmuxSession:
    """``ssh -tt vendor1:pump-12@gateway`` in a 100x30 tmux terminal, code answered."""
    askpass = make_askpass(workdir, [vendor.code()], None)
    argv = ssh_argv(
        host="127.0.0.1",
        port=gateway.port,
        user="vendor1:pump-12",
        identity=vendor.identity,
        command=None,
        extra_args=["-tt"],
    )
    return TmuxSession(workdir, argv, askpass.env, width=100, height=30)


async def settled(db: Sessions) -> None:
    """Wait until every session is closed out (the gateway seals recordings after the
    vendor's client has already exited)."""
    for _ in range(200):
        async with db() as s:
            open_sessions = await s.scalar(
                select(func.count()).select_from(Session).where(Session.ended_at.is_(None))
            )
            open_recordings = await s.scalar(
                select(func.count()).select_from(Recording).where(Recording.sha256.is_(None))
            )
        if not open_sessions and not open_recordings:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("sessions were not closed out")


async def tags(db: Sessions) -> list[str]:
    await settled(db)
    async with db() as s:
        return list(await s.scalars(select(AuditEvent.tag).order_by(AuditEvent.id)))


async def only_session(db: Sessions) -> tuple[Session, Recording]:
    await settled(db)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
        recording = (await s.scalars(select(Recording))).one()
    return session, recording


async def test_granted_vendor_runs_a_command(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh("pump-12", "echo out-$((6*7)); echo err-line >&2; exit 3")

    assert result.stdout == b"out-42\n"
    assert "err-line" in result.stderr
    assert result.returncode == 3
    assert any("Verification code" in p for p in result.prompts)

    session, recording = await only_session(db)
    assert session.end_reason == "exit" and session.exit_status == 3
    assert session.ticket_ref == "CHG0001234" and session.kind == "exec"
    data = gateway.ctx.storage.read(recording.storage_key)
    parsed = parse(data)
    assert b"out-42\n" in parsed.output()
    assert b"err-line" in parsed.output()
    assert recording.status == "final"
    assert recording.sha256 == hashlib.sha256(data).hexdigest()
    assert recording.size == len(data)
    audit = await tags(db)
    for tag in (
        "broker:login:success",
        "broker:session:start",
        "broker:recording:final",
        "broker:session:end",
    ):
        assert tag in audit


async def test_device_password_never_reaches_the_vendor(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    secret = sshd_device.password.encode()
    outputs = []
    for command in ("env", "cat /proc/$$/cmdline; ps -ef", "id; echo $SSH_CONNECTION"):
        result = await vendor.ssh("pump-12", command)
        assert result.returncode == 0
        outputs.append(result.stdout + result.stderr.encode())
    listing = await vendor.ssh(None)
    outputs.append(listing.stdout + listing.stderr.encode())
    await settled(db)
    assert b"spdevice" in outputs[2] or sshd_device.username.encode() in outputs[2]
    for out in outputs:
        assert secret not in out
    async with db() as s:
        keys = list(await s.scalars(select(Recording.storage_key)))
    for key in keys:
        assert secret not in gateway.ctx.storage.read(key)


async def test_listing_shows_live_grants(vendor: VendorLogin, pump: Device, db: Sessions) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh(None)
    assert result.returncode == 0
    assert b"pump-12" in result.stdout and b"CHG0001234" in result.stdout
    settings = vendor.gateway.ctx.settings  # the address vendors use, not a placeholder
    hint = f"connect with: ssh -p {settings.gateway_public_port} vendor1:DEVICE@"
    assert f"{hint}{settings.gateway_public_host}".encode() in result.stdout


@pytest.mark.parametrize(
    ("window", "device", "message"),
    [
        ("none", "pump-12", "you have no grant for device 'pump-12'"),
        ("live", "pump-99", "device 'pump-99' is not in the inventory"),
        ("future", "pump-12", "has not started"),
        ("past", "pump-12", "has ended"),
        ("revoked", "pump-12", "was revoked"),
    ],
)
async def test_refusals_name_the_reason(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    window: str,
    device: str,
    message: str,
) -> None:
    now = datetime.now(UTC)
    if window in ("live", "revoked"):
        grant_id = await grant(db, devices=["pump-12"])
        if window == "revoked":
            async with db() as s:
                from policy.models import Grant

                await s.execute(update(Grant).where(Grant.id == grant_id).values(revoked_at=now))
                await s.commit()
    elif window == "future":
        await grant(
            db, devices=["pump-12"], start=now + timedelta(days=1), end=now + timedelta(days=2)
        )
    elif window == "past":
        await grant(
            db, devices=["pump-12"], start=now - timedelta(days=2), end=now - timedelta(days=1)
        )

    result = await vendor.ssh(device, "echo should-not-run")

    assert result.returncode != 0
    assert b"should-not-run" not in result.stdout
    assert message in result.stderr
    assert "broker:target:deny" in await tags(db)
    async with db() as s:
        assert (await s.scalars(select(Session))).all() == []


async def test_wrong_totp_is_refused(vendor: VendorLogin, pump: Device, db: Sessions) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh(
        "pump-12", "echo hi", answers=["000000"], extra_opts=["NumberOfPasswordPrompts=1"]
    )
    assert result.returncode == 255
    assert result.stdout == b""
    assert "verification code rejected" in result.stderr
    assert "broker:mfa:fail" in await tags(db)


async def test_replayed_totp_is_refused(vendor: VendorLogin, pump: Device, db: Sessions) -> None:
    await grant(db, devices=["pump-12"])
    code = vendor.code()
    first = await vendor.ssh("pump-12", "echo first", answers=[code])
    assert first.stdout == b"first\n"
    again = await vendor.ssh(
        "pump-12", "echo again", answers=[code], extra_opts=["NumberOfPasswordPrompts=1"]
    )
    assert again.returncode == 255
    assert b"again" not in again.stdout
    assert "already used" in again.stderr
    assert "broker:mfa:replay" in await tags(db)


async def test_wrong_key_is_refused_before_any_code(
    vendor: VendorLogin, pump: Device, db: Sessions, tmp_path: Path
) -> None:
    from tests.support.openssh import make_identity

    await grant(db, devices=["pump-12"])
    stranger = make_identity(tmp_path, "stranger")
    result = await vendor.ssh(
        "pump-12",
        "echo hi",
        identity=stranger,
        extra_opts=["PreferredAuthentications=publickey"],
    )
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert result.prompts == []  # never got as far as the second factor


async def test_password_alone_is_not_enough_but_password_and_code_are(
    vendor: VendorLogin, pump: Device, db: Sessions
) -> None:
    await grant(db, devices=["pump-12"])
    assert vendor.password is not None
    result = await vendor.ssh(
        "pump-12",
        "echo via-password",
        identity=None,
        answers=[vendor.password, vendor.code()],
        extra_opts=["PreferredAuthentications=password,keyboard-interactive"],
    )
    assert result.stdout == b"via-password\n"
    assert any("Verification code" in p for p in result.prompts)

    without_code = await vendor.ssh(
        "pump-12",
        "echo nope",
        identity=None,
        answers=[vendor.password],
        extra_opts=["PreferredAuthentications=password", "NumberOfPasswordPrompts=1"],
    )
    assert without_code.returncode == 255
    assert without_code.stdout == b""


async def test_lockout_after_five_failures(vendor: VendorLogin, pump: Device, db: Sessions) -> None:
    await grant(db, devices=["pump-12"])
    for _ in range(5):
        bad = await vendor.ssh(
            "pump-12", "true", answers=["123456"], extra_opts=["NumberOfPasswordPrompts=1"]
        )
        assert bad.returncode == 255
    assert "account locked" in bad.stderr
    # Even the right code is now refused, and the vendor is told why.
    locked = await vendor.ssh("pump-12", "echo hi")
    assert locked.returncode == 255
    assert locked.stdout == b""
    assert "account locked" in locked.stderr
    audit = await tags(db)
    assert "broker:mfa:lockout" in audit
    async with db() as s:
        user = (await s.scalars(select(VendorUser))).one()
        assert user.locked_until is not None


async def test_changed_device_host_key_is_refused(
    vendor: VendorLogin, pump: Device, db: Sessions
) -> None:
    await grant(db, devices=["pump-12"])
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    async with db() as s:
        await s.execute(update(Device).values(ssh_host_key=impostor.strip()))
        await s.commit()
    result = await vendor.ssh("pump-12", "echo hi")
    assert result.returncode != 0
    assert result.stdout == b""
    assert "does not match the pinned one" in result.stderr
    session, _recording = await only_session(db)
    assert session.end_reason == "device-host-key-changed"


async def test_device_key_credential(
    vendor: VendorLogin,
    db: Sessions,
    vault: object,
    sshd_device: SshdDevice,
) -> None:
    device_key = asyncssh.generate_private_key("ssh-ed25519")
    sshd_device.add_authorized_key(device_key.export_public_key().decode())
    async with db() as s:
        await admin.add_segment(s, "lab")
        await admin.add_device(
            s,
            vault,  # type: ignore[arg-type]
            name="monitor-3",
            segment="lab",
            address=sshd_device.host,
            services=[admin.ServiceSpec("ssh", sshd_device.port)],
            credential=admin.Credential(
                sshd_device.username,
                CredentialKind.KEY,
                device_key.export_private_key().decode(),
            ),
            host_key=sshd_device.host_public_key,
        )
    await grant(db, devices=["monitor-3"])
    result = await vendor.ssh("monitor-3", "id -un")
    assert result.stdout.decode().strip() == sshd_device.username
    assert "Accepted publickey" in sshd_device.log_text()


async def test_interactive_pty_session_with_resize(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    await grant(db, devices=["pump-12"])
    with pty_ssh(vendor, gateway, tmp_path / "pty") as term:
        term.sendline("PS1='dev$ '; stty size")
        await term.wait_for_async("30 100")
        term.resize(120, 40)
        term.sendline("stty size")
        await term.wait_for_async("40 120")
        term.sendline("printf 'caf\\303\\251 done\\n'; exit 7")
        status = await wait_exit(term)
    assert status == 7

    session, recording = await only_session(db)
    assert session.kind == "shell" and session.exit_status == 7
    parsed = parse(gateway.ctx.storage.read(recording.storage_key))
    assert parsed.format == "asciicast-v2"
    assert parsed.header["width"] == 100 and parsed.header["height"] == 30
    assert any(e.code == "r" and e.data == b"120x40" for e in parsed.events)
    assert "café done" in parsed.output().decode()
    assert b"stty size" in parsed.input()


@pytest.fixture
def tiny_recordings_disk(settings: object) -> Iterator[Path]:
    """The recordings directory on a 256 KiB tmpfs: a real full disk, mid-session."""
    root = settings.recordings_dir  # type: ignore[attr-defined]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


async def test_full_recording_disk_closes_the_session(
    vendor: VendorLogin, pump: Device, db: Sessions, tiny_recordings_disk: Path
) -> None:
    await grant(db, devices=["pump-12"])
    nbytes = 4_000_000
    result = await vendor.ssh("pump-12", f"head -c {nbytes} /dev/urandom")

    assert result.returncode != 0
    assert "recording cannot be written" in result.stderr
    assert len(result.stdout) < nbytes  # the rest was never relayed unrecorded
    session, recording = await only_session(db)
    assert session.end_reason == "recording-failed"
    assert recording.status == "incomplete"
    data = (tiny_recordings_disk / recording.storage_key).read_bytes()
    assert recording.sha256 == hashlib.sha256(data).hexdigest()
    assert recording.size == len(data)
    # Everything the vendor received is in the recording's readable prefix.
    assert parse(data).output().startswith(result.stdout)
    # and with the disk still full, a new session is refused with the reason
    again = await vendor.ssh("pump-12", "echo should-not-run")
    assert again.returncode != 0 and b"should-not-run" not in again.stdout
    assert "the session cannot be recorded" in again.stderr


async def test_session_log_lines_carry_session_vendor_and_device(
    vendor: VendorLogin, pump: Device, db: Sessions
) -> None:
    await grant(db, devices=["pump-12"])
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        result = await vendor.ssh("pump-12", "true")
        await settled(db)
    assert result.returncode == 0
    session, _ = await only_session(db)
    by_event = {entry["event"]: entry for entry in logs}
    for event in ("broker:session:start", "broker:recording:final", "broker:session:end"):
        entry = by_event[event]
        assert entry["session_id"] == session.id
        assert entry["vendor"] == "vendor1"
        assert entry["device"] == "pump-12"


async def test_session_is_closed_when_the_window_ends(
    vendor: VendorLogin, pump: Device, db: Sessions, clock: object
) -> None:
    code = vendor.code()
    now = clock()  # type: ignore[operator]
    await grant(
        db, devices=["pump-12"], start=now - timedelta(minutes=1), end=now + timedelta(seconds=3)
    )
    result = await vendor.ssh("pump-12", "echo started; sleep 30; echo never", answers=[code])
    assert result.stdout == b"started\n"
    assert "access window has ended" in result.stderr
    assert result.returncode != 0
    session, recording = await only_session(db)
    assert session.end_reason == "window-ended"
    assert recording.status == "final"


async def test_recording_reaches_disk_while_the_session_runs(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway
) -> None:
    """Flushed at least every second: a gateway killed now would leave this prefix."""
    await grant(db, devices=["pump-12"])
    session_task = asyncio.ensure_future(
        vendor.ssh("pump-12", "echo early-marker; sleep 4; echo late-marker")
    )
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            async with db() as s:
                key = await s.scalar(select(Recording.storage_key))
            if (
                key
                and b"early-marker" in parse(gateway.ctx.storage.path(key).read_bytes()).output()
            ):
                break
        else:
            raise AssertionError("the live recording never showed the early output")
        live = parse(gateway.ctx.storage.path(key).read_bytes())
        assert b"early-marker" in live.output() and b"late-marker" not in live.output()
        async with db() as s:
            assert (await s.scalars(select(Session))).one().ended_at is None
    finally:
        result = await session_task
    assert result.stdout == b"early-marker\nlate-marker\n"
