"""Port-forward captures (recorder/pcap.py), read back by the real tshark and by a small
pcap reader below that checks every checksum and sequence number the obvious way."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.channel import FLUSH_BYTES
from recorder.errors import FormatError, StorageError
from recorder.pcap import ACK_BYTES, SEGMENT_BYTES, TcpCapture
from recorder.storage import LocalStorage

STARTED = 1_741_944_615.75  # 2025-03-14T09:30:15.75Z
VENDOR = ("203.0.113.7", 50123)
PUMP = ("10.20.0.12", 80)
VENDOR6 = ("2001:db8:7::7", 50123)
PUMP6 = ("fd00:20::12", 443)
WARNING = 0x00600000  # tshark expert severity: warnings and errors, not chat or notes


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = STARTED + 0.5) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WrappingCapture(TcpCapture):
    """Sequence numbers that wrap past 2**32 within the first kilobytes."""

    CLIENT_ISN = 2**32 - 1000
    SERVER_ISN = 2**32 - 3


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "recordings")


def capture(
    storage: LocalStorage,
    client: tuple[str, int] = VENDOR,
    server: tuple[str, int] = PUMP,
    *,
    key: str = "s1/fwd0.pcap",
    kind: type[TcpCapture] = TcpCapture,
    clock: FakeClock | None = None,
) -> TcpCapture:
    return kind(storage.create(key), client, server, started_at=STARTED, clock=clock or FakeClock())


# --- a small pcap reader --------------------------------------------------------------------


@dataclass
class Packet:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: str  # e.g. "SA", "PA", "FA"
    options: bytes
    payload: bytes
    ip_length: int


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071, plainly: add the 16-bit words, then fold the carries back in."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def read_pcap(data: bytes) -> tuple[list[Packet], bool]:
    """Packets of a big-endian LINKTYPE_RAW pcap, and whether the last record was cut."""
    magic, major, minor, _, _, snaplen, linktype = struct.unpack(">IHHiIII", data[:24])
    assert (magic, major, minor, snaplen, linktype) == (0xA1B2C3D4, 2, 4, 65535, 101)
    packets: list[Packet] = []
    pos = 24
    while pos < len(data):
        if len(data) - pos < 16:
            return packets, True
        sec, usec, caplen, length = struct.unpack(">IIII", data[pos : pos + 16])
        assert caplen == length <= 65535 and usec < 1_000_000
        raw = data[pos + 16 : pos + 16 + caplen]
        if len(raw) < caplen:
            return packets, True
        packets.append(_packet(sec + usec / 1e6, raw))
        pos += 16 + caplen
    return packets, False


def _packet(time: float, raw: bytes) -> Packet:
    if raw[0] >> 4 == 4:
        assert raw[0] == 0x45 and raw[9] == 6 and raw[8] == 64
        assert struct.unpack(">H", raw[2:4])[0] == len(raw)
        assert ones_complement_sum(raw[:20]) == 0xFFFF, "bad IPv4 header checksum"
        src, dst, tcp = raw[12:16], raw[16:20], raw[20:]
        pseudo = src + dst + struct.pack(">BBH", 0, 6, len(tcp))
    else:
        assert raw[0] >> 4 == 6 and raw[6] == 6 and raw[7] == 64
        assert struct.unpack(">H", raw[4:6])[0] == len(raw) - 40
        src, dst, tcp = raw[8:24], raw[24:40], raw[40:]
        pseudo = src + dst + struct.pack(">IxxxB", len(tcp), 6)
    assert ones_complement_sum(pseudo + tcp) == 0xFFFF, "bad TCP checksum"
    sport, dport, seq, ack, offset, flags, window, _, urgent = struct.unpack(">HHIIBBHHH", tcp[:20])
    assert window == 0xFFFF and urgent == 0
    header = (offset >> 4) * 4
    names = "".join(name for bit, name in enumerate("FSRPAU") if flags >> bit & 1)
    return Packet(
        time,
        (_address(src), sport),
        (_address(dst), dport),
        seq,
        ack,
        names,
        tcp[20:header],
        tcp[header:],
        len(raw),
    )


def reassemble(packets: list[Packet]) -> tuple[bytes, bytes, bool]:
    """Both byte streams (client's, server's), checking the handshake, every sequence and
    acknowledgement number, segment sizes and time order; and whether both sides closed."""
    syn, syn_ack, ack = packets[:3]
    assert (syn.flags, syn_ack.flags, ack.flags) == ("S", "SA", "A")
    client, server = syn.src, syn.dst
    assert (syn_ack.src, syn_ack.dst, ack.src) == (server, client, client)
    assert syn.options == syn_ack.options == bytes([2, 4, 0x40, 0, 1, 3, 3, 7])
    nxt = {client: (syn.seq + 1) % 2**32, server: (syn_ack.seq + 1) % 2**32}
    assert (syn_ack.ack, ack.seq, ack.ack) == (nxt[client], nxt[client], nxt[server])
    streams: dict[tuple[str, int], list[bytes]] = {client: [], server: []}
    finished: set[tuple[str, int]] = set()
    last = syn.time
    for p in packets[3:]:
        peer = server if p.src == client else client
        assert p.dst == peer and p.time >= last
        assert p.src not in finished or (p.flags == "A" and not p.payload), "sent after FIN"
        assert p.seq == nxt[p.src], "sequence gap or overlap"
        assert "A" in p.flags and p.ack == nxt[peer], "does not acknowledge all the peer sent"
        assert len(p.payload) <= SEGMENT_BYTES and not p.options
        streams[p.src].append(p.payload)
        nxt[p.src] = (nxt[p.src] + len(p.payload) + ("F" in p.flags)) % 2**32
        if "F" in p.flags:
            finished.add(p.src)
        last = p.time
    closed = finished == {client, server} and packets[-1].flags == "A"
    return b"".join(streams[client]), b"".join(streams[server]), closed


# --- tshark ---------------------------------------------------------------------------------


def run_tshark(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("tshark")
    if binary is None:
        pytest.fail("tshark is not installed: apt-get install tshark")
    return subprocess.run(
        [binary, "-n", *args], capture_output=True, text=True, check=False, timeout=120
    )


def tshark(*args: str) -> str:
    result = run_tshark(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def follow(path: Path) -> tuple[bytes, bytes]:
    """Wireshark's "Follow TCP Stream" of the first connection, as raw bytes each way."""
    lines = tshark("-r", str(path), "-q", "-z", "follow,tcp,raw,0").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Node 1:")) + 1
    client: list[bytes] = []
    server: list[bytes] = []
    for line in lines[start:]:
        if line.startswith("="):
            break
        (server if line.startswith("\t") else client).append(bytes.fromhex(line.strip()))
    return b"".join(client), b"".join(server)


def frames(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    args = ["-r", str(path), "-Y", display_filter, "-T", "fields"]
    for name in fields or ("frame.number",):
        args += ["-e", name]
    return [line.split("\t") for line in tshark(*args).splitlines()]


# --- through tshark -------------------------------------------------------------------------


def test_http_exchange_dissected_by_tshark(storage: LocalStorage) -> None:
    cap = capture(storage)
    cap.from_client(b"GET /sta")  # the request line split across two reads
    cap.from_client(b"tus HTTP/1.1\r\nHost: pump-12\r\nAccept: */*\r\n\r\n")
    body = b'{"state": "infusing", "rate_ml_h": 12.5}'
    cap.from_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    cap.close()
    path = storage.path(cap.key)
    assert frames(path, "http.request", "http.request.method", "http.request.uri") == [
        ["GET", "/status"]
    ]
    assert frames(path, "http.response", "http.response.code", "http.file_data") == [
        ["200", body.decode()]
    ]
    ends = frames(path, "tcp.flags.syn==1 && tcp.flags.ack==0", "ip.src", "tcp.srcport", "ip.dst")
    assert ends == [["203.0.113.7", "50123", "10.20.0.12"]]


@pytest.mark.parametrize(
    ("client", "server", "kind"),
    [
        (VENDOR, PUMP, TcpCapture),
        (VENDOR, PUMP, WrappingCapture),
        (VENDOR6, PUMP6, TcpCapture),
        (VENDOR6, PUMP, WrappingCapture),
    ],
    ids=["ipv4", "ipv4-seq-wrap", "ipv6", "mixed-seq-wrap"],
)
def test_follow_stream_gives_back_exact_bytes_both_ways(
    storage: LocalStorage,
    client: tuple[str, int],
    server: tuple[str, int],
    kind: type[TcpCapture],
) -> None:
    rng = random.Random(12)
    clock = FakeClock()
    cap = capture(storage, client, server, kind=kind, clock=clock)
    sent: dict[bool, list[bytes]] = {True: [], False: []}
    for size in [1, 700, 40_000, 16_384, 16_385, 3, 90_000, 65_536, 5, 32_769]:
        to_server = rng.random() < 0.6
        chunk = rng.randbytes(size)
        clock.advance(rng.random() / 10)
        (cap.from_client if to_server else cap.from_server)(chunk)
        sent[to_server].append(chunk)
        if rng.random() < 0.3:
            cap.flush()
    cap.close()
    upstream, downstream = b"".join(sent[True]), b"".join(sent[False])
    assert len(upstream) + len(downstream) > 100 * 1024
    assert (cap.bytes_from_client, cap.bytes_from_server) == (len(upstream), len(downstream))
    path = storage.path(cap.key)
    assert follow(path) == (upstream, downstream)
    assert reassemble(read_pcap(path.read_bytes())[0]) == (upstream, downstream, True)


def test_checksums_verified_good_and_no_expert_warnings(storage: LocalStorage) -> None:
    rng = random.Random(3)
    cap = capture(storage, VENDOR, ("10.20.0.12", 40404), kind=WrappingCapture)  # not HTTP
    cap.from_client(b"\x00" * 1001)  # odd length, all zero
    cap.from_client(b"\xff" * 4000)  # words that sum to multiples of 0xFFFF
    cap.from_server(rng.randbytes(3 * ACK_BYTES + 17))  # one way, past several pure ACKs
    cap.from_client(b"x")
    cap.close()
    path = storage.path(cap.key)
    checks = ("-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE")
    total = len(read_pcap(path.read_bytes())[0])
    good = "tcp.checksum.status==Good && ip.checksum.status==Good"
    numbers = ("-T", "fields", "-e", "frame.number")
    assert len(tshark("-r", str(path), *checks, "-Y", good, *numbers).splitlines()) == total
    bad = "tcp.checksum.status==Bad || ip.checksum.status==Bad"
    assert tshark("-r", str(path), *checks, "-Y", bad) == ""
    warnings = f"_ws.expert.severity >= {WARNING:#x} || tcp.analysis.flags || _ws.malformed"
    assert tshark("-r", str(path), *checks, "-Y", warnings) == ""
    packets, _ = read_pcap(path.read_bytes())
    pure_acks = [p for p in packets[3:] if p.flags == "A" and p.src == VENDOR]
    assert len(pure_acks) == 3 + 1  # every ACK_BYTES from the server, and the final ACK


def test_ipv6_checksums_good(storage: LocalStorage) -> None:
    cap = capture(storage, VENDOR6, PUMP6)
    cap.from_client(os.urandom(20_001))
    cap.from_server(b"ok")
    cap.close()
    path = storage.path(cap.key)
    checks = ("-o", "tcp.check_checksum:TRUE")
    sources = tshark(
        "-r",
        str(path),
        *checks,
        "-Y",
        "tcp.checksum.status==Good",
        "-T",
        "fields",
        "-e",
        "ipv6.src",
    )
    c, s = "2001:db8:7::7", "fd00:20::12"
    assert sources.split() == [c, s, c, c, c, s, c, s, c]
    assert tshark("-r", str(path), *checks, "-Y", "tcp.checksum.status!=Good") == ""


def test_close_returns_hash_and_size_of_the_file(storage: LocalStorage) -> None:
    cap = capture(storage)
    cap.from_client(b"request")
    cap.flush()
    cap.from_server(b"buffered until close")
    stored = cap.close()
    data = storage.read(cap.key)
    assert stored.key == cap.key == "s1/fwd0.pcap"
    assert stored.complete
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert cap.close() == stored
    assert follow(storage.path(cap.key)) == (b"request", b"buffered until close")


def test_capture_flushed_but_never_closed_is_readable(storage: LocalStorage) -> None:
    cap = capture(storage)
    cap.from_client(b"GET /status HTTP/1.1\r\nHost: pump-12\r\n\r\n")
    cap.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    cap.flush()  # and then the gateway dies
    path = storage.path(cap.key)
    assert frames(path, "http.request", "http.request.uri") == [["/status"]]
    assert frames(path, "http.response", "http.response.code") == [["200"]]
    client, server, closed = reassemble(read_pcap(path.read_bytes())[0])
    assert not closed
    assert follow(path) == (client, server)
    assert server == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    cap.close()


@pytest.mark.parametrize(("cut_back", "lost"), [(1, 1), (20, 1), (16 + 40 + 3, 2)])
def test_capture_cut_inside_the_last_record_is_readable(
    storage: LocalStorage, tmp_path: Path, cut_back: int, lost: int
) -> None:
    cap = capture(storage)
    cap.from_client(b"GET /status HTTP/1.1\r\nHost: pump-12\r\n\r\n")
    cap.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    cap.from_server(b"hello")
    cap.close()
    data = storage.read(cap.key)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - cut_back])  # a crash mid-write of the last record
    packets, truncated = read_pcap(cut.read_bytes())
    assert truncated and len(packets) == len(read_pcap(data)[0]) - lost
    out = run_tshark("-r", str(cut))
    assert out.returncode == 2 and "cut short in the middle of a packet" in out.stderr
    assert "GET /status" in out.stdout and "200 OK" in out.stdout


# --- framing, with the reader above ---------------------------------------------------------


def test_large_writes_split_into_segments(storage: LocalStorage) -> None:
    cap = capture(storage, VENDOR6, PUMP6)
    data = os.urandom(5 * SEGMENT_BYTES + 1)
    cap.from_client(data)
    cap.close()
    packets, _ = read_pcap(storage.read(cap.key))
    sizes = [len(p.payload) for p in packets if p.payload]
    assert sizes == [SEGMENT_BYTES] * 5 + [1]
    assert max(p.ip_length for p in packets) == 40 + 20 + SEGMENT_BYTES
    assert [p.flags for p in packets if p.payload] == ["A"] * 5 + ["PA"]
    assert reassemble(packets) == (data, b"", True)


def test_timestamps_follow_the_clock_and_never_go_back(storage: LocalStorage) -> None:
    clock = FakeClock(STARTED + 2)
    cap = capture(storage, clock=clock)
    cap.from_client(b"a")
    clock.advance(1.25)
    cap.from_server(b"b" * (SEGMENT_BYTES + 1))
    clock.advance(-30)  # the wall clock stepped back
    cap.from_client(b"c")
    clock.advance(40)
    cap.close()
    times = [round(p.time - STARTED, 6) for p in read_pcap(storage.read(cap.key))[0]]
    assert times == [0, 0, 0, 2, 3.25, 3.25, 3.25, 13.25, 13.25, 13.25]


def test_every_segment_is_on_disk_before_the_call_returns(storage: LocalStorage) -> None:
    """Written through: the relay passes bytes on only after they are in the capture."""
    cap = capture(storage)
    path = storage.path(cap.key)
    opened = path.stat().st_size
    assert opened == 24 + 2 * (16 + 48) + 16 + 40  # header and handshake written at once
    cap.from_client(b"small")
    assert path.stat().st_size == opened + 16 + 40 + 5
    cap.from_server(os.urandom(FLUSH_BYTES + 1000))
    assert path.stat().st_size >= opened + 16 + 40 + 5 + FLUSH_BYTES + 1000
    cap.close()


def test_ipv4_mapped_addresses_give_ipv4_framing(storage: LocalStorage) -> None:
    cap = capture(storage, ("::ffff:203.0.113.7", 50123), PUMP)
    cap.from_client(b"x")
    cap.close()
    packets, _ = read_pcap(storage.read(cap.key))
    assert {p.src for p in packets} == {VENDOR, PUMP}


def test_ipv4_beside_ipv6_is_written_ipv4_mapped(storage: LocalStorage) -> None:
    cap = capture(storage, VENDOR, ("fe80::12%eth0", 443))
    cap.close()
    packets, _ = read_pcap(storage.read(cap.key))
    assert packets[0].src == ("::ffff:cb00:7107", 50123)  # ::ffff:203.0.113.7
    assert packets[0].dst == ("fe80::12", 443)


@pytest.mark.parametrize(
    ("client", "server", "code"),
    [
        (VENDOR, ("pump-12", 443), "pcap-address-invalid"),
        (("", 1), PUMP, "pcap-address-invalid"),
        (VENDOR, ("10.20.0.12", 70000), "pcap-port-invalid"),
        (("203.0.113.7", -1), PUMP, "pcap-port-invalid"),
    ],
)
def test_bad_endpoints_refused(
    storage: LocalStorage, client: tuple[str, int], server: tuple[str, int], code: str
) -> None:
    sink = storage.create("bad.pcap")
    with pytest.raises(FormatError) as exc:
        TcpCapture(sink, client, server)
    assert exc.value.code == code
    sink.close()


def test_default_clock_is_wall_time(storage: LocalStorage) -> None:
    before = time.time()
    cap = TcpCapture(storage.create("now.pcap"), VENDOR, PUMP)
    cap.from_client(b"x")
    cap.close()
    times = [p.time for p in read_pcap(storage.read("now.pcap"))[0]]
    assert before - 1 <= times[0] <= times[-1] <= before + 60


def test_empty_writes_add_nothing(storage: LocalStorage) -> None:
    cap = capture(storage)
    cap.from_client(b"")
    cap.from_server(b"")
    cap.close()
    assert len(read_pcap(storage.read(cap.key))[0]) == 6


def test_writes_after_close_refused(storage: LocalStorage) -> None:
    cap = capture(storage)
    cap.close()
    with pytest.raises(StorageError) as exc:
        cap.from_client(b"late")
    assert exc.value.code == "recording-closed"


def test_failed_final_write_closes_incomplete_with_hash_of_what_was_stored(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = capture(storage)
    cap.from_client(b"stored before the disk filled")
    cap.flush()

    def full_disk(fd: int, buffers: list[bytes]) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(StorageError):  # written through: the failure shows at once
        cap.from_server(b"never stored")
    stored = cap.close()  # does not raise
    monkeypatch.undo()
    data = storage.read(cap.key)
    assert not stored.complete
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    packets, truncated = read_pcap(data)
    assert not truncated
    assert reassemble(packets) == (b"stored before the disk filled", b"", False)
    assert cap.close() == stored


# --- properties -----------------------------------------------------------------------------

operations = st.lists(
    st.tuples(st.sampled_from(["client", "server", "flush"]), st.binary(max_size=48)),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=operations,
    kind=st.sampled_from([TcpCapture, WrappingCapture]),
    ends=st.sampled_from([(VENDOR, PUMP), (VENDOR6, PUMP6), (VENDOR, PUMP6)]),
)
def test_property_interleavings_reassemble_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, bytes]],
    kind: type[TcpCapture],
    ends: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    store = LocalStorage(tmp_path_factory.mktemp("pcap"))
    clock = FakeClock()
    cap = capture(store, *ends, kind=kind, clock=clock)
    for op, chunk in ops:
        clock.advance(len(chunk) / 1000)
        if op == "client":
            cap.from_client(chunk)
        elif op == "server":
            cap.from_server(chunk)
        else:
            cap.flush()
    stored = cap.close()
    data = store.read(cap.key)
    assert stored.size == len(data)
    packets, truncated = read_pcap(data)
    assert not truncated
    client = b"".join(c for op, c in ops if op == "client")
    server = b"".join(c for op, c in ops if op == "server")
    assert reassemble(packets) == (client, server, True)
    assert len(packets) == 6 + sum(1 for op, c in ops if op != "flush" and c)
