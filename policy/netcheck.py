"""Where a forwarded connection may go: the address rules that hold even if a grant is wrong."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence


def forward_address_problem(
    address: str, segment_networks: Sequence[str], is_gateway_address: bool
) -> str | None:
    """Why a forward to ``address`` must be refused, or None when it may go ahead.

    Loopback, link-local, unspecified and multicast addresses, the gateway's own
    addresses, and anything outside the device's segment are always refused. A segment
    with no networks on record cannot vouch for any address, so it refuses too.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"device address {address!r} is not an IP address"
    if ip.is_loopback:
        return "loopback addresses are never forwarded to"
    if ip.is_link_local:
        return "link-local addresses are never forwarded to"
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a device address"
    if is_gateway_address:
        return "the gateway's own addresses are never forwarded to"
    networks = []
    for cidr in segment_networks:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            return f"segment network {cidr!r} is invalid"
    if not networks:
        return "the device's segment has no networks on record"
    if not any(ip in net for net in networks):
        return f"{ip} is outside the device's segment"
    return None
