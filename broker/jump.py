"""ProxyJump: ``ssh -J vendor1@gateway admin@pump-12`` ends at the gateway, not the device.

The vendor's direct-tcpip channel to ``pump-12:22`` is carried into an SSH server that the
gateway runs in-process over a socket pair. That inner server presents the gateway's host
key with a certificate for ``pump-12`` (``broker.ca``), needs no second login (the outer
connection already proved key and code), and hands shell/exec channels to the same
recorded relay as ``vendor1:pump-12@gateway``, which logs in to the device with the
vaulted credential.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import asyncssh
import structlog

from broker.auth import Factor
from broker.target import Target
from broker.tasks import TaskSet

if TYPE_CHECKING:
    from broker.auth import VendorServer

log = structlog.get_logger(__name__)

BRIDGE_HIGH_WATER = 1024 * 1024


async def open_jump(outer: VendorServer, device: str) -> asyncssh.SSHTCPSession[bytes]:
    """Start the inner SSH server for ``device`` and return the channel's bridge to it."""
    from broker.gateway import GATEWAY_OPTIONS, InnerServer  # the composition root

    ours, theirs = socket.socketpair()
    ctx = outer.ctx
    cert = ctx.ca.certificate_for(device)

    async def serve() -> None:
        await asyncssh.run_server(
            theirs,
            server_factory=lambda: InnerServer(outer, device),
            server_host_keys=[ctx.ca.host_key],
            server_host_certs=[cert],
            **GATEWAY_OPTIONS,
        )

    inner_task = ctx.tasks.spawn(serve(), name=f"jump-{device}")
    reader, writer = await asyncio.open_connection(sock=ours)
    return JumpBridge(reader, writer, inner_task, ctx.tasks)


def inner_state(server: VendorServer, outer: VendorServer, device: str) -> None:
    """Give the inner server the outer connection's proven identity."""
    server.user = outer.user
    server.target = Target(outer.login, device)
    server.factor = Factor.BOTH
    server.peer = f"{outer.peer} (jump)"


class JumpBridge(asyncssh.SSHTCPSession[bytes]):
    """Copies bytes between the vendor's channel and the inner server's socket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        inner: asyncio.Task[object],
        tasks: TaskSet,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.inner, self.tasks = inner, tasks
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._may_write = asyncio.Event()
        self._may_write.set()
        self._pump: asyncio.Task[object] | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        self._pump = self.tasks.spawn(self._to_vendor(), name="jump-to-vendor")

    async def _to_vendor(self) -> None:
        assert self.chan is not None
        try:
            while data := await self.reader.read(65536):
                await self._may_write.wait()
                self.chan.write(data)
            self.chan.write_eof()
        except (OSError, asyncssh.Error):
            pass
        finally:
            self.chan.close()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.writer.write(data)
        buffered = self.writer.transport.get_write_buffer_size()
        if self.chan is not None and buffered > BRIDGE_HIGH_WATER:
            self.chan.pause_reading()
            self.tasks.spawn(self._drain(), name="jump-drain")

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        finally:
            if self.chan is not None:
                self.chan.resume_reading()

    def eof_received(self) -> bool:
        if self.writer.can_write_eof():
            self.writer.write_eof()
        return True

    def pause_writing(self) -> None:
        self._may_write.clear()

    def resume_writing(self) -> None:
        self._may_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer.close()  # the inner server sees EOF and closes its side
        if self._pump is not None:
            self._pump.cancel()
