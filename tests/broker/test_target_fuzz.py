"""Hypothesis: no username or forward destination a vendor can type opens an ungranted channel."""

from __future__ import annotations

import ipaddress

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.auth import Factor, VendorServer
from broker.forward import ForwardRefused, open_forward
from broker.gateway import Gateway
from broker.target import Target, parse_username
from policy import admin
from policy.vault import Vault
from tests.conftest import VendorLogin, grant

NAME_CHARS = st.sampled_from("abcz019.-_:@/ %\x00é")
names = st.text(NAME_CHARS, min_size=0, max_size=20)


@given(st.one_of(names, st.text(max_size=40)))
def test_username_targets_are_plain_inventory_names(username: str) -> None:
    target = parse_username(username)
    if target is None:
        return
    assert ":" not in target.login
    for part in (target.login, target.device):
        if part is None:
            continue
        assert part and part[0].isascii() and part[0].isalnum()
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in part)
    if target.device is not None:
        assert username == f"{target.login}:{target.device}"
        with pytest.raises(ValueError):
            ipaddress.ip_address(target.device)


def test_addresses_are_not_device_names() -> None:
    assert parse_username("vendor1:10.0.0.5") is None
    assert parse_username("vendor1:::1") is None
    assert parse_username("vendor1:pump-12") == Target("vendor1", "pump-12")


GRANTED = {("pump-a", 8443)}
INVENTORY = {"pump-a": [8443, 22], "pump-b": [8443]}


@pytest.fixture
async def forward_server(
    vendor: VendorLogin,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    gateway: Gateway,
) -> VendorServer:
    async with db() as s:
        await admin.add_segment(s, "lab", networks=["192.0.2.0/24"])
        for i, (name, ports) in enumerate(INVENTORY.items()):
            await admin.add_device(
                s,
                vault,
                name=name,
                segment="lab",
                address=f"192.0.2.{10 + i}",  # TEST-NET: never connected to by this test
                services=[admin.ServiceSpec("https" if p != 22 else "ssh", p) for p in ports],
                credential=None,
                host_key=None,
            )
    await grant(db, devices=["pump-a"], services=["https"])
    server = VendorServer(gateway.ctx)
    server.user = await gateway.ctx.policy.vendor_login("vendor1")
    server.target, server.factor, server.peer = Target("vendor1", None), Factor.BOTH, "127.0.0.1:1"
    return server


destinations = st.tuples(
    st.one_of(
        st.sampled_from([*INVENTORY, "localhost", "127.0.0.1", "192.0.2.10", "::1", "PUMP-A"]),
        names,
    ),
    st.one_of(st.sampled_from([22, 443, 8443, 0, 65535]), st.integers(0, 65535)),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(destinations)
async def test_forward_destinations_outside_the_grant_are_refused(
    forward_server: VendorServer, destination: tuple[str, int]
) -> None:
    host, port = destination
    if (host, port) in GRANTED:
        return  # the granted service itself is exercised end to end in test_segments
    with pytest.raises(ForwardRefused) as refused:
        await open_forward(forward_server, host, port)
    assert refused.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
