"""direct-tcpip channels: ``ssh -L`` forwards and ``ssh -J`` jumps, each to a granted service.

A destination is an inventory device name; its address comes from the inventory only.
Port 22 (or the device's ssh service port) means the device's SSH service and goes to
the ProxyJump interception, so even a raw forward to SSH is recorded with the injected
credential. Any other port must be a service of the device that a live grant names, at
an address the network rules allow; the connection is captured to pcap both ways.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import asyncssh
import structlog

from broker.jump import open_jump
from broker.session import Closing, LiveSession, Who
from broker.target import is_inventory_name
from policy.decide import Decision, Reason, decide_target
from policy.models import Device
from policy.moderation import observer_required
from policy.netcheck import forward_address_problem
from recorder.errors import RecorderError
from recorder.pcap import TcpCapture
from recorder.storage import Sink

if TYPE_CHECKING:
    from broker.auth import VendorServer

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 10.0
PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


class ForwardRefused(asyncssh.ChannelOpenError):
    def __init__(self, reason: str) -> None:
        super().__init__(PROHIBITED, f"sallyport: forward refused: {reason}")


async def open_forward(
    server: VendorServer, dest_host: str, dest_port: int
) -> asyncssh.SSHTCPSession[bytes]:
    try:
        return await _open(server, dest_host, dest_port)
    except ForwardRefused as exc:
        await server._audit(
            "broker:forward:deny", reason=exc.reason, destination=f"{dest_host}:{dest_port}"
        )
        raise


async def refuse_nested(server: VendorServer) -> asyncssh.SSHTCPSession[bytes]:
    await server._audit("broker:forward:deny", reason="forward inside a jump")
    raise ForwardRefused("forwarding inside a ProxyJump connection is not allowed")


async def _open(
    server: VendorServer, dest_host: str, dest_port: int
) -> asyncssh.SSHTCPSession[bytes]:
    if server.user is None:
        raise ForwardRefused("not authenticated")
    if not is_inventory_name(dest_host):
        raise ForwardRefused(f"{dest_host!r} is not a device name (addresses are not accepted)")
    device = await server.ctx.policy.device(dest_host)
    grants = await server.ctx.policy.grants(server.user.id)
    if device is None:
        raise ForwardRefused(f"device '{dest_host}' is not in the inventory")
    by_port = {s.port: s.name for s in device.services}
    ssh_port = next((s.port for s in device.services if s.name == "ssh"), None)
    if ssh_port is not None and dest_port in (22, ssh_port):
        _check(decide_target(device.name, True, "ssh", grants, server.ctx.now()), device)
        await server._audit("broker:jump:open", destination=f"{device.name}:{dest_port}")
        return await open_jump(server, device.name)
    service = by_port.get(dest_port)
    if service is None:
        raise ForwardRefused(f"device '{device.name}' has no service on port {dest_port}")
    decision = decide_target(device.name, True, service, grants, server.ctx.now())
    _check(decision, device)
    problem = forward_address_problem(
        device.address, device.segment.networks, is_gateway_address(device.address)
    )
    if problem is not None:
        raise ForwardRefused(problem)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(device.address, dest_port), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError):
        raise ForwardRefused(f"{device.name}:{dest_port} ({service}) is unreachable") from None
    assert decision.grant is not None and server.user is not None
    grant = decision.grant
    door = ForwardSession(server, reader, writer)
    door.core = core = await LiveSession.open(
        server.ctx,
        Who(server.login, server.user.id, server.peer),
        device,
        grant,
        decision.window_end,
        door,
        service=service,
        kind="forward",
        command=f"{service} {device.name}:{dest_port}",
        moderated=observer_required(
            device.criticality,
            device.observer_required,
            grant.observer_required,
            server.ctx.settings.observer_for_life_sustaining,
        ),
    )
    client = server.peer.rsplit(":", 1)

    def pcap(sink: Sink) -> TcpCapture:
        return TcpCapture(
            sink,
            client=(client[0], int(client[1])) if len(client) == 2 else ("0.0.0.0", 0),
            server=(device.address, dest_port),
        )

    door.capture = await core.start_recording(f"forward-{service}-{dest_port}.pcap", pcap, "pcap")
    return door


def _check(decision: Decision, device: Device) -> None:
    if not decision.allow:
        detail = f" ({decision.detail})" if decision.detail else ""
        raise ForwardRefused(f"{_REASONS.get(decision.reason, decision.reason)}{detail}")


_REASONS = {
    Reason.NO_GRANT: "no grant for this device",
    Reason.SERVICE_NOT_GRANTED: "the grant does not include this service",
    Reason.WINDOW_NOT_STARTED: "the access window has not started",
    Reason.WINDOW_ENDED: "the access window has ended",
    Reason.GRANT_REVOKED: "the grant was revoked",
    Reason.OUTSIDE_RECURRING_WINDOW: "the recurring access window is not open now",
}


def is_gateway_address(address: str) -> bool:
    """True if ``address`` belongs to this host: only a local address can be bound."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class ForwardSession(asyncssh.SSHTCPSession[bytes]):
    """The SSH front door for one forwarded connection: relays it, capturing both
    directions to pcap first. On a moderated session the vendor's bytes are held (the
    channel stops reading) while no staff observer is present."""

    core: LiveSession
    capture: TcpCapture

    def __init__(
        self, server: VendorServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader, self.writer = reader, writer
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.end_reason: str | None = None
        self._may_write = asyncio.Event()
        self._may_write.set()
        self._done = asyncio.Event()
        self._eof: set[str] = set()

    @property
    def session_id(self) -> str | None:
        return self.core.session_id

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        if not self.core.input_allowed:
            chan.pause_reading()
        self.server.ctx.tasks.spawn(self._from_device(), name="forward-from-device")
        self.server.ctx.tasks.spawn(self._run(), name="forward")

    async def _from_device(self) -> None:
        assert self.chan is not None
        try:
            while data := await self.reader.read(65536):
                await self._may_write.wait()
                if self._done.is_set():
                    return
                self.core.touch()
                self.capture.from_server(data)
                self.chan.write(data)
            self.chan.write_eof()
            self._half_closed("device")
        except RecorderError as exc:
            self.core.recording_failed(exc)
        except (OSError, asyncssh.Error):
            self._end("device-closed")

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._done.is_set():
            return
        self.core.touch()
        if not self.core.record(lambda: self.capture.from_client(data)):
            return
        self.writer.write(data)

    def eof_received(self) -> bool:
        if self.writer.can_write_eof():
            self.writer.write_eof()
        self._half_closed("vendor")
        return True

    def _half_closed(self, side: str) -> None:
        self._eof.add(side)
        if len(self._eof) == 2:  # both directions finished: the connection is over
            self._end("closed")

    def pause_writing(self) -> None:
        self._may_write.clear()

    def resume_writing(self) -> None:
        self._may_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("closed")

    # -- what the session core asks of this door (broker.session.FrontDoor) ------------

    def notify(self, text: str) -> None:
        log.info("forward notice", session_id=self.session_id, text=text)

    def stop(self, reason: str, message: str | None) -> None:
        self._end(reason)

    def input_changed(self, allowed: bool) -> None:
        if self.chan is None:
            return
        if allowed:
            self.chan.resume_reading()
        else:
            self.chan.pause_reading()

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._done.set()
        self._may_write.set()
        self.core.mark_end(reason)

    async def _run(self) -> None:
        await self._done.wait()
        self.core.flush_recordings()
        self.writer.close()
        if self.chan is not None:
            self.chan.close()
        await self.core.close(
            Closing(
                bytes_from_vendor=self.capture.bytes_from_client,
                bytes_from_device=self.capture.bytes_from_server,
            )
        )
