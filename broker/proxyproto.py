"""PROXY protocol v1 and v2 on the gateway's listener, behind a TCP load balancer.

Behind HAProxy (``send-proxy``/``send-proxy-v2``) or a cloud TCP load balancer, every
connection comes from the balancer, which first writes a PROXY header naming the vendor's
real address. This module reads exactly that header and hands the socket (at the
vendor's first SSH byte) and the real address to the SSH server, so logins, sessions and
audit events name the vendor, not the balancer.

Fail closed; each refusal is logged and counted (``sallyport_refusals_total{reason}``):
a peer outside ``trusted`` (the balancers' networks) is refused before it may speak, as
anyone else could claim any address (``proxy-untrusted-peer``); a connection not starting
with a header, such as a direct ``ssh`` to the node, is refused and never served as if
direct (``proxy-header-missing``); so is a malformed header (``proxy-header-invalid``), one
not complete in time (``proxy-header-timeout``) or cut short (``proxy-header-incomplete``).

``LOCAL`` (v2) and ``UNKNOWN`` (v1) mean "the balancer's own connection" (health checks):
as the spec says, the real endpoints are used then, so the address handed on is the
balancer's. AF_UNIX and UDP in a v2 header are refused: an SSH client has neither.
Only the header is consumed: the reader peeks (``MSG_PEEK``) and takes only bytes the
parser has seen to be header, so the SSH banner stays in the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh
import structlog

from broker.errors import BrokerError
from broker.tasks import TaskSet
from recorder import metrics

log = structlog.get_logger(__name__)

Address = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ConnectionHandler = Callable[[socket.socket, Address], Awaitable[None]]
ServerFactory = Callable[[Address], asyncssh.SSHServer]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the whole v1 line, CRLF included (the spec's worst case)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/protocol, length
V2_MAX = V2_FIXED + 0xFFFF
HEADER_TIMEOUT = 5.0
_FIRST_PEEK = 256  # a v1 line, or a v2 header with IPv6 addresses and a few TLVs

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_V2_ADDRESSES = {_AF_INET: (4, 12), _AF_INET6: (16, 36)}  # address size, block size


class ProxyError(BrokerError):
    """A connection refused at the PROXY layer; ``code`` says why."""


@dataclass(frozen=True)
class NeedMore:
    """All bytes so far are a valid header prefix; ``needed`` bytes in all, at least."""

    needed: int


@dataclass(frozen=True)
class ProxyResult:
    """A complete, valid header of ``length`` bytes. ``local`` (v2 LOCAL or AF_UNSPEC,
    v1 UNKNOWN): no client address given; ``source`` and ``destination`` are None."""

    version: int
    length: int
    local: bool
    source: Address | None = None
    destination: Address | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _invalid(message: str) -> ProxyError:
    return ProxyError("proxy-header-invalid", message)


def parse_proxy_header(data: bytes) -> ProxyResult | NeedMore:
    """Parse a PROXY v1 or v2 header at the start of ``data`` (pure: no I/O).

    Returns the header (``length``: where the client's bytes start), or ``NeedMore`` if
    ``data`` is a valid but incomplete header prefix; raises ``ProxyError`` otherwise."""
    if not data:
        return NeedMore(1)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    raise ProxyError(
        "proxy-header-missing", "the connection did not start with a PROXY protocol header"
    )


def _parse_v1(data: bytes) -> ProxyResult | NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise _invalid(f"PROXY v1 line without CRLF in its first {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise _invalid("PROXY v1 line with a bare CR or LF")
        return NeedMore(len(data) + 1)
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        raise _invalid("PROXY v1 line with a bare CR or LF")
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise _invalid("PROXY v1 line is not ASCII") from None
    length = end + 2
    if len(parts) < 2:
        raise _invalid("PROXY v1 line names no protocol")
    if parts[1] == "UNKNOWN":  # the spec: ignore the rest, use the real endpoints
        return ProxyResult(version=1, length=length, local=True)
    if parts[1] not in ("TCP4", "TCP6"):
        raise _invalid(f"PROXY v1 protocol {parts[1][:8]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(parts) != 6:
        raise _invalid("PROXY v1 line is not 'PROXY TCPx SRC DST SPORT DPORT'")
    v6 = parts[1] == "TCP6"
    return ProxyResult(
        version=1,
        length=length,
        local=False,
        source=(_v1_ip(parts[2], v6), _v1_port(parts[4])),
        destination=(_v1_ip(parts[3], v6), _v1_port(parts[5])),
    )


def _v1_ip(text: str, v6: bool) -> str:
    try:
        if "%" in text:  # a scope is never sent by a balancer
            raise ValueError
        ip = ipaddress.IPv6Address(text) if v6 else ipaddress.IPv4Address(text)
    except ValueError:
        raise _invalid(f"PROXY v1 address {text[:40]!r} is not IPv{6 if v6 else 4}") from None
    return str(ip)


def _v1_port(text: str) -> int:
    ok = text.isdigit() and len(text) <= 5 and (text == "0" or not text.startswith("0"))
    if not ok or int(text) > 0xFFFF:
        raise _invalid(f"PROXY v1 port {text[:8]!r} is not 0..65535 without leading zeros")
    return int(text)


def _parse_v2(data: bytes) -> ProxyResult | NeedMore:
    if len(data) < V2_FIXED:
        return NeedMore(V2_FIXED)
    version, command = data[12] >> 4, data[12] & 0xF
    family, protocol = data[13] >> 4, data[13] & 0xF
    (body_length,) = struct.unpack_from("!H", data, 14)
    if version != 2:
        raise _invalid(f"PROXY v2 header with version {version}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise _invalid(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    length = V2_FIXED + body_length
    if len(data) < length:
        return NeedMore(length)
    if command == _V2_LOCAL or family == _AF_UNSPEC:  # the spec: ignore the addresses
        return ProxyResult(version=2, length=length, local=True)
    if family == _AF_UNIX:
        raise _invalid("PROXY v2 AF_UNIX client: an SSH client has an IP address")
    if family not in _V2_ADDRESSES:
        raise _invalid(f"PROXY v2 address family {family} is unknown")
    if protocol != _STREAM:
        raise _invalid(f"PROXY v2 transport {protocol} is not STREAM (TCP)")
    size, block = _V2_ADDRESSES[family]
    if body_length < block:
        raise _invalid(f"PROXY v2 length {body_length} is too short for the addresses")
    body = data[V2_FIXED:length]
    make = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyResult(
        version=2,
        length=length,
        local=False,
        source=(str(make(body[:size])), sport),
        destination=(str(make(body[size : 2 * size])), dport),
        tlvs=_tlvs(body[block:]),
    )


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Type-length-value extensions (ALPN, authority, cloud endpoint ids): kept, unused."""
    out = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise _invalid("PROXY v2 TLV cut short")
        kind, size = data[at], int.from_bytes(data[at + 1 : at + 3], "big")
        if at + 3 + size > len(data):
            raise _invalid(f"PROXY v2 TLV 0x{kind:02x} runs past the header")
        out.append((kind, data[at + 3 : at + 3 + size]))
        at += 3 + size
    return tuple(out)


async def read_proxy_header(sock: socket.socket, within: float = HEADER_TIMEOUT) -> ProxyResult:
    """Take exactly the PROXY header from non-blocking ``sock`` (in ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    taken = bytearray()
    want = _FIRST_PEEK
    try:
        async with asyncio.timeout(within):
            while True:
                peeked = await _peek(loop, sock, want)
                if not peeked:
                    code = "proxy-header-incomplete" if taken else "proxy-no-data"
                    raise ProxyError(code, f"the peer closed after {len(taken)} header bytes")
                parsed = parse_proxy_header(bytes(taken) + peeked)
                if isinstance(parsed, ProxyResult):
                    taken += await _take(loop, sock, parsed.length - len(taken))
                    return parsed
                # NeedMore: every byte seen is header, so taking them all is safe.
                taken += await _take(loop, sock, len(peeked))
                want = max(parsed.needed - len(taken), _FIRST_PEEK)
    except TimeoutError:
        raise ProxyError(
            "proxy-header-timeout", f"no complete PROXY header within {within:g} s"
        ) from None


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    while True:
        try:
            return sock.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)


async def _take(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (already peeked, so already in the kernel's buffer)."""
    out = bytearray()
    while len(out) < size:
        try:
            chunk = sock.recv(size - len(out))
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        if not chunk:
            raise ProxyError("proxy-header-incomplete", "the peer closed inside the header")
        out += chunk
    return bytes(out)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def parse_trusted(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """The balancers' networks; a config error names the bad entry."""
    networks = []
    for text in cidrs:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            raise BrokerError("proxy-config-invalid", f"gateway.proxy_trusted: {exc}") from None
    if not networks:
        raise BrokerError(
            "proxy-config-invalid",
            "gateway.proxy_protocol is on but gateway.proxy_trusted names no network: "
            "list the load balancers' addresses",
        )
    return tuple(networks)


def is_trusted(host: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(ip in net for net in networks)


class ProxyListener:
    """Accepts TCP, checks the peer and the header (``trusted`` None: no PROXY protocol,
    the peer is the client), hands the socket on. Like
    ``asyncio.Server`` (``sockets``, ``close``, ``wait_closed``; ``get_port`` as on
    ``SSHAcceptor``): ``close()`` stops accepting; ``wait_closed()`` cancels what is not
    handed on yet and handlers still running (logins in progress, for ``ssh_handler``);
    connections already handed over stay open, as with ``asyncssh.listen``."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        trusted: Sequence[Network] | None,
        on_connection: ConnectionHandler,
        header_timeout: float,
    ) -> None:
        self._sockets = tuple(sockets)
        self._trusted = tuple(trusted) if trusted is not None else None
        self._on_connection = on_connection
        self._timeout = header_timeout
        self._tasks = TaskSet()
        self._retries: dict[socket.socket, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._sockets

    def get_port(self) -> int:
        ports = {s.getsockname()[1] for s in self._sockets}
        return ports.pop() if len(ports) == 1 else 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for lsock in self._sockets:
            self._loop.add_reader(lsock.fileno(), self._accept, lsock)

    def close(self) -> None:
        if self._loop is None:
            return
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        for lsock in self._sockets:
            if lsock.fileno() >= 0:
                self._loop.remove_reader(lsock.fileno())
                lsock.close()
        self._loop = None

    async def wait_closed(self) -> None:
        await self._tasks.cancel_all()

    def _accept(self, lsock: socket.socket) -> None:
        while self._loop is not None:
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors or memory: pause, as asyncio does
                log.warning("accept failed; pausing for a second", error=str(exc))
                self._loop.remove_reader(lsock.fileno())
                self._retries[lsock] = self._loop.call_later(1.0, self._resume, lsock)
                return
            conn.setblocking(False)
            self._tasks.spawn(self._handle(conn, (addr[0], addr[1])), name="proxy-connection")

    def _resume(self, lsock: socket.socket) -> None:
        self._retries.pop(lsock, None)
        if self._loop is not None and lsock.fileno() >= 0:
            self._loop.add_reader(lsock.fileno(), self._accept, lsock)

    async def _handle(self, conn: socket.socket, peer: Address) -> None:
        if self._trusted is None:
            await self._hand_on(conn, peer)
            return
        try:
            if not is_trusted(peer[0], self._trusted):
                raise ProxyError(
                    "proxy-untrusted-peer",
                    f"{peer[0]} is not a trusted load balancer (gateway.proxy_trusted)",
                )
            header = await read_proxy_header(conn, self._timeout)
        except ProxyError as exc:
            _close(conn)
            if exc.code == "proxy-no-data":  # a balancer's TCP health check: not a refusal
                log.debug("closed before a header", peer=_text(peer))
                return
            metrics.refused(exc.code)
            log.warning("connection refused", peer=_text(peer), reason=exc.code, error=exc.message)
            return
        except BaseException:
            _close(conn)
            raise
        client = peer if header.source is None else header.source
        log.debug("proxied", client=_text(client), balancer=_text(peer), local=header.local)
        await self._hand_on(conn, client)

    async def _hand_on(self, conn: socket.socket, client: Address) -> None:
        try:
            await self._on_connection(conn, client)
        except asyncio.CancelledError:
            _close(conn)
            raise
        except Exception:
            _close(conn)
            log.exception("connection handler failed", client=_text(client))


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()


def _text(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


async def listen_with_proxy_protocol(
    host: str | None,
    port: int,
    *,
    trusted: Sequence[str] | None,
    on_connection: ConnectionHandler,
    header_timeout: float = HEADER_TIMEOUT,
    backlog: int = 128,
) -> ProxyListener:
    """Listen on ``host:port`` (every address ``host`` resolves to; all if empty) for
    connections from the ``trusted`` balancer networks (CIDRs), each starting with a
    PROXY v1 or v2 header. ``on_connection(sock, client)`` gets the non-blocking socket
    right after the header, and from then on owns it. With ``trusted`` None there is no
    header: every peer is a client, handed on as it is accepted."""
    networks = parse_trusted(trusted) if trusted is not None else None
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            lsock = socket.socket(family, kind, proto)
            sockets.append(lsock)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            lsock.bind(addr)
            lsock.listen(backlog)
            lsock.setblocking(False)
    except BaseException:
        for lsock in sockets:
            lsock.close()
        raise
    listener = ProxyListener(sockets, networks, on_connection, header_timeout)
    listener.start()
    log.info(
        "listening" + (" for PROXY protocol" if networks is not None else ""),
        addresses=[s.getsockname() for s in sockets],
    )
    return listener


def ssh_handler(
    server_factory: ServerFactory, options: Mapping[str, Any]
) -> Callable[[socket.socket, Address], Awaitable[None]]:
    """An ``on_connection`` that runs an asyncssh server on each socket.

    ``options`` are ``asyncssh.listen``'s keyword options (host keys included); they are
    checked once, here, so a bad option fails at start and not per connection.
    """
    base = asyncssh.SSHServerConnectionOptions(**options)

    async def on_connection(sock: socket.socket, client: Address) -> None:
        await serve_ssh_over_proxy(sock, client, server_factory, base)

    return on_connection


async def serve_ssh_over_proxy(
    sock: socket.socket,
    client: Address,
    server_factory: ServerFactory,
    options: asyncssh.SSHServerConnectionOptions | Mapping[str, Any],
) -> asyncssh.SSHServerConnection | None:
    """Run an SSH server on ``sock`` for the vendor at ``client``.

    The server sees the vendor's address as the connection's ``peername`` (set before
    its ``connection_made`` runs, so what it logs and audits names the vendor) and the
    balancer's as ``proxy_peername``. Returns the connection once authenticated, or None
    when the client went away or failed to log in (asyncssh has closed it then).
    """
    try:
        balancer = tuple(sock.getpeername()[:2])
    except OSError:  # gone already
        _close(sock)
        return None

    def factory() -> asyncssh.SSHServer:
        server = server_factory(client)
        made = server.connection_made

        def connection_made(conn: asyncssh.SSHServerConnection) -> None:
            conn.set_extra_info(peername=client, proxy_peername=balancer)
            made(conn)

        server.connection_made = connection_made  # type: ignore[method-assign]
        return server

    try:
        if isinstance(options, asyncssh.SSHServerConnectionOptions):
            return await asyncssh.run_server(sock, options=options, server_factory=factory)
        return await asyncssh.run_server(sock, server_factory=factory, **options)
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        _close(sock)  # asyncssh closes it too; closing twice is harmless
        log.info("ssh connection ended before login", client=_text(client), error=str(exc))
        return None
