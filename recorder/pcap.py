"""Forwarded TCP connections (``ssh -L``/``-R``) recorded as pcap files Wireshark opens.

The gateway relays a port forward as two byte streams and never sees real packets, so
``TcpCapture`` invents them: a classic pcap (big-endian, microsecond timestamps,
``LINKTYPE_RAW``) holding synthetic IP and TCP headers with correct checksums and
sequence numbers, so that Wireshark's dissectors and "Follow TCP Stream" work.

- The connection opens with a SYN, SYN/ACK, ACK handshake (MSS and window scale options)
  stamped ``started_at``; it ends on ``close()`` with FIN/ACK from the client, FIN/ACK
  from the server and a last ACK.
- Each ``from_client``/``from_server`` call becomes segments of at most ``SEGMENT_BYTES``
  stamped with one ``clock()`` reading (kept non-decreasing), PSH on the last. Every
  segment acknowledges all the peer has sent; after ``ACK_BYTES`` in one direction with no
  reply, the receiver sends a pure ACK, so bytes in flight stay within the window.
- Addresses: two IPv4 endpoints give IPv4 framing; an IPv6 endpoint gives IPv6 framing,
  with an IPv4 endpoint beside it written IPv4-mapped (``::ffff:a.b.c.d``). IPv4-mapped
  IPv6 addresses (from dual-stack sockets) count as IPv4; scope ids are dropped; host
  names are refused, since a packet needs an address.

Written with ``struct`` rather than scapy 2.8.0, because scapy built about 14 MB/s and
0.8 ms per small packet here, far too slow to stream forwards through the gateway.
Like the channel recordings, the writer buffers and pushes to the sink when the buffer
passes ``FLUSH_BYTES`` or on ``flush()``; a file cut short by a crash stays readable.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable

from recorder.channel import FLUSH_BYTES
from recorder.errors import FormatError, RecorderError, StorageError
from recorder.storage import Sink, StoredObject

LINKTYPE_RAW = 101  # IPv4 or IPv6, told apart by the version nibble
SNAPLEN = 65535
SEGMENT_BYTES = 16 * 1024
ACK_BYTES = 1024 * 1024
WINDOW_SCALE = 7  # window 0xFFFF << 7: 8 MiB, far above ACK_BYTES

_FIN, _SYN, _PSH, _ACK = 0x01, 0x02, 0x08, 0x10
_SEQ = 0xFFFFFFFF
_TTL = 64
_TCP = 6

_GLOBAL = struct.Struct(">IHHiIII")  # magic, version 2.4, zone, sigfigs, snaplen, linktype
# pcap record header (seconds, microseconds, captured, original), IP header, TCP header
_V4 = struct.Struct(">IIII BBHHHBBH4s4s HHIIBBHHH")
_V6 = struct.Struct(">IIII IHBB16s16s HHIIBBHHH")
_SYN_OPTIONS = struct.pack(">BBHBBBB", 2, 4, SEGMENT_BYTES, 1, 3, 3, WINDOW_SCALE)  # MSS, NOP, WS


def _checksum(total: int) -> int:
    """Internet checksum from a plain sum of the data's 16-bit words (any multiple of
    65536 folds to 1 modulo 65535, which is how ones' complement addition carries)."""
    return 0xFFFF - (total % 0xFFFF or 0xFFFF)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise FormatError("pcap-address-invalid", f"not an IP address: {host!r}") from None
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped or ipaddress.IPv6Address(address.packed)  # drop scope
    return address


def _packed_pair(client: str, server: str) -> tuple[bytes, bytes]:
    """Both addresses in one family: IPv4 if both are, IPv6 (IPv4-mapped) otherwise."""
    a, b = _address(client), _address(server)
    if a.version == b.version:
        return a.packed, b.packed
    return _as_v6(a), _as_v6(b)


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return address.packed if address.version == 6 else b"\0" * 10 + b"\xff\xff" + address.packed


class _Half:
    """One direction of the connection: fixed addresses and ports, moving counters."""

    __slots__ = ("dport", "dst", "ident", "ip_sum", "seq", "sport", "src", "tcp_sum", "unacked")

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int, isn: int) -> None:
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise FormatError("pcap-port-invalid", f"bad port in {sport} -> {dport}")
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.seq = isn  # next sequence number, not wrapped
        self.unacked = 0  # payload bytes sent since the peer last acknowledged
        self.ident = 0
        addresses = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
        # constant words: pseudo-header addresses and protocol, ports, window
        self.tcp_sum = addresses + _TCP + sport + dport + 0xFFFF
        # constant words of an IPv4 header: version/IHL, DF, TTL/protocol, addresses
        self.ip_sum = addresses + 0x4500 + 0x4000 + (_TTL << 8 | _TCP)


class TcpCapture:
    """One forwarded connection as a classic pcap (LINKTYPE_RAW), streamed to a Sink.

    ``client`` is the vendor's end (address, port) and ``server`` the device's; a host name
    or a port out of range raises ``FormatError``. The initial sequence numbers are fixed,
    so a capture depends only on its data and clock."""

    CLIENT_ISN = 0x1000_0000
    SERVER_ISN = 0x9000_0000

    def __init__(
        self,
        sink: Sink,
        client: tuple[str, int],
        server: tuple[str, int],
        *,
        started_at: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        src, dst = _packed_pair(client[0], server[0])
        self._client = _Half(src, dst, client[1], server[1], self.CLIENT_ISN)
        self._server = _Half(dst, src, server[1], client[1], self.SERVER_ISN)
        self._v6 = len(src) == 16
        self._sink = sink
        self._clock = clock
        self._last = clock() if started_at is None else started_at
        self._sec, self._usec = 0, 0
        self._parts: list[bytes] = []
        self._pending = 0
        self._failed = False
        self._closed: StoredObject | None = None
        self.bytes_from_client = 0
        self.bytes_from_server = 0
        self._parts.append(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
        self._stamp(self._last)
        self._segment(self._client, self._server, _SYN, b"", _SYN_OPTIONS)
        self._segment(self._server, self._client, _SYN | _ACK, b"", _SYN_OPTIONS)
        self._segment(self._client, self._server, _ACK)
        self.flush()

    @property
    def key(self) -> str:
        return self._sink.key

    def from_client(self, data: bytes) -> None:
        """Bytes the vendor sent towards the device."""
        self._send(self._client, self._server, data)
        self.bytes_from_client += len(data)

    def from_server(self, data: bytes) -> None:
        """Bytes the device sent back to the vendor."""
        self._send(self._server, self._client, data)
        self.bytes_from_server += len(data)

    def flush(self) -> None:
        if self._parts:
            parts, self._parts, self._pending = self._parts, [], 0
            try:
                self._sink.write_parts(parts)
            except RecorderError:
                self._failed = True  # the capture is incomplete, whatever follows
                raise

    def close(self, complete: bool = True) -> StoredObject:
        """Close the connection both ways and seal the capture. Never raises: if the last
        writes fail, the result is marked incomplete and hashes exactly what was stored."""
        if self._closed is None:
            try:
                self._stamp(self._clock())
                self._segment(self._client, self._server, _FIN | _ACK)
                self._segment(self._server, self._client, _FIN | _ACK)
                self._segment(self._client, self._server, _ACK)
                self.flush()
            except RecorderError:
                complete = False
                self._parts, self._pending = [], 0
            self._closed = self._sink.close(complete and not self._failed)
        return self._closed

    def _stamp(self, now: float) -> None:
        """Timestamp the next segments, never earlier than the ones before."""
        self._last = max(self._last, now)
        self._sec, self._usec = divmod(round(self._last * 1_000_000), 1_000_000)

    def _send(self, half: _Half, peer: _Half, data: bytes) -> None:
        if self._closed is not None:
            raise StorageError("recording-closed", f"{self.key} is already closed")
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # buffered until the next flush: must not change under us
        self._stamp(self._clock())
        size = len(data)
        for start in range(0, size, SEGMENT_BYTES):
            end = start + SEGMENT_BYTES
            if end >= size:
                self._segment(half, peer, _PSH | _ACK, data[start:] if start else data)
            else:
                self._segment(half, peer, _ACK, data[start:end])
            if half.unacked >= ACK_BYTES:
                self._segment(peer, half, _ACK)

    def _segment(
        self, half: _Half, peer: _Half, flags: int, payload: bytes = b"", options: bytes = b""
    ) -> None:
        """Buffer one packet from ``half``: record header, IP and TCP headers, payload."""
        size = len(payload)
        seq = half.seq & _SEQ
        ack = peer.seq & _SEQ if flags & _ACK else 0
        tcp_len = 20 + len(options) + size
        offset_flags = (5 + len(options) // 4) << 12 | flags
        words = half.tcp_sum + tcp_len + seq + ack + offset_flags
        if options:
            words += int.from_bytes(options, "big")
        if size:
            words += int.from_bytes(payload, "big") % 0xFFFF << (8 if size & 1 else 0)
        tcp = _checksum(words)
        if self._v6:
            length = 40 + tcp_len
            head = _V6.pack(
                self._sec, self._usec, length, length,
                0x6000_0000, tcp_len, _TCP, _TTL, half.src, half.dst,
                half.sport, half.dport, seq, ack, offset_flags >> 8, flags, 0xFFFF, tcp, 0,
            )  # fmt: skip
        else:
            length = 20 + tcp_len
            ip = _checksum(half.ip_sum + length + half.ident)
            head = _V4.pack(
                self._sec, self._usec, length, length,
                0x45, 0, length, half.ident, 0x4000, _TTL, _TCP, ip, half.src, half.dst,
                half.sport, half.dport, seq, ack, offset_flags >> 8, flags, 0xFFFF, tcp, 0,
            )  # fmt: skip
            half.ident = (half.ident + 1) & 0xFFFF
        self._parts.append(head + options if options else head)
        if size:
            self._parts.append(payload)
        half.seq += size + (1 if flags & (_SYN | _FIN) else 0)
        half.unacked += size
        if flags & _ACK:
            peer.unacked = 0
        self._pending += 16 + length
        if self._pending >= FLUSH_BYTES:
            self.flush()
