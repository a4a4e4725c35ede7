"""The SSH gateway: builds the shared context and listens for vendors."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import asyncssh
import structlog

from broker.auth import VendorServer
from broker.ca import load_ca
from broker.context import GatewayContext
from broker.door import BrowserDoor
from broker.errors import BrokerError
from broker.forward import open_forward, refuse_nested
from broker.jump import inner_state
from broker.keys import load_host_key
from broker.preauth import Refusal, record_refusal
from broker.proxyproto import (
    ConnectionHandler,
    ProxyListener,
    listen_with_proxy_protocol,
    serve_ssh_over_proxy,
)
from broker.recovery import recover_orphans
from broker.relay import VendorSession
from policy.config import Settings
from policy.db import create_engine, session_factory
from policy.keyfiles import load_vault
from policy.notify import Notifier
from recorder.audit import AuditLog
from recorder.backends import open_storage

log = structlog.get_logger(__name__)


# AES-GCM only: stock OpenSSH prefers chacha20-poly1305 and then aes-ctr with UMAC, which
# asyncssh computes in several Python-level steps per packet; AES-GCM is one call into
# the cryptography library. Every OpenSSH since 6.2 offers it.
VENDOR_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class GatewayServer(VendorServer):
    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return VendorSession(self)  # shell/exec, checked against the grants when it starts

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        # Local forwards and ProxyJump: allowed only to a granted device service, each
        # decided (and refused with a reason) in open_forward.
        return open_forward(self, dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.ctx.tasks.spawn(
            self._audit(
                "broker:forward:deny",
                reason="remote-forward",
                listen=f"{listen_host}:{listen_port}",
            )
        )
        return False  # remote forwards (-R) would open the hospital network outward


class InnerServer(GatewayServer):
    """The SSH server a ProxyJump channel carries: already authenticated by the outer one."""

    def __init__(self, outer: VendorServer, device: str) -> None:
        super().__init__(outer.ctx)
        inner_state(self, outer, device)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn  # no second-factor gate: the outer connection passed both factors
        self.refuse_forwarding_requests(conn)

    async def begin_auth(self, username: str) -> bool:
        return False  # identity comes from the outer connection (key + TOTP)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        return refuse_nested(self)


def build_context(settings: Settings) -> GatewayContext:
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    audit = AuditLog.from_settings(sessions, settings)
    return GatewayContext(
        settings=settings,
        sessions=sessions,
        vault=load_vault(settings.vault_key_path),
        storage=open_storage(settings),
        audit=audit,
        ca=load_ca(settings.ca_key_path, settings.host_key_path),
        notifier=Notifier.from_settings(settings, audit),
    )


@dataclass
class Gateway:
    ctx: GatewayContext
    acceptor: ProxyListener
    door: BrowserDoor
    browser_port: int  # the browser door's bound port
    closed: bool = False

    @property
    def port(self) -> int:
        return int(self.acceptor.get_port())

    async def close(self, message: str = "sallyport: the gateway is shutting down") -> None:
        """Stop accepting, tell connected vendors, end their sessions with sealed
        recordings, then stop the background work. A second call does nothing."""
        if self.closed:
            return
        self.closed = True
        self.acceptor.close()
        await self.acceptor.wait_closed()
        await self.door.stop_accepting()
        await self.ctx.supervisor.shutdown(message)
        await self.ctx.tasks.drain(within=10)
        await self.door.close()  # waits for the browser sessions' handlers to finish
        await self.ctx.devices.close()  # the sessions ended: no channel is left on them
        await self.ctx.supervisor.stop()
        if self.ctx.notifier is not None:  # after the sessions ended: their events go out
            await self.ctx.notifier.close()
        await self.ctx.tasks.cancel_all()
        await self.ctx.flusher.stop()
        self.ctx.storage.close()
        await self.ctx.policy.close()
        bind = self.ctx.sessions.kw.get("bind")
        if bind is not None:
            await bind.dispose()


async def start_gateway(
    ctx: GatewayContext, host: str | None = None, port: int | None = None
) -> Gateway:
    settings = ctx.settings
    host_key = load_host_key(settings.host_key_path)
    await recover_orphans(ctx)  # before listening: nothing new mixes with the old
    host = host if host is not None else settings.gateway_host
    port = port if port is not None else settings.gateway_port
    try:
        acceptor = await _listen(ctx, host, port, host_key)
    except OSError as exc:
        raise BrokerError(
            "listen-failed", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    door = BrowserDoor(ctx)
    try:
        browser_port = await door.start(settings.browser_host, settings.browser_port)
    except OSError as exc:
        acceptor.close()
        raise BrokerError(
            "listen-failed",
            f"cannot listen on {settings.browser_host}:{settings.browser_port} (browser door): "
            f"{exc.strerror or exc}",
        ) from None
    ctx.flusher.start()
    if ctx.notifier is not None:
        ctx.notifier.start()
    ctx.supervisor.start()
    ctx.tasks.spawn(ctx.audit.run_checkpoints(), name="checkpoints")
    gateway = Gateway(ctx, acceptor, door, browser_port)
    log.info("gateway listening", host=host, port=gateway.port, browser_port=browser_port)
    return gateway


# Options shared by the listener and the ProxyJump inner servers.
GATEWAY_OPTIONS: dict[str, Any] = {
    "encoding": None,
    "line_editor": False,
    "agent_forwarding": False,
    "x11_forwarding": False,
    "allow_scp": False,
    "allow_pty": True,
    "config": None,
    "keepalive_interval": 30,
    "server_version": "sallyport",
    "encryption_algs": VENDOR_CIPHERS,
}


async def _listen(
    ctx: GatewayContext, host: str, port: int, host_key: asyncssh.SSHKey
) -> ProxyListener:
    """Our own accept loop (``broker.proxyproto``), with the PROXY protocol behind a load
    balancer (its header names the vendor), so each connection is admitted or refused
    (``broker.preauth``) before any SSH work is done."""
    settings = ctx.settings
    options = {
        **GATEWAY_OPTIONS,
        "server_host_keys": [host_key],
        "login_timeout": settings.login_grace_seconds,
    }
    return await listen_with_proxy_protocol(
        host,
        port,
        trusted=settings.gateway_proxy_trusted if settings.gateway_proxy_protocol else None,
        on_connection=admitted_ssh(ctx, options),
    )


def admitted_ssh(ctx: GatewayContext, options: dict[str, Any]) -> ConnectionHandler:
    """Run the SSH server on each admitted connection; the admission lasts until the
    vendor has logged in or left. A refused connection hears why in one line (SSH lets a
    server send lines before its version) and is closed; a throttled audit event says so."""
    base = asyncssh.SSHServerConnectionOptions(**options)
    telling: set[socket.socket] = set()

    async def on_connection(sock: socket.socket, client: tuple[str, int]) -> None:
        source = client[0]
        admission = ctx.preauth.admit(source)
        if isinstance(admission, Refusal):
            record_refusal(ctx, source, admission.reason, listener="ssh")
            if len(telling) < TELL_AT_ONCE:  # a flood is closed at once, never waited on
                await tell_and_close(sock, f"sallyport: {admission.message}", telling)
            else:
                sock.close()
            return
        servers: list[GatewayServer] = []

        def factory(_client: tuple[str, int]) -> asyncssh.SSHServer:
            servers.append(GatewayServer(ctx))
            return servers[-1]

        try:
            conn = await serve_ssh_over_proxy(sock, client, factory, base)
        finally:
            admission.release()
        if conn is not None:
            ctx.preauth.succeeded(source)
        elif servers and servers[0].auth_started:
            ctx.preauth.failed(source)  # began to log in and did not finish: counts

    return on_connection


TELL_AT_ONCE = 32  # refused connections told why at the same time; more are just closed
DISCONNECT_TOO_MANY_CONNECTIONS = 12  # RFC 4253, 11.1


async def tell_and_close(sock: socket.socket, text: str, telling: set[socket.socket]) -> None:
    """Refuse in SSH's own words, so stock OpenSSH prints the reason ("Received disconnect
    ... too many ..."): exchange versions, send a cleartext SSH_MSG_DISCONNECT (allowed
    before key exchange), then close. Bounded in time (a few seconds) and in number."""
    loop = asyncio.get_running_loop()
    telling.add(sock)
    try:
        await loop.sock_sendall(sock, b"SSH-2.0-sallyport\r\n")
        await asyncio.wait_for(loop.sock_recv(sock, 256), 5)  # the client's version line
        await loop.sock_sendall(sock, disconnect_packet(DISCONNECT_TOO_MANY_CONNECTIONS, text))
        sock.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)  # until the client closes
    except (OSError, TimeoutError):
        pass
    finally:
        telling.discard(sock)
        sock.close()


def disconnect_packet(code: int, text: str) -> bytes:
    """An unencrypted SSH binary packet carrying SSH_MSG_DISCONNECT (RFC 4253, 6 and 11.1)."""
    description = text.encode()
    payload = (
        bytes([1])  # SSH_MSG_DISCONNECT
        + struct.pack(">I", code)
        + struct.pack(">I", len(description))
        + description
        + struct.pack(">I", 0)  # language tag: none
    )
    padding = 8 - (len(payload) + 5) % 8
    padding += 8 if padding < 4 else 0
    body = bytes([padding]) + payload + bytes(padding)
    return struct.pack(">I", len(body)) + body
