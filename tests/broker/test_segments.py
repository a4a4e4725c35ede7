"""Device segments as real network namespaces: the vendor reaches exactly what is granted.

Two segments, each a namespace with a real sshd and an HTTP console; the gateway has a leg
in each; the vendor's OpenSSH client is outside, on loopback. Every other device, port,
segment, raw address, and the gateway's own addresses are tried, and each is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy import admin
from policy.models import CredentialKind, Recording, Session
from policy.vault import Vault
from tests.broker.test_channels import denial_reasons
from tests.broker.test_gateway import settled
from tests.conftest import VendorLogin, grant
from tests.support.netns import NetSegment, segments
from tests.support.sshd import SshdDevice, run_sshd

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
WEB = 8080
REQUEST = b"GET /status.txt HTTP/1.0\r\nHost: console\r\n\r\n"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[dict[str, NetSegment], SshdDevice]]:
    with segments("icu", "radiology") as segs:
        icu, rad = segs["icu"], segs["radiology"]
        pump, monitor, ct = icu.host(10), icu.host(11), rad.host(10)
        for seg, address in ((icu, pump), (icu, monitor), (rad, ct)):
            root = tmp_path / f"web-{address}"
            root.mkdir()
            (root / "status.txt").write_text(f"console of {address}: OK\n")
            seg.http_service(address, WEB, root)
        with (
            run_sshd(tmp_path / "pump-sshd", host=pump, netns=icu.netns) as sshd,
            run_sshd(tmp_path / "ct-sshd", host=ct, netns=rad.netns),
        ):
            yield segs, sshd


@pytest.fixture
async def inventory(
    lab: tuple[dict[str, NetSegment], SshdDevice], db: Sessions, vault: Vault
) -> dict[str, NetSegment]:
    segs, sshd = lab
    icu, rad = segs["icu"], segs["radiology"]
    devices = [
        ("pump-a", "icu", icu.host(10), True),
        ("monitor-a", "icu", icu.host(11), False),
        ("ct-b", "radiology", rad.host(10), True),
        # misconfigured records: the network rules must refuse them even when granted
        ("gw-leg", "icu", icu.gateway_ip, False),
        ("lo-dev", "icu", "127.0.0.1", False),
        ("stray", "icu", rad.host(10), False),
    ]
    async with db() as s:
        await admin.add_segment(s, "icu", networks=[icu.network])
        await admin.add_segment(s, "radiology", networks=[rad.network])
        for name, segment, address, has_ssh in devices:
            services = [admin.ServiceSpec("https", WEB)]
            credential = None
            if has_ssh:
                services.append(admin.ServiceSpec("ssh", 22))
                credential = admin.Credential(sshd.username, CredentialKind.PASSWORD, sshd.password)
            await admin.add_device(
                s,
                vault,
                name=name,
                segment=segment,
                address=address,
                services=services,
                credential=credential,
                host_key=sshd.host_public_key if has_ssh else None,
            )
    return segs


async def via_gateway(vendor: VendorLogin, destination: str) -> tuple[int, bytes, str]:
    """``ssh -W destination`` through the gateway, sending one HTTP request."""
    result = await vendor.ssh(None, None, extra_args=["-W", destination], stdin=REQUEST)
    return result.returncode, result.stdout, result.stderr


async def test_vendor_reaches_exactly_the_granted_services(
    vendor: VendorLogin, inventory: dict[str, NetSegment], db: Sessions, gateway: Gateway
) -> None:
    await grant(db, devices=["pump-a", "gw-leg", "lo-dev", "stray"], services=["https"])
    icu, rad = inventory["icu"], inventory["radiology"]

    code, out, err = await via_gateway(vendor, f"pump-a:{WEB}")
    assert code == 0, err
    assert b"200 OK" in out and f"console of {icu.host(10)}: OK".encode() in out

    refused = {
        "pump-a:22": "the grant does not include this service",  # ssh not granted
        "pump-a:9999": "has no service on port 9999",
        f"monitor-a:{WEB}": "no grant for this device",
        f"ct-b:{WEB}": "no grant for this device",
        "ct-b:22": "no grant for this device",
        f"{icu.host(10)}:{WEB}": "not a device name",
        f"{rad.host(10)}:{WEB}": "not a device name",
        f"{icu.gateway_ip}:{gateway.port}": "not a device name",
        f"127.0.0.1:{gateway.port}": "not a device name",
        f"localhost:{gateway.port}": "is not in the inventory",
        f"gw-leg:{WEB}": "the gateway's own addresses are never forwarded to",
        f"lo-dev:{WEB}": "loopback addresses are never forwarded to",
        f"stray:{WEB}": "outside the device's segment",
        f"nowhere:{WEB}": "is not in the inventory",
    }
    for destination, reason in refused.items():
        code, out, err = await via_gateway(vendor, destination)
        assert code != 0, destination
        assert b"console of" not in out, destination
        assert reason in err, (destination, err)
    assert len(await denial_reasons(db)) == len(refused)


async def test_forward_is_captured_to_pcap_that_tshark_reads(
    vendor: VendorLogin, inventory: dict[str, NetSegment], db: Sessions, gateway: Gateway
) -> None:
    await grant(db, devices=["pump-a"], services=["https"])
    code, _out, err = await via_gateway(vendor, f"pump-a:{WEB}")
    assert code == 0, err
    await settled(db)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
        recording = (await s.scalars(select(Recording))).one()
    assert session.kind == "forward" and recording.format == "pcap"
    path = gateway.ctx.storage.path(recording.storage_key)
    fields = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "http.request", "-T", "fields",
         "-e", "http.request.method", "-e", "http.request.uri"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert fields.split() == ["GET", "/status.txt"]
    responses = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "http.response", "-T", "fields",
         "-e", "http.response.code"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert responses.split() == ["200"]


async def test_proxyjump_into_a_segment_device(
    vendor: VendorLogin,
    inventory: dict[str, NetSegment],
    db: Sessions,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    from tests.broker.test_channels import jump_config, run
    from tests.support.openssh import client_env, make_askpass

    await grant(db, devices=["pump-a"], services=["ssh"])
    config = jump_config(tmp_path, vendor, gateway)
    askpass = make_askpass(tmp_path, [vendor.code()])
    result = await run(
        ["ssh", "-F", str(config), "-J", f"vendor1@127.0.0.1:{gateway.port}",
         "admin@pump-a", "ip -4 -o addr show eth0"],
        client_env(askpass.env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert inventory["icu"].host(10).encode() in result.stdout
    await asyncio.sleep(0)


async def test_local_forward_with_ssh_dash_L(
    vendor: VendorLogin,
    inventory: dict[str, NetSegment],
    db: Sessions,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    """``ssh -N -L PORT:pump-a:8080``, then a plain HTTP client on the vendor's side."""
    import socket

    from tests.support.openssh import client_env, make_askpass, ssh_argv

    await grant(db, devices=["pump-a"], services=["https"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    askpass = make_askpass(tmp_path, [vendor.code()])
    argv = ssh_argv(
        host="127.0.0.1", port=gateway.port, user="vendor1", identity=vendor.identity,
        command=None, extra_args=["-N", "-o", "ExitOnForwardFailure=yes",
                                  "-L", f"127.0.0.1:{local}:pump-a:{WEB}"],
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, env=client_env(askpass.env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the -L listener never came up")
        writer.write(REQUEST)
        response = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        await writer.wait_closed()
    finally:
        proc.terminate()
        await proc.wait()
    assert b"200 OK" in response and b"console of" in response
    await settled(db)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
    assert session.kind == "forward" and session.bytes_from_vendor == len(REQUEST)
    assert session.bytes_from_device == len(response)
