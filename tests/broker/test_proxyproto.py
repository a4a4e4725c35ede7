"""PROXY protocol v1/v2 (broker/proxyproto.py): the parser, trust, and the settings.

The listener on real sockets, behind a real HAProxy, is in test_proxyproto_listener.py.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import BrokerError
from broker.proxyproto import (
    V1_MAX,
    V2_SIGNATURE,
    Address,
    NeedMore,
    ProxyError,
    ProxyResult,
    is_trusted,
    listen_with_proxy_protocol,
    parse_proxy_header,
    parse_trusted,
)
from policy.config import load_settings, render_settings
from policy.errors import ConfigError

# --- building headers -------------------------------------------------------------------


def v1(proto: str, src: Address, dst: Address) -> bytes:
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def v2(
    src: Address | None = None,
    dst: Address | None = None,
    *,
    command: int = 1,
    family: int | None = None,
    protocol: int = 1,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    body = b""
    if src is not None and dst is not None:
        a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
        body = a.packed + b.packed + struct.pack("!HH", src[1], dst[1])
        family = family if family is not None else (1 if a.version == 4 else 2)
    body += tlvs
    fam = family if family is not None else 0
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, fam << 4 | protocol])
        + (struct.pack("!H", len(body)) + body)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def code_of(data: bytes) -> str:
    with pytest.raises(ProxyError) as exc:
        parse_proxy_header(data)
    return exc.value.code


# --- v1 ---------------------------------------------------------------------------------


def test_v1_tcp4_and_where_the_client_bytes_start() -> None:
    header = b"PROXY TCP4 192.0.2.10 198.51.100.2 56324 2222\r\n"
    got = parse_proxy_header(header + b"SSH-2.0-OpenSSH_9.2\r\n")
    assert got == ProxyResult(
        version=1,
        length=len(header),
        local=False,
        source=("192.0.2.10", 56324),
        destination=("198.51.100.2", 2222),
    )


def test_v1_tcp6_addresses_come_back_canonical() -> None:
    got = parse_proxy_header(b"PROXY TCP6 2001:DB8:0:0::1 2001:db8::2 65535 0\r\n")
    assert isinstance(got, ProxyResult)
    assert got.source == ("2001:db8::1", 65535)
    assert got.destination == ("2001:db8::2", 0)


def test_v1_unknown_is_local_and_ignores_the_rest() -> None:
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        got = parse_proxy_header(line + b"SSH-2.0-x")
        assert got == ProxyResult(version=1, length=len(line), local=True)


def test_v1_longest_legal_lines_are_accepted_and_one_byte_more_is_not() -> None:
    addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    tcp6 = f"PROXY TCP6 {addr} {addr} 65535 65535\r\n".encode()
    assert isinstance(parse_proxy_header(tcp6), ProxyResult)
    unknown = f"PROXY UNKNOWN {addr} {addr} 65535 65535\r\n".encode()  # the spec's worst case
    assert len(unknown) == V1_MAX
    assert isinstance(parse_proxy_header(unknown), ProxyResult)
    assert code_of(unknown[:-2] + b"5\r\n") == "proxy-header-invalid"


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2",  # no CRLF yet
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r",
        b"PROXY",
        b"P",
    ],
)
def test_v1_prefixes_need_more(line: bytes) -> None:
    assert isinstance(parse_proxy_header(line), NeedMore)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",  # one too many
        b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",  # two spaces
        b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",  # IPv4 under TCP6
        b"PROXY TCP4 192.0.2.300 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",  # leading zero in an octet
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",  # scoped
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 0022 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 2\r\n",  # not ASCII
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",  # bare LF
        b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",  # bare CR
        b"PROXY \r\n",
        b"PROXY " + b"A" * 120,  # no CRLF within 107 bytes
    ],
)
def test_v1_malformed_is_refused(line: bytes) -> None:
    assert code_of(line) == "proxy-header-invalid"


# --- v2 ---------------------------------------------------------------------------------


def test_v2_ipv4_with_tlvs() -> None:
    extensions = tlv(0x01, b"h2") + tlv(0xEA, b"\x01vpce-0123")  # ALPN, AWS endpoint id
    header = v2(("203.0.113.7", 40000), ("10.0.0.5", 2222), tlvs=extensions)
    got = parse_proxy_header(header + b"SSH-2.0-x\r\n")
    assert got == ProxyResult(
        version=2,
        length=len(header),
        local=False,
        source=("203.0.113.7", 40000),
        destination=("10.0.0.5", 2222),
        tlvs=((0x01, b"h2"), (0xEA, b"\x01vpce-0123")),
    )


def test_v2_ipv6() -> None:
    got = parse_proxy_header(v2(("2001:db8::7", 1), ("2001:db8::1", 2222)))
    assert isinstance(got, ProxyResult)
    assert (got.source, got.destination) == (("2001:db8::7", 1), ("2001:db8::1", 2222))


def test_v2_local_is_the_balancers_own_connection() -> None:
    # What HAProxy's health checks send with send-proxy-v2.
    header = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_proxy_header(header + b"x") == ProxyResult(version=2, length=16, local=True)
    # LOCAL ignores whatever address block it carries.
    with_addresses = v2(("203.0.113.7", 1), ("10.0.0.5", 2), command=0)
    got = parse_proxy_header(with_addresses)
    assert got == ProxyResult(version=2, length=len(with_addresses), local=True)


def test_v2_proxy_with_unspec_family_is_local() -> None:
    assert parse_proxy_header(v2(family=0, protocol=0)) == ProxyResult(2, 16, local=True)


def test_v2_prefixes_need_more_and_say_how_much() -> None:
    header = v2(("203.0.113.7", 40000), ("10.0.0.5", 2222), tlvs=tlv(0x04, b"\0" * 300))
    assert parse_proxy_header(header[:5]) == NeedMore(16)
    assert parse_proxy_header(header[:16]) == NeedMore(len(header))
    assert parse_proxy_header(header[:-1]) == NeedMore(len(header))


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (v2(("1.2.3.4", 1), ("5.6.7.8", 2), version=1), "version 1"),
        (v2(("1.2.3.4", 1), ("5.6.7.8", 2), command=2), "command 2"),
        (v2(("1.2.3.4", 1), ("5.6.7.8", 2), protocol=2), "STREAM"),  # UDP
        (v2(("1.2.3.4", 1), ("5.6.7.8", 2), protocol=0), "STREAM"),
        (v2(family=3, tlvs=b"\0" * 216), "AF_UNIX"),
        (v2(family=4, tlvs=b"\0" * 12), "family 4"),
        (v2(family=1, tlvs=b"\0" * 11), "too short"),
        (v2(family=2, tlvs=b"\0" * 35), "too short"),
        (v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=b"\x01\x00"), "cut short"),
        (v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=b"\x01\x00\x05abc"), "runs past"),
    ],
)
def test_v2_malformed_is_refused(header: bytes, says: str) -> None:
    with pytest.raises(ProxyError) as exc:
        parse_proxy_header(header)
    assert exc.value.code == "proxy-header-invalid"
    assert says in exc.value.message


@pytest.mark.parametrize(
    "data",
    [b"SSH-2.0-OpenSSH_9.2p1\r\n", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"PROXX", b"\r\n\r\nx"],
)
def test_anything_else_is_a_missing_header(data: bytes) -> None:
    assert code_of(data) == "proxy-header-missing"


def test_nothing_yet_needs_more() -> None:
    assert parse_proxy_header(b"") == NeedMore(1)


# --- properties ---------------------------------------------------------------------------


def check_outcome(data: bytes) -> None:
    try:
        got = parse_proxy_header(data)
    except ProxyError as exc:
        assert exc.code in ("proxy-header-invalid", "proxy-header-missing")
        return
    if isinstance(got, ProxyResult):
        assert 0 < got.length <= len(data)
    else:
        assert isinstance(got, NeedMore)
        assert got.needed > len(data)


@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_never_crash(data: bytes) -> None:
    check_outcome(data)


@given(st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE]), st.binary())
def test_property_arbitrary_bytes_after_a_signature_never_crash(head: bytes, tail: bytes) -> None:
    check_outcome(head + tail)


@given(
    st.sampled_from(["v1", "v2"]),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4),
    st.binary(max_size=40),
)
def test_property_valid_headers_parse_exactly_and_every_prefix_needs_more(
    kind: str,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
    extensions: list[tuple[int, bytes]],
    tail: bytes,
) -> None:
    src, dst = (str(ip), sport), (str(ip), dport)
    if kind == "v1":
        header = v1("TCP4" if ip.version == 4 else "TCP6", src, dst)
        extensions = []
    else:
        header = v2(src, dst, tlvs=b"".join(tlv(k, v) for k, v in extensions))
    data = header + tail
    got = parse_proxy_header(data)
    assert isinstance(got, ProxyResult)
    assert (got.length, got.source, got.destination) == (len(header), src, dst)
    assert list(got.tlvs) == extensions
    # The reader takes every byte of a NeedMore: that is safe only because no prefix of
    # a header is anything else.
    for cut in range(len(header)):
        assert isinstance(parse_proxy_header(data[:cut]), NeedMore)


# --- trust ------------------------------------------------------------------------------


def test_trusted_networks() -> None:
    nets = parse_trusted(["10.0.0.0/8", " 192.168.1.5 ", "2001:db8::/32"])
    assert is_trusted("10.1.2.3", nets)
    assert is_trusted("192.168.1.5", nets)
    assert is_trusted("::ffff:10.9.9.9", nets)  # IPv4 peer on a dual-stack socket
    assert is_trusted("2001:db8::1", nets)
    assert not is_trusted("192.168.1.6", nets)
    assert not is_trusted("11.0.0.1", nets)
    assert not is_trusted("not-an-ip", nets)


@pytest.mark.parametrize("cidrs", [[], ["10.0.0.0/33"], ["10.0.0.1/8"], ["lb.example"]])
async def test_bad_trust_config_refuses_to_listen(cidrs: list[str]) -> None:
    async def never(sock: socket.socket, client: Address) -> None:
        raise AssertionError

    with pytest.raises(BrokerError) as exc:
        await listen_with_proxy_protocol("127.0.0.1", 0, trusted=cidrs, on_connection=never)
    assert exc.value.code == "proxy-config-invalid"


# --- the settings that turn it on (policy/config.py) ---------------------------------------


def test_settings_from_toml_and_round_trip(tmp_path: Path) -> None:
    config = tmp_path / "sallyport.toml"
    config.write_text(
        'data_dir = "d"\n[gateway]\nproxy_protocol = true\n'
        'proxy_trusted = "10.0.0.0/8, 192.168.0.0/16"\n'
    )
    settings = load_settings(config, env={})
    assert settings.gateway_proxy_protocol is True
    assert settings.gateway_proxy_trusted == ("10.0.0.0/8", "192.168.0.0/16")
    assert parse_trusted(settings.gateway_proxy_trusted)
    config.write_text(render_settings(settings))
    assert load_settings(config, env={}) == settings


def test_settings_default_off_and_from_the_environment(tmp_path: Path) -> None:
    env = {"SALLYPORT_DATA_DIR": str(tmp_path)}
    assert load_settings(None, env=env).gateway_proxy_protocol is False
    assert load_settings(None, env=env).gateway_proxy_trusted == ()
    env |= {
        "SALLYPORT_GATEWAY_PROXY_PROTOCOL": "yes",
        "SALLYPORT_GATEWAY_PROXY_TRUSTED": "10.1.0.0/16,,2001:db8::/32",
    }
    settings = load_settings(None, env=env)
    assert settings.gateway_proxy_protocol is True
    assert settings.gateway_proxy_trusted == ("10.1.0.0/16", "2001:db8::/32")


@pytest.mark.parametrize(
    ("key", "value"),
    [("proxy_protocol", '"maybe"'), ("proxy_protocol", "1"), ("proxy_trusted", "10")],
)
def test_settings_bad_values_refused(tmp_path: Path, key: str, value: str) -> None:
    config = tmp_path / "sallyport.toml"
    config.write_text(f'data_dir = "d"\n[gateway]\n{key} = {value}\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config, env={})
    assert f"gateway.{key}" in exc.value.message
