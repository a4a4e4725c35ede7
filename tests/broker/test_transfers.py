"""sftp and scp through the gateway to a real sshd: byte-identical files, every file logged."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy.models import AuditEvent, Device, Grant
from tests.broker.test_gateway import settled
from tests.conftest import VendorLogin, grant
from tests.support.openssh import SshResult, client_env, make_askpass, ssh_base_args

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


async def transfer_events(
    db: Sessions, tag: str = "broker:transfer:file"
) -> list[dict[str, object]]:
    await settled(db)
    async with db() as s:
        rows = await s.scalars(
            select(AuditEvent).where(AuditEvent.tag == tag).order_by(AuditEvent.id)
        )
        return [row.detail for row in rows]


async def run_tool(
    tool: str,
    vendor: VendorLogin,
    gateway: Gateway,
    args: list[str],
    *,
    stdin: bytes = b"",
    port_flag: str = "-P",
) -> SshResult:
    """Run OpenSSH's sftp or scp through the gateway, answering the TOTP prompt."""
    askpass = make_askpass(vendor.workdir, [vendor.code()])
    base = ssh_base_args(port=gateway.port, identity=vendor.identity)
    # sftp/scp take -P for the port; ssh_base_args ends with -p PORT
    # "vendor1:pump-12" cannot go before the @: sftp and scp read a colon as host:path
    options = [*base[:-2], port_flag, str(gateway.port), "-o", "User=vendor1:pump-12"]
    proc = await asyncio.create_subprocess_exec(
        tool,
        *options,
        *args,
        env=client_env(askpass.env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 180)
    return SshResult(proc.returncode or 0, out, err.decode(errors="replace"))


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "firmware.bin"
    with path.open("wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(1024 * 1024))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


async def test_sftp_put_and_get_100mb_byte_identical(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    gateway: Gateway,
    tmp_path: Path,
    payload: tuple[Path, str],
) -> None:
    await grant(db, devices=["pump-12"])
    source, digest = payload
    remote = f"/tmp/sallyport-test-{os.getpid()}-{tmp_path.name}.bin"
    back = tmp_path / "back.bin"
    commands = f"put {source} {remote}\nget {remote} {back}\nrm {remote}\n".encode()
    try:
        result = await run_tool("sftp", vendor, gateway, ["127.0.0.1"], stdin=commands)
        assert result.returncode == 0, result.stderr
    finally:
        Path(remote).unlink(missing_ok=True)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    events = await transfer_events(db)
    size = 100 * 1024 * 1024
    assert {(e["path"], e["direction"], e["size"], e["sha256"], e["complete"]) for e in events} == {
        (remote, "upload", size, digest, True),
        (remote, "download", size, digest, True),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["scp", "scp-O"])
async def test_scp_both_modes(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path, legacy: bool
) -> None:
    await grant(db, devices=["pump-12"])
    source = tmp_path / "log-export.txt"
    source.write_bytes(os.urandom(300_000))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    remote = f"/tmp/sallyport-scp-{os.getpid()}-{legacy}.txt"
    mode = ["-O"] if legacy else []
    try:
        up = await run_tool("scp", vendor, gateway, [*mode, str(source), f"127.0.0.1:{remote}"])
        assert up.returncode == 0, up.stderr
        back = tmp_path / "back.txt"
        down = await run_tool("scp", vendor, gateway, [*mode, f"127.0.0.1:{remote}", str(back)])
        assert down.returncode == 0, down.stderr
    finally:
        Path(remote).unlink(missing_ok=True)
    assert back.read_bytes() == source.read_bytes()
    events = await transfer_events(db)
    assert {(e["direction"], e["size"], e["sha256"], e["complete"]) for e in events} == {
        ("upload", 300_000, digest, True),
        ("download", 300_000, digest, True),
    }
    assert all(str(e["path"]).startswith(remote) for e in events), events


async def test_download_only_grant_refuses_uploads(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    grant_id = await grant(db, devices=["pump-12"])
    async with db() as s:
        await s.execute(update(Grant).where(Grant.id == grant_id).values(transfers="download-only"))
        await s.commit()
    source = tmp_path / "patch.bin"
    source.write_bytes(b"not allowed here")
    remote = f"/tmp/sallyport-denied-{os.getpid()}.bin"
    result = await run_tool(
        "sftp",
        vendor,
        gateway,
        ["127.0.0.1"],
        stdin=f"put {source} {remote}\n".encode(),
    )
    assert "upload not allowed by this grant" in result.stdout.decode() + result.stderr
    assert not Path(remote).exists()
    legacy = await run_tool("scp", vendor, gateway, ["-O", str(source), f"127.0.0.1:{remote}"])
    assert legacy.returncode != 0
    assert "upload not allowed" in legacy.stderr
    assert not Path(remote).exists()
    refusals = await transfer_events(db, "broker:transfer:deny")
    assert {r["operation"] for r in refusals} >= {"upload", "scp-upload"}
    assert all(r["path"] == remote for r in refusals)
