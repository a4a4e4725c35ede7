"""The PROXY protocol listener (broker/proxyproto.py) on real sockets and behind HAProxy.

Loopback addresses stand for three machines: 127.0.0.2 is the vendor, 127.0.0.3 the
load balancer (the only trusted peer), 127.0.0.1 anyone else. The SSH server behind the
listener is a plain asyncssh server that accepts one test user's password and, for any
command, reports the client address it sees; the clients are asyncssh and OpenSSH, by
hand-written headers and through a real HAProxy (``send-proxy`` and ``send-proxy-v2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from structlog.testing import capture_logs

from broker.proxyproto import (
    V2_SIGNATURE,
    Address,
    ProxyListener,
    listen_with_proxy_protocol,
    ssh_handler,
)
from recorder import metrics as metrics_module
from recorder.metrics import Metrics
from tests.broker.test_proxyproto import tlv, v1, v2
from tests.support.openssh import run_ssh

VENDOR, BALANCER, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.1"
USER, PASSWORD = "vendor1", "correct horse"
HAPROXY = shutil.which("haproxy")


# --- the listener, headers written by the test ------------------------------------------


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    fresh = Metrics()
    monkeypatch.setattr(metrics_module, "METRICS", fresh)
    return fresh


def refusals(m: Metrics, reason: str) -> float:
    return m.registry.get_sample_value("sallyport_refusals_total", {"reason": reason}) or 0.0


@dataclass
class Rig:
    """The listener with an asyncssh server behind it, and what each side saw."""

    listener: ProxyListener
    handed: list[Address] = field(default_factory=list)  # on_connection's client
    seen: list[tuple[Address, Address]] = field(default_factory=list)  # peername, balancer
    conns: list[asyncssh.SSHServerConnection] = field(default_factory=list)
    on_command: list[Callable[[], None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.get_port()


class PasswordServer(asyncssh.SSHServer):
    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.rig.conns.append(conn)
        self.rig.seen.append(
            (conn.get_extra_info("peername"), conn.get_extra_info("proxy_peername"))
        )

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == USER and password == PASSWORD


def report_peer(rig: list[Rig]) -> Callable[[asyncssh.SSHServerProcess[str]], None]:
    """Any command prints the client address the server sees."""

    def run(process: asyncssh.SSHServerProcess[str]) -> None:
        for hook in rig[0].on_command:
            hook()
        host, port = process.get_extra_info("peername")[:2]
        process.stdout.write(f"{host} {port}\n")
        process.exit(0)

    return run


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    holder: list[Rig] = []
    options = {
        "server_host_keys": [asyncssh.generate_private_key("ssh-ed25519")],
        "process_factory": report_peer(holder),
        "login_timeout": 10,
    }
    serve = ssh_handler(lambda client: PasswordServer(holder[0]), options)

    async def on_connection(sock: socket.socket, client: Address) -> None:
        holder[0].handed.append(client)
        await serve(sock, client)

    listener = await listen_with_proxy_protocol(
        "127.0.0.1",
        0,
        trusted=[f"{BALANCER}/32"],
        on_connection=on_connection,
        header_timeout=0.5,
    )
    holder.append(Rig(listener))
    try:
        yield holder[0]
    finally:
        listener.close()
        await listener.wait_closed()
        for conn in holder[0].conns:
            conn.close()
            await conn.wait_closed()


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1024), 5)
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
    return data == b""


async def test_header_written_by_hand_then_a_real_ssh_login(rig: Rig) -> None:
    sock = socket.create_connection(("127.0.0.1", rig.port), source_address=(BALANCER, 0))
    balancer_port = sock.getsockname()[1]
    sock.sendall(v2(("203.0.113.7", 40000), ("10.0.0.5", 2222)))
    async with asyncssh.connect(
        sock=sock, username=USER, password=PASSWORD, known_hosts=None
    ) as conn:
        result = await conn.run("whoami", check=True)
    assert result.stdout == "203.0.113.7 40000\n"
    assert rig.handed == [("203.0.113.7", 40000)]
    assert rig.seen == [(("203.0.113.7", 40000), (BALANCER, balancer_port))]


async def test_trickled_header_is_consumed_exactly(metrics: Metrics) -> None:
    got: asyncio.Queue[tuple[Address, bytes]] = asyncio.Queue()

    async def on_connection(sock: socket.socket, client: Address) -> None:
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < 9:
            data += await loop.sock_recv(sock, 100)
        sock.close()
        await got.put((client, data))

    listener = await listen_with_proxy_protocol(
        "127.0.0.1", 0, trusted=["127.0.0.0/8"], on_connection=on_connection
    )
    try:
        # A header larger than the first peek, sent in pieces, the payload right behind it.
        header = v2(("2001:db8::9", 5555), ("2001:db8::1", 22), tlvs=tlv(0x04, b"\0" * 3000))
        _reader, writer = await open_from(BALANCER, listener.get_port())
        for piece in (header[:7], header[7:20], header[20:] + b"SSH-2.0-x"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        client, data = await asyncio.wait_for(got.get(), 5)
        assert client == ("2001:db8::9", 5555)
        assert data == b"SSH-2.0-x"
        writer.close()
        await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()
    assert refusals(metrics, "proxy-header-invalid") == 0


async def test_connection_without_header_is_refused(rig: Rig, metrics: Metrics) -> None:
    with capture_logs() as logs:
        reader, writer = await open_from(BALANCER, rig.port)
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")  # a direct ssh to the node
        assert await closed_by_peer(reader, writer)
    assert rig.handed == []
    assert refusals(metrics, "proxy-header-missing") == 1
    assert any(e.get("reason") == "proxy-header-missing" for e in logs)


async def test_asyncssh_straight_to_the_node_fails(rig: Rig, metrics: Metrics) -> None:
    sock = socket.create_connection(("127.0.0.1", rig.port), source_address=(BALANCER, 0))
    with pytest.raises((asyncssh.Error, OSError)):
        await asyncssh.connect(sock=sock, username=USER, password=PASSWORD, known_hosts=None)
    assert rig.handed == []
    assert refusals(metrics, "proxy-header-missing") == 1


async def test_untrusted_peer_is_refused_even_with_a_valid_header(
    rig: Rig, metrics: Metrics
) -> None:
    with capture_logs() as logs:
        reader, writer = await open_from(STRANGER, rig.port)
        writer.write(v1("TCP4", ("203.0.113.7", 1), ("10.0.0.5", 2222)) + b"SSH-2.0-x\r\n")
        assert await closed_by_peer(reader, writer)
    assert rig.handed == []
    assert refusals(metrics, "proxy-untrusted-peer") == 1
    refused = [e for e in logs if e.get("reason") == "proxy-untrusted-peer"]
    assert refused and refused[0]["peer"].startswith(f"{STRANGER}:")


async def test_malformed_header_is_refused(rig: Rig, metrics: Metrics) -> None:
    reader, writer = await open_from(BALANCER, rig.port)
    writer.write(b"PROXY TCP4 203.0.113.7 10.0.0.5 99999 2222\r\nSSH-2.0-x\r\n")
    assert await closed_by_peer(reader, writer)
    assert rig.handed == []
    assert refusals(metrics, "proxy-header-invalid") == 1


async def test_incomplete_header_times_out(rig: Rig, metrics: Metrics) -> None:
    reader, writer = await open_from(BALANCER, rig.port)
    writer.write(V2_SIGNATURE[:8])
    started = time.monotonic()
    assert await closed_by_peer(reader, writer)
    assert 0.4 < time.monotonic() - started < 3
    assert refusals(metrics, "proxy-header-timeout") == 1


async def test_balancer_connect_and_close_is_not_a_refusal(rig: Rig, metrics: Metrics) -> None:
    with capture_logs() as logs:
        _reader, writer = await open_from(BALANCER, rig.port)  # a plain TCP health check
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.2)
    assert rig.handed == []
    assert [e for e in logs if e["log_level"] != "debug"] == []
    counted = [m for m in metrics.registry.collect() if m.name == "sallyport_refusals"]
    assert [s for m in counted for s in m.samples if s.name.endswith("_total")] == []


async def test_close_stops_listening_and_drops_pending_headers(metrics: Metrics) -> None:
    async def never(sock: socket.socket, client: Address) -> None:
        raise AssertionError

    listener = await listen_with_proxy_protocol(
        "127.0.0.1", 0, trusted=[f"{BALANCER}/32"], on_connection=never, header_timeout=30
    )
    port = listener.get_port()
    reader, writer = await open_from(BALANCER, port)
    writer.write(b"PROXY TCP4 ")  # and then nothing
    await asyncio.sleep(0.1)
    listener.close()
    await listener.wait_closed()
    assert await closed_by_peer(reader, writer)
    with pytest.raises(OSError):
        await open_from(BALANCER, port)


# --- through a real HAProxy -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HAProxy:
    v1_port: int
    v2_port: int
    stats: Path


HAPROXY_CONFIG = """\
global
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend ssh_v1
    bind 127.0.0.1:{v1_port}
    default_backend gateways_v1
frontend ssh_v2
    bind 127.0.0.1:{v2_port}
    default_backend gateways_v2
backend gateways_v1
    server gw1 127.0.0.1:{gateway} source {balancer} send-proxy
backend gateways_v2
    option tcp-check
    tcp-check expect rstring ^SSH-2\\.0-
    server gw1 127.0.0.1:{gateway} source {balancer} send-proxy-v2 check inter 300ms
"""


def servers_state(stats: Path) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(stats))
        s.sendall(b"show servers state\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


@pytest.fixture
def haproxy(rig: Rig, tmp_path: Path) -> Iterator[HAProxy]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    hp = HAProxy(free_port(), free_port(), tmp_path / "haproxy.sock")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(
            stats=hp.stats,
            v1_port=hp.v1_port,
            v2_port=hp.v2_port,
            gateway=rig.port,
            balancer=BALANCER,
        )
    )
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while not hp.stats.exists() or not all(
            _listening(port) for port in (hp.v1_port, hp.v2_port)
        ):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield hp
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    """Bound by someone (without connecting: a connection would reach the listener)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def established_from(source: str, to_port: int) -> set[int]:
    """Local ports of this machine's TCP connections from ``source`` to ``to_port``."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        lhost, lport = local.split(":")
        rport = int(remote.split(":")[1], 16)
        if state == "01" and rport == to_port:
            if socket.inet_ntoa(bytes.fromhex(lhost)[::-1]) == source:
                ports.add(int(lport, 16))
    return ports


@pytest.mark.integration
@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_asyncssh_through_haproxy(rig: Rig, haproxy: HAProxy, version: str) -> None:
    port = haproxy.v1_port if version == "v1" else haproxy.v2_port
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        local_addr=(VENDOR, 0),
        username=USER,
        password=PASSWORD,
        known_hosts=None,
    ) as conn:
        mine = conn.get_extra_info("sockname")[:2]
        result = await conn.run("whoami", check=True)
    assert mine[0] == VENDOR
    assert result.stdout == f"{VENDOR} {mine[1]}\n"
    assert (VENDOR, mine[1]) in rig.handed
    balancers = [balancer for peer, balancer in rig.seen if peer == (VENDOR, mine[1])]
    assert len(balancers) == 1 and balancers[0][0] == BALANCER


@pytest.mark.integration
@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_openssh_through_haproxy(
    rig: Rig, haproxy: HAProxy, version: str, tmp_path: Path
) -> None:
    port = haproxy.v1_port if version == "v1" else haproxy.v2_port
    ssh_ports: list[set[int]] = []
    # While ssh is connected, find its socket (vendor address -> HAProxy frontend).
    rig.on_command.append(lambda: ssh_ports.append(established_from(VENDOR, port)))
    result = await run_ssh(
        tmp_path,
        host="127.0.0.1",
        port=port,
        user=USER,
        identity=None,
        command="whoami",
        password=PASSWORD,
        extra_opts=[f"BindAddress={VENDOR}"],
    )
    assert result.returncode == 0, result.stderr
    host, seen_port = result.stdout.decode().split()
    assert host == VENDOR
    assert ssh_ports == [{int(seen_port)}]  # exactly ssh's own source port
    assert (VENDOR, int(seen_port)) in rig.handed
    assert any(peer == (VENDOR, int(seen_port)) for peer, _balancer in rig.seen)


@pytest.mark.integration
async def test_haproxy_health_check_sees_the_ssh_banner(rig: Rig, haproxy: HAProxy) -> None:
    # gateways_v2 checks each node by reading its SSH banner over send-proxy-v2, which
    # HAProxy sends as a LOCAL header: handed on with the balancer's own address.
    deadline = time.monotonic() + 10
    while True:
        state = servers_state(haproxy.stats)
        row = next(line.split() for line in state.splitlines() if "gateways_v2" in line)
        # srv_op_state 2: running; srv_check_result 3: the last check passed
        if (row[5], row[11]) == ("2", "3"):
            break
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.1)
    assert any(client[0] == BALANCER for client in rig.handed)
    assert not any(client[0] == VENDOR for client in rig.handed)
