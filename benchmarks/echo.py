"""Keystroke-to-echo probes: an asyncssh client with a PTY, one byte out, the same byte back.

The remote side is ``stty raw -echo; cat`` on the device: the terminal neither echoes nor
buffers lines, so every byte the client sends comes back once, from ``cat``, through the
same path (direct to the device's sshd, or through the gateway, recorded as asciicast).
A probe times from the write to the moment the echo's packet is handed to the session
(``data_received``), so waking the waiting coroutine is not part of the figure.

A probe that gets no echo in time, the wrong byte, or a closed channel raises
``MeasurementError``: a broken path must never turn into a latency figure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncssh

from benchmarks.stats import MeasurementError
from policy import totp

READY = b"sallyport-bench-ready"
# Raw mode without echo: the only echo is cat's, one byte per byte sent.
ECHO_COMMAND = f"stty raw -echo && printf %s {READY.decode()} && exec cat"
TERM = ("xterm", (80, 24, 0, 0))
# The cipher the gateway offers vendors; the direct path uses it too, like for like.
CIPHER = ("aes128-gcm@openssh.com",)
CONNECT_TIMEOUT = 60.0


class EchoSession(asyncssh.SSHClientSession[bytes]):
    """Collects what the remote side sends and notes when it arrived."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.stderr = bytearray()
        self.arrived_at = 0.0
        self.closed: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._need = 0

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype:
            self.stderr.extend(data)
            return
        self.arrived_at = time.perf_counter()
        self.buffer.extend(data)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = str(exc) if exc else "channel closed"
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.closed is not None or len(self.buffer) >= self._need:
                waiter.set_result(None)

    async def wait_bytes(self, count: int, timeout: float) -> None:
        """Wait until ``count`` bytes are buffered; MeasurementError on timeout or close."""
        if len(self.buffer) >= count:
            return
        if self.closed is not None:
            raise MeasurementError(f"the session closed: {self.closed}{self._said()}")
        self._need = count
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._waiter, timeout)
        except TimeoutError:
            raise MeasurementError(
                f"no echo within {timeout:g} s (got {bytes(self.buffer)!r}){self._said()}"
            ) from None
        finally:
            self._waiter = None
        if len(self.buffer) < count:
            raise MeasurementError(f"the session closed: {self.closed}{self._said()}")

    def _said(self) -> str:
        text = self.stderr.decode(errors="replace").strip()
        return f"; stderr: {text}" if text else ""


class EchoProbe:
    """One PTY session running the echo command, ready to time round trips."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        chan: asyncssh.SSHClientChannel[bytes],
        session: EchoSession,
    ) -> None:
        self.conn = conn
        self.chan = chan
        self.session = session

    async def roundtrip(self, byte: bytes, timeout: float) -> float:
        """Seconds from sending ``byte`` until exactly that byte came back."""
        if len(byte) != 1:
            raise ValueError("a probe sends one byte")
        session = self.session
        if session.buffer:
            raise MeasurementError(f"unexpected output before the probe: {bytes(session.buffer)!r}")
        start = time.perf_counter()
        try:
            self.chan.write(byte)
        except (asyncssh.Error, OSError) as exc:
            raise MeasurementError(f"the session closed: {session.closed or exc!r}") from None
        await session.wait_bytes(1, timeout)
        elapsed = session.arrived_at - start
        got = bytes(session.buffer)
        session.buffer.clear()
        if got != byte:
            raise MeasurementError(f"sent {byte!r}, the echo was {got!r}")
        if elapsed <= 0:
            raise MeasurementError(f"a round trip of {elapsed} s is not a measurement")
        return elapsed

    def close(self) -> None:
        self.conn.close()


async def open_probe(
    conn: asyncssh.SSHClientConnection, timeout: float = CONNECT_TIMEOUT, command: str = ""
) -> EchoProbe:
    """Start the echo command on a PTY and wait until the terminal is raw."""
    chan, session = await conn.create_session(
        EchoSession,
        command or ECHO_COMMAND,
        term_type=TERM[0],
        term_size=TERM[1],
        encoding=None,
    )
    assert isinstance(session, EchoSession)
    await session.wait_bytes(len(READY), timeout)
    if bytes(session.buffer) != READY:
        raise MeasurementError(f"the echo command did not start: {bytes(session.buffer)!r}")
    session.buffer.clear()
    return EchoProbe(conn, chan, session)


class TotpClient(asyncssh.SSHClient):
    """Answers the gateway's second-factor prompt with the current code for one user."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.banner = ""

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banner += msg

    def kbdint_auth_requested(self) -> str:
        return ""  # let the gateway choose; it asks for the verification code

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        return [totp.code_at(self.secret, datetime.now(UTC)) for _prompt in prompts]


async def connect_direct(
    host: str, port: int, username: str, host_key: str, client_key: asyncssh.SSHKey
) -> asyncssh.SSHClientConnection:
    """The baseline path: straight to the device's sshd with a key."""
    return await asyncssh.connect(
        host,
        port,
        username=username,
        client_keys=[client_key],
        known_hosts=([asyncssh.import_public_key(host_key)], [], []),
        preferred_auth="publickey",
        encryption_algs=CIPHER,
        config=None,
        agent_path=None,
        connect_timeout=CONNECT_TIMEOUT,
        login_timeout=CONNECT_TIMEOUT,
    )


async def connect_gateway(
    port: int,
    host_key: str,
    login: str,
    device: str,
    secret: str,
    client_key: asyncssh.SSHKey,
) -> asyncssh.SSHClientConnection:
    """A vendor login (key, then TOTP) for ``login:device`` at the gateway on loopback."""
    client = TotpClient(secret)
    try:
        conn, _ = await asyncssh.create_connection(
            lambda: client,
            "127.0.0.1",
            port,
            username=f"{login}:{device}",
            client_keys=[client_key],
            known_hosts=([asyncssh.import_public_key(host_key)], [], []),
            preferred_auth=("publickey", "keyboard-interactive"),
            password=None,
            encryption_algs=CIPHER,
            config=None,
            agent_path=None,
            connect_timeout=CONNECT_TIMEOUT,
            login_timeout=CONNECT_TIMEOUT,
        )
    except asyncssh.PermissionDenied as exc:
        said = f" (gateway said: {client.banner.strip()})" if client.banner.strip() else ""
        raise MeasurementError(f"gateway login {login} refused: {exc.reason}{said}") from None
    return conn
