"""Tests for the simulated SSH device, over real SSH connections (asyncssh and OpenSSH)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from broker.fakedevice import FakeDeviceInfo, host_public_key_line, start_fake_device

INFO = FakeDeviceInfo(name="pump-12", model="Infusia IP-7", firmware="4.2.1", serial="IP7-000123")
USER = "service"
PASSWORD = "correct horse battery staple"
PROMPT = b"pump-12> "
SSH = "/usr/bin/ssh"


@dataclass
class Device:
    port: int
    key_line: str
    key_path: Path


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Device]:
    key_path = tmp_path / "device_host_key"
    acceptor = await start_fake_device(INFO, "127.0.0.1", 0, key_path, USER, PASSWORD)
    try:
        yield Device(acceptor.get_port(), host_public_key_line(key_path), key_path)
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def connect(dev: Device, **kwargs: object) -> asyncssh.SSHClientConnection:
    options: dict[str, object] = {
        "username": USER,
        "password": PASSWORD,
        "known_hosts": ([asyncssh.import_public_key(dev.key_line)], [], []),
        "config": None,
        "agent_path": None,
        "client_keys": None,
        "preferred_auth": "password",
    }
    options.update(kwargs)
    return await asyncssh.connect("127.0.0.1", dev.port, **options)


async def test_host_key_created_private_and_stable(device: Device) -> None:
    assert stat.S_IMODE(device.key_path.stat().st_mode) == 0o600
    assert device.key_line.startswith("ssh-ed25519 AAAA")
    assert len(device.key_line.split()) == 2
    assert host_public_key_line(device.key_path) == device.key_line


async def test_single_commands(device: Device) -> None:
    async with await connect(device) as conn:
        result = await conn.run("uname -a")
        assert result.exit_status == 0
        assert result.stdout == "Linux pump-12 5.10.0-infusia #1 SMP armv7l GNU/Linux\n"

        result = await conn.run("uname")
        assert (result.exit_status, result.stdout) == (0, "Linux\n")

        result = await conn.run("echo hello world")
        assert (result.exit_status, result.stdout) == (0, "hello world\n")

        result = await conn.run("frobnicate --now")
        assert result.exit_status == 127
        assert result.stdout == "frobnicate: command not found\n"

        result = await conn.run("status")
        assert result.exit_status == 0
        assert isinstance(result.stdout, str)
        for expected in ("Infusia IP-7", "4.2.1", "IP7-000123", "channel A", "channel B"):
            assert expected in result.stdout
        assert "battery" in result.stdout

        result = await conn.run("version")
        assert result.stdout == "Infusia IP-7 firmware 4.2.1\n"

        result = await conn.run("help")
        assert result.exit_status == 0
        assert isinstance(result.stdout, str)
        for command in ("status", "alarms", "version", "uname", "echo", "reboot", "exit"):
            assert command in result.stdout

        result = await conn.run("reboot")
        assert result.stdout == "reboot scheduled (simulated)\n"

        result = await conn.run("alarms")
        assert result.exit_status == 0
        assert isinstance(result.stdout, str)
        assert len(result.stdout.splitlines()) >= 2


async def test_wrong_password_refused(device: Device) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(device, password="wrong")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(device, username="root")


async def test_public_key_auth_refused(device: Device) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(device, password=None, client_keys=[key], preferred_auth="publickey")


async def test_forwarding_and_sftp_refused(device: Device) -> None:
    async with await connect(device) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", device.port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", device.port)
        with pytest.raises((asyncssh.ChannelOpenError, asyncssh.SFTPError)):
            await conn.start_sftp_client()
        # The connection is still usable afterwards.
        result = await conn.run("echo still here")
        assert result.stdout == "still here\n"


@pytest.mark.integration
@pytest.mark.skipif(not os.access(SSH, os.X_OK), reason="OpenSSH client not installed")
async def test_openssh_client_single_command(device: Device, tmp_path: Path) -> None:
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    askpass.chmod(0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
    }
    proc = await asyncio.create_subprocess_exec(
        SSH,
        "-F", "/dev/null",
        "-T",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password",
        "-o", "NumberOfPasswordPrompts=1",
        "-o", "LogLevel=ERROR",
        "-p", str(device.port),
        f"{USER}@127.0.0.1",
        "echo", "hi",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,  # no controlling tty, so ssh must use SSH_ASKPASS
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode(errors="replace")
    assert stdout == b"hi\n"


async def test_pty_shell(device: Device) -> None:
    async with await connect(device) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
        banner = await proc.stdout.readuntil(PROMPT)
        assert b"Infusia IP-7 service console" in banner

        proc.stdin.write(b"status\r")
        out = await proc.stdout.readuntil(PROMPT)
        assert out.startswith(b"status\r\n")  # typed characters are echoed
        assert b"serial:    IP7-000123\r\n" in out
        assert b"firmware:  4.2.1\r\n" in out

        proc.change_terminal_size(120, 40)  # ignored, must not disturb the shell

        # Backspace edits the line; CR LF counts as a single line end.
        proc.stdin.write(b"verx\x7fsion\r\n")
        out = await proc.stdout.readuntil(PROMPT)
        assert b"\b \b" in out
        assert b"Infusia IP-7 firmware 4.2.1\r\n" in out
        assert out.count(PROMPT) == 1

        # Ctrl-C abandons the line without running it.
        proc.stdin.write(b"reboot\x03")
        out = await proc.stdout.readuntil(PROMPT)
        assert out == b"reboot^C\r\n" + PROMPT

        proc.stdin.write(b"nope\r")
        out = await proc.stdout.readuntil(PROMPT)
        assert b"nope: command not found\r\n" in out

        proc.stdin.write(b"exit\r")
        out = await proc.stdout.read()
        assert out == b"exit\r\n"
        result = await proc.wait()
        assert result.exit_status == 0


async def test_pty_shell_ctrl_d_and_non_utf8(device: Device) -> None:
    async with await connect(device) as conn:
        proc = await conn.create_process(term_type="xterm", encoding=None)
        await proc.stdout.readuntil(PROMPT)
        proc.stdin.write(b"\xff\xfe\r")
        out = await proc.stdout.readuntil(PROMPT)
        assert b"command not found" in out
        proc.stdin.write(b"\x04")
        assert await proc.stdout.read() == b"\r\n"
        assert (await proc.wait()).exit_status == 0


async def test_plain_shell_without_pty(device: Device) -> None:
    async with await connect(device) as conn:
        proc = await conn.create_process(encoding=None)
        proc.stdin.write(b"echo one two\nbogus\r\n")
        proc.channel.send_break(100)  # no terminal: a break is ignored, not a logout
        proc.stdin.write(b"\xc3\x28\nuname\n")
        proc.stdin.write_eof()
        out = await proc.stdout.read()
        result = await proc.wait()
        assert result.exit_status == 0
        assert b"\r" not in out
        lines = out.split(b"\n")
        assert b"pump-12> one two" in lines
        assert b"pump-12> bogus: command not found" in lines
        assert b"pump-12> Linux" in lines


async def test_plain_shell_exit_command(device: Device) -> None:
    async with await connect(device) as conn:
        proc = await conn.create_process(encoding=None)
        proc.stdin.write(b"logout\necho never\n")
        out = await proc.stdout.read()
        assert b"never" not in out
        assert (await proc.wait()).exit_status == 0
