"""The keystroke probe against a real sshd: a number only for a true echo."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncssh
import pytest

from benchmarks import echo
from benchmarks.stats import MeasurementError
from tests.support.sshd import SshdDevice

pytestmark = pytest.mark.integration

PREFIX = f"stty raw -echo && printf %s {echo.READY.decode()} && "


@pytest.fixture
async def conn(sshd_device: SshdDevice) -> AsyncIterator[asyncssh.SSHClientConnection]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    sshd_device.add_authorized_key(key.export_public_key().decode())
    connection = await echo.connect_direct(
        sshd_device.host,
        sshd_device.port,
        sshd_device.username,
        sshd_device.host_public_key,
        key,
    )
    yield connection
    connection.close()
    await connection.wait_closed()


async def test_each_byte_comes_back_once_and_is_timed(conn: asyncssh.SSHClientConnection) -> None:
    probe = await echo.open_probe(conn)
    times = [await probe.roundtrip(bytes([b]), 10) for b in b"abc\x03q"]
    assert all(t > 0 for t in times)
    assert probe.session.buffer == b""  # nothing left over: raw mode, no tty echo


async def test_a_missing_echo_is_an_error_not_a_number(conn: asyncssh.SSHClientConnection) -> None:
    probe = await echo.open_probe(conn, command=PREFIX + "exec cat >/dev/null")
    with pytest.raises(MeasurementError, match=r"no echo within 0\.3 s"):
        await probe.roundtrip(b"a", 0.3)


async def test_a_wrong_echo_is_an_error(conn: asyncssh.SSHClientConnection) -> None:
    upper = PREFIX + 'while IFS= read -r -n1 c; do printf %s "${c^^}"; done'
    probe = await echo.open_probe(conn, command=upper)
    with pytest.raises(MeasurementError, match="sent b'a', the echo was b'A'"):
        await probe.roundtrip(b"a", 10)


async def test_a_closed_session_is_an_error(conn: asyncssh.SSHClientConnection) -> None:
    probe = await echo.open_probe(conn, command=PREFIX + "exit 0")
    await probe.chan.wait_closed()
    with pytest.raises(MeasurementError, match="closed"):
        await probe.roundtrip(b"a", 10)


async def test_a_command_that_never_gets_ready_is_refused(
    conn: asyncssh.SSHClientConnection,
) -> None:
    with pytest.raises(MeasurementError, match="did not start"):
        await echo.open_probe(conn, command="printf %s " + "x" * len(echo.READY))
