"""The gateway behind a load balancer: the PROXY header's client is the vendor on record."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway, build_context, start_gateway
from policy.config import Settings
from policy.models import Device, Session
from recorder import metrics
from tests.broker.test_gateway import settled
from tests.conftest import Clock, VendorLogin, grant

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]

# A stand-in load balancer as an ssh ProxyCommand: connect, send a PROXY v1 header naming
# the "real" client, then relay stdin/stdout.
BALANCER = r"""
import os, select, socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"PROXY TCP4 198.51.100.23 127.0.0.1 40123 %d\r\n" % port)
fds = [0, s.fileno()]
while True:
    r, _, _ = select.select(fds, [], [])
    if 0 in r:
        data = os.read(0, 65536)
        if not data:
            s.shutdown(socket.SHUT_WR); fds.remove(0); continue
        s.sendall(data)
    if s.fileno() in r:
        data = s.recv(65536)
        if not data:
            break
        os.write(1, data)
"""


@pytest.fixture
async def balanced_gateway(settings: Settings, clock: Clock) -> AsyncIterator[Gateway]:
    s = replace(settings, gateway_proxy_protocol=True, gateway_proxy_trusted=("127.0.0.0/8",))
    ctx = build_context(s)
    ctx.clock = clock
    gateway = await start_gateway(ctx, host="127.0.0.1", port=0)
    yield gateway
    await gateway.close()


async def test_vendor_address_comes_from_the_proxy_header(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    balanced_gateway: Gateway,
    tmp_path: Path,
) -> None:
    await grant(db, devices=["pump-12"])
    script = tmp_path / "balancer.py"
    script.write_text(BALANCER)
    vendor.gateway = balanced_gateway
    before = (
        metrics.METRICS.registry.get_sample_value("sallyport_sessions_total", {"kind": "exec"}) or 0
    )
    result = await vendor.ssh(
        "pump-12",
        "echo through-the-balancer",
        extra_opts=[f"ProxyCommand={sys.executable} {script} {balanced_gateway.port}"],
    )
    assert result.stdout == b"through-the-balancer\n", result.stderr
    await settled(db)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
    assert session.client_address == "198.51.100.23:40123"
    after = metrics.METRICS.registry.get_sample_value("sallyport_sessions_total", {"kind": "exec"})
    assert after == before + 1


async def test_a_connection_without_the_header_is_refused(
    vendor: VendorLogin, pump: Device, db: Sessions, balanced_gateway: Gateway
) -> None:
    await grant(db, devices=["pump-12"])
    vendor.gateway = balanced_gateway
    result = await vendor.ssh("pump-12", "echo direct")
    assert result.returncode == 255 and result.stdout == b""


async def test_behind_the_balancer_the_limits_count_the_vendors_address(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    balanced_gateway: Gateway,
    tmp_path: Path,
) -> None:
    """Everything comes from the balancer (127.0.0.1); the per-source limit counts the
    addresses in the headers: 198.51.100.23 is full, another client still gets in."""
    import asyncio
    import socket

    await grant(db, devices=["pump-12"])
    port = balanced_gateway.port
    held = []
    for i in range(balanced_gateway.ctx.settings.per_source_max_startups):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"PROXY TCP4 198.51.100.23 127.0.0.1 %d %d\r\n" % (41000 + i, port))
        held.append(sock)
    try:
        script = tmp_path / "balancer.py"
        script.write_text(BALANCER)
        vendor.gateway = balanced_gateway
        command = [f"ProxyCommand={sys.executable} {script} {port}"]
        for _ in range(50):  # until the gateway has read the idle ones' headers
            if balanced_gateway.ctx.preauth.open >= len(held):
                break
            await asyncio.sleep(0.05)
        full = await vendor.ssh("pump-12", "echo no", extra_opts=command)
        assert full.returncode == 255 and full.stdout == b""
        assert "too many unauthenticated connections from your address" in full.stderr
        other = BALANCER.replace("198.51.100.23", "198.51.100.99")
        script.write_text(other)
        fine = await vendor.ssh("pump-12", "echo yes", extra_opts=command)
        assert fine.stdout == b"yes\n", fine.stderr
    finally:
        for sock in held:
            sock.close()
