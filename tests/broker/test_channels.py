"""ProxyJump, port forwards and refused channels, with the stock OpenSSH client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy.models import AuditEvent, Device, Session
from recorder.readers import parse
from tests.broker.test_gateway import only_session, settled
from tests.conftest import VendorLogin, grant
from tests.support.openssh import SshResult, client_env, make_askpass

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


def jump_config(tmp_path: Path, vendor: VendorLogin, gateway: Gateway) -> Path:
    """An ssh_config a vendor would write: their key, and trust in the gateway's CA."""
    known = tmp_path / "known_hosts"
    host_key = gateway.ctx.ca.host_key.export_public_key().decode().split()
    known.write_text(
        f"[127.0.0.1]:{gateway.port} {host_key[0]} {host_key[1]}\n"
        + gateway.ctx.ca.known_hosts_line()
        + "\n"
    )
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host *\n"
        f"  IdentityFile {vendor.identity.private_key}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  PreferredAuthentications publickey,keyboard-interactive\n"
        "  BatchMode no\n"
    )
    return config


async def run(argv: list[str], env: dict[str, str], timeout: float = 30) -> SshResult:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return SshResult(proc.returncode or 0, out, err.decode(errors="replace"))


async def tags(db: Sessions) -> list[str]:
    await settled(db)
    async with db() as s:
        return list(await s.scalars(select(AuditEvent.tag).order_by(AuditEvent.id)))


async def denial_reasons(db: Sessions) -> list[str]:
    """The forward refusals audited, once there is one (the gateway writes them from a
    task of their own, which may finish after the client has exited)."""
    await settled(db)
    for _ in range(100):
        async with db() as s:
            rows = await s.scalars(
                select(AuditEvent).where(AuditEvent.tag == "broker:forward:deny")
            )
            reasons = [row.detail["reason"] for row in rows]
        if reasons:
            return reasons
        await asyncio.sleep(0.05)
    return []


async def test_proxyjump_gives_a_recorded_session_with_injected_credential(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    await grant(db, devices=["pump-12"])
    config = jump_config(tmp_path, vendor, gateway)
    askpass = make_askpass(tmp_path, [vendor.code()])
    result = await run(
        ["ssh", "-F", str(config), "-J", f"vendor1@127.0.0.1:{gateway.port}",
         "admin@pump-12", "id -un; echo via-jump"],
        client_env(askpass.env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[-1] == "via-jump"
    assert lines[0] != "admin"  # the device account from the vault, not what was typed
    assert any("Verification code" in p for p in askpass.prompts())
    session, recording = await only_session(db)
    assert session.kind == "exec" and session.end_reason == "exit"
    assert "(jump)" in session.client_address
    data = gateway.ctx.storage.read(recording.storage_key)
    assert b"via-jump" in parse(data).output()
    assert "broker:jump:open" in await tags(db)


async def test_proxyjump_to_an_ungranted_device_is_refused_with_reason(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    config = jump_config(tmp_path, vendor, gateway)
    askpass = make_askpass(tmp_path, [vendor.code()])
    result = await run(
        ["ssh", "-F", str(config), "-J", f"vendor1@127.0.0.1:{gateway.port}",
         "admin@pump-12", "echo nope"],
        client_env(askpass.env),
    )  # fmt: skip
    assert result.returncode != 0
    assert b"nope" not in result.stdout
    assert "no grant for this device" in result.stderr
    assert "broker:forward:deny" in await tags(db)
    async with db() as s:
        assert (await s.scalars(select(Session))).all() == []


@pytest.mark.parametrize(
    ("options", "message", "reason"),
    [
        (["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"],
         "remote port forwarding failed", "remote-forward"),
        (["-o", "SetEnv=SECRET_MODE=1 LANG=C.UTF-8"],
         "not passed to the device (only TERM, LANG and LC_*): SECRET_MODE", None),
    ],
)  # fmt: skip
async def test_refused_channel_features(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    options: list[str],
    message: str,
    reason: str | None,
) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh("pump-12", "echo LANG=$LANG", extra_args=options)
    assert message in result.stderr
    audit = await tags(db)
    if reason == "remote-forward":
        assert result.returncode == 255
        assert await denial_reasons(db) == ["remote-forward"]
    else:
        assert "broker:env:deny" in audit
        assert result.stdout.startswith(b"LANG=")


async def test_agent_forwarding_is_refused(
    vendor: VendorLogin, pump: Device, db: Sessions, tmp_path: Path
) -> None:
    import subprocess

    await grant(db, devices=["pump-12"])
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if sock.exists():
                break
            import time

            time.sleep(0.05)
        result = await vendor.ssh(
            "pump-12",
            "echo agent=${SSH_AUTH_SOCK:-none}",
            extra_args=["-A", "-o", f"IdentityAgent={sock}"],
        )
    finally:
        agent.terminate()
        agent.wait()
    assert result.stdout == b"agent=none\n"
    assert "agent forwarding is not allowed" in result.stderr
    assert await denial_reasons(db) == ["agent-forwarding"]


async def test_unknown_subsystem_is_refused_with_reason(
    vendor: VendorLogin, pump: Device, db: Sessions
) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh("pump-12", "netconf", extra_args=["-s"])
    assert result.returncode != 0
    assert "subsystem 'netconf' is not allowed" in result.stderr
    assert "broker:channel:deny" in await tags(db)


async def test_x11_forwarding_is_refused(
    vendor: VendorLogin, pump: Device, db: Sessions, tmp_path: Path
) -> None:
    await grant(db, devices=["pump-12"])
    result = await vendor.ssh(
        "pump-12",
        "echo display=${DISPLAY:-none}",
        extra_args=["-X", "-o", "ForwardX11Trusted=yes", "-o", "XAuthLocation=/bin/true"],
    )
    assert result.stdout == b"display=none\n"
    assert "X11 forwarding is not allowed" in result.stderr
    assert await denial_reasons(db) == ["x11-forwarding"]
