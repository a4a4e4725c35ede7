"""Self-tests for the real-OpenSSH integration harness in ``tests/support``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support.openssh import (
    ClientIdentity,
    SshResult,
    SshTimeoutError,
    TmuxSession,
    make_askpass,
    make_identity,
    run_ssh,
    ssh_argv,
)
from tests.support.sshd import SshdDevice, run_sshd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists() or shutil.which("tmux") is None,
        reason="needs root, Debian openssh-server and tmux",
    ),
]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[SshdDevice]:
    with run_sshd(tmp_path / "device") as dev:
        yield dev


async def ssh_device(tmp_path: Path, device: SshdDevice, **kwargs: Any) -> SshResult:
    """run_ssh against the test device as its user, from ``tmp_path/client``."""
    return await run_ssh(
        tmp_path / "client", host=device.host, port=device.port, user=device.username, **kwargs
    )


@pytest.fixture
def identity(tmp_path: Path, device: SshdDevice) -> ClientIdentity:
    ident = make_identity(tmp_path / "client")
    device.add_authorized_key(ident.public_key_line)
    return ident


async def test_key_auth_runs_command(
    tmp_path: Path, device: SshdDevice, identity: ClientIdentity
) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=identity,
        command=["echo", "hello"],
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello\n"
    assert res.prompts == []
    assert "Accepted publickey for spdevice" in device.log_text()


async def test_command_list_is_quoted_for_remote_shell(
    tmp_path: Path, device: SshdDevice, identity: ClientIdentity
) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=identity,
        command=["printf", "%s|", "a b", "$HOME", "-n"],
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"a b|$HOME|-n|"


async def test_stdin_is_forwarded(
    tmp_path: Path, device: SshdDevice, identity: ClientIdentity
) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=identity,
        command="tr a-z A-Z",
        stdin=b"shout\n",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"SHOUT\n"


async def test_password_auth_via_askpass(tmp_path: Path, device: SshdDevice) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=None,
        command=["id", "-un"],
        answers=[device.password],
        extra_opts=["PreferredAuthentications=password"],
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{device.username}\n".encode()
    assert len(res.prompts) == 1
    assert "password" in res.prompts[0].lower()


async def test_password_keyword_answers_password_prompts(
    tmp_path: Path, device: SshdDevice
) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=None,
        command=["true"],
        password=device.password,
    )
    assert res.returncode == 0, res.stderr


async def test_wrong_password_fails(tmp_path: Path, device: SshdDevice) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=None,
        command=["id", "-un"],
        answers=["definitely-not-the-password"],
        extra_opts=["PreferredAuthentications=password"],
    )
    assert res.returncode != 0
    assert res.stdout == b""
    assert "Permission denied" in res.stderr
    assert "Failed password for spdevice" in device.log_text()


async def test_no_answers_fails_instead_of_hanging(tmp_path: Path, device: SshdDevice) -> None:
    res = await ssh_device(
        tmp_path,
        device,
        identity=None,
        command=["true"],
    )
    assert res.returncode != 0
    assert len(res.prompts) == 1


async def test_unknown_key_is_rejected(tmp_path: Path, device: SshdDevice) -> None:
    stranger = make_identity(tmp_path / "client", name="stranger")
    res = await ssh_device(
        tmp_path,
        device,
        identity=stranger,
        command=["true"],
        extra_opts=["PreferredAuthentications=publickey"],
    )
    assert res.returncode != 0
    assert "Permission denied" in res.stderr


async def test_host_key_pinning(
    tmp_path: Path, device: SshdDevice, identity: ClientIdentity
) -> None:
    good = tmp_path / "known_hosts_good"
    good.write_text(device.known_hosts_line() + "\n")
    ok = await ssh_device(
        tmp_path,
        device,
        identity=identity,
        command=["true"],
        known_hosts=good,
    )
    assert ok.returncode == 0, ok.stderr

    other = make_identity(tmp_path / "client", name="not-the-host-key").public_key_line
    bad = tmp_path / "known_hosts_bad"
    bad.write_text(f"[{device.host}]:{device.port} {other}\n")
    rejected = await ssh_device(
        tmp_path,
        device,
        identity=identity,
        command=["true"],
        known_hosts=bad,
    )
    assert rejected.returncode != 0
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in rejected.stderr


async def test_timeout_kills_ssh(
    tmp_path: Path, device: SshdDevice, identity: ClientIdentity
) -> None:
    with pytest.raises(SshTimeoutError):
        await run_ssh(
            tmp_path / "client",
            host=device.host,
            port=device.port,
            user=device.username,
            identity=identity,
            command=["sleep", "60"],
            timeout=1,
        )


async def test_concurrent_devices(tmp_path: Path) -> None:
    ident = make_identity(tmp_path / "client")
    with (
        run_sshd(tmp_path / "dev1") as one,
        run_sshd(tmp_path / "dev2", username="spdevice2") as two,
        run_sshd(tmp_path / "dev3") as three,
    ):
        assert len({one.port, two.port, three.port}) == 3
        assert one.password == three.password  # same account, same running password
        assert one.host_public_key != two.host_public_key
        for dev in (one, two, three):
            dev.add_authorized_key(ident.public_key_line)
        results = await asyncio.gather(
            *(
                run_ssh(
                    tmp_path / "client",
                    host=dev.host,
                    port=dev.port,
                    user=dev.username,
                    identity=ident,
                    command=["id", "-un"],
                )
                for dev in (one, two, three)
            )
        )
        assert [r.stdout for r in results] == [b"spdevice\n", b"spdevice2\n", b"spdevice\n"]
        # Password auth against both instances sharing the account.
        for dev in (one, three):
            res = await run_ssh(
                tmp_path / "client",
                host=dev.host,
                port=dev.port,
                user=dev.username,
                identity=None,
                command=["true"],
                password=dev.password,
            )
            assert res.returncode == 0, res.stderr


def test_sshd_is_gone_after_exit(tmp_path: Path) -> None:
    with run_sshd(tmp_path / "device") as dev:
        port, pid = dev.port, dev.pid
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not Path(f"/proc/{pid}/cmdline").exists() or (
        Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    )


def test_same_workdir_twice_is_refused(tmp_path: Path) -> None:
    with (
        run_sshd(tmp_path / "device"),
        contextlib.ExitStack() as stack,
        pytest.raises(ValueError, match="already running"),
    ):
        stack.enter_context(run_sshd(tmp_path / "device"))


async def test_password_is_not_leaked_by_harness(tmp_path: Path, device: SshdDevice) -> None:
    assert device.password not in repr(device)
    res = await ssh_device(
        tmp_path,
        device,
        identity=None,
        command=["true"],
        answers=[device.password],
    )
    assert res.returncode == 0, res.stderr
    secret = device.password.encode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_tmux_pty_size_and_resize(
    tmp_path: Path, device: SshdDevice, identity: ClientIdentity
) -> None:
    argv = ssh_argv(
        host=device.host,
        port=device.port,
        user=device.username,
        identity=identity,
        extra_args=["-tt"],
    )
    with TmuxSession(tmp_path / "tmux", argv, env={}) as term:
        term.wait_for(f"{device.username}@")
        assert term.size() == (100, 30)
        term.sendline("stty size")
        term.wait_for("30 100")
        term.resize(120, 40)
        assert term.size() == (120, 40)
        term.sendline("stty size")
        term.wait_for("40 120")
        term.sendline("exit")
        assert term.wait_exit() == 0
        assert "Connection to 127.0.0.1 closed" in term.screen()
    term.close()  # idempotent


async def test_tmux_password_login_via_askpass(tmp_path: Path, device: SshdDevice) -> None:
    askpass = make_askpass(tmp_path / "client", answers=[device.password])
    argv = ssh_argv(
        host=device.host,
        port=device.port,
        user=device.username,
        identity=None,
        extra_args=["-tt"],
        command="echo logged-in-as-$(id -un); exec cat",
    )
    with TmuxSession(tmp_path / "tmux", argv, env=askpass.env) as term:
        await term.wait_for_async(f"logged-in-as-{device.username}")
        term.sendline("ping")
        await term.wait_for_async("ping\nping")
        term.send("C-d", literal=False)
    assert len(askpass.prompts()) == 1
    assert "password" in askpass.prompts()[0]


class _TotpLikeServer(asyncssh.SSHServer):
    """Keyboard-interactive only, with a banner - the shape of the gateway's MFA step."""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        self._conn.send_auth_banner("MFA required for sallyport-test\n")
        return True

    def kbdint_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return "", "", "", [("Verification code: ", True)]

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        return list(responses) == ["123456"]


async def _answer(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write("mfa-ok\n")
    process.exit(0)


@pytest.mark.parametrize(("code", "ok"), [("123456", True), ("000000", False)])
async def test_keyboard_interactive_prompt_is_recorded(tmp_path: Path, code: str, ok: bool) -> None:
    server = await asyncssh.create_server(
        _TotpLikeServer,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=_answer,
    )
    try:
        port = server.sockets[0].getsockname()[1]
        res = await run_ssh(
            tmp_path / "client",
            host="127.0.0.1",
            port=port,
            user="vendor",
            identity=None,
            command=["anything"],
            answers=[code],
        )
    finally:
        server.close()
        await server.wait_closed()
    assert "MFA required for sallyport-test" in res.stderr  # banner shown at default LogLevel
    assert len(res.prompts) >= 1
    assert "Verification code" in res.prompts[0]
    if ok:
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"mfa-ok\n"
    else:
        assert res.returncode != 0
        assert res.stdout == b""
