"""SftpTap: unit and property tests on built packet streams, then real OpenSSH end to end.

The end-to-end tests run stock ``sftp``/``scp`` against a tiny asyncssh relay (test
scaffolding, not the gateway's relay) that pipes an ``sftp`` subsystem or an ``scp -t/-f``
exec channel through the taps to a real sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import pwd
import shutil
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.scp_tap import ScpTap
from broker.sftp_tap import (
    ATTRS,
    CLOSE,
    DATA,
    DOWNLOAD_DENIED,
    EXTENDED,
    FSETSTAT,
    FSTAT,
    FX_EOF,
    FX_OK,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    HANDLE,
    INIT,
    MKDIR,
    OPEN,
    OPENDIR,
    READ,
    REMOVE,
    RENAME,
    RMDIR,
    SETSTAT,
    STAT,
    STATUS,
    SYMLINK,
    UPLOAD_DENIED,
    VERSION,
    WRITE,
    FileTransfer,
    SftpTap,
    TapEvent,
    TransferRefusal,
)
from broker.tasks import TaskSet
from tests.support.openssh import client_env, make_askpass
from tests.support.sshd import SshdDevice

# -- a small SFTP v3 packet builder ---------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def sstr(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return u32(len(raw)) + raw


def packet(ptype: int, *parts: bytes) -> bytes:
    body = bytes([ptype]) + b"".join(parts)
    return u32(len(body)) + body


def p_open(rid: int, path: str, flags: int) -> bytes:
    return packet(OPEN, u32(rid), sstr(path), u32(flags), u32(0))


def p_read(rid: int, handle: bytes, offset: int, length: int) -> bytes:
    return packet(READ, u32(rid), sstr(handle), u64(offset), u32(length))


def p_write(rid: int, handle: bytes, offset: int, data: bytes) -> bytes:
    return packet(WRITE, u32(rid), sstr(handle), u64(offset), sstr(data))


def p_close(rid: int, handle: bytes) -> bytes:
    return packet(CLOSE, u32(rid), sstr(handle))


def p_status(rid: int, code: int, msg: str = "") -> bytes:
    return packet(STATUS, u32(rid), u32(code), sstr(msg), sstr(""))


def p_handle(rid: int, handle: bytes) -> bytes:
    return packet(HANDLE, u32(rid), sstr(handle))


def p_data(rid: int, data: bytes) -> bytes:
    return packet(DATA, u32(rid), sstr(data))


HELLO = [("c", packet(INIT, u32(3))), ("s", packet(VERSION, u32(3), sstr("x@y"), sstr("1")))]
WRITE_FLAGS = FXF_WRITE | FXF_CREAT | FXF_TRUNC


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- driving a tap ---------------------------------------------------------------------------

Cut = Callable[[bytes], list[bytes]]


@dataclass
class Run:
    to_device: bytes
    replies: bytes  # what the tap answered the vendor itself
    to_vendor: bytes
    events: list[TapEvent]


def drive(tap: SftpTap, steps: list[tuple[str, bytes]], cut: Cut = lambda b: [b]) -> Run:
    """Feed the conversation; runs of same-direction steps are merged, then cut up."""
    segments: list[tuple[str, bytes]] = []
    for side, data in steps:
        if segments and segments[-1][0] == side:
            segments[-1] = (side, segments[-1][1] + data)
        else:
            segments.append((side, data))
    to_device, replies, to_vendor = bytearray(), bytearray(), bytearray()
    for side, data in segments:
        for chunk in cut(data):
            if side == "c":
                fwd, reply = tap.from_client(chunk)
                to_device += fwd
                replies += reply
            else:
                to_vendor += tap.from_server(chunk)
    return Run(bytes(to_device), bytes(replies), bytes(to_vendor), tap.events())


def cutter(data: st.DataObject) -> Cut:
    def cut(raw: bytes) -> list[bytes]:
        points = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
        bounds = [0, *sorted(points), len(raw)]
        return [raw[a:b] for a, b in itertools.pairwise(bounds)]

    return cut


def download(
    content: bytes, block: int, order: list[int] | None = None, *, start: int = 0
) -> list[tuple[str, bytes]]:
    """OPEN/READ.../CLOSE of *content* at /data/log.bin, replies in *order*."""
    steps = [*HELLO, ("c", p_open(1, "/data/log.bin", FXF_READ)), ("s", p_handle(1, b"h1"))]
    # the last two reads are at and past the end: both get EOF (OpenSSH pipelines past it)
    offsets = [*range(start, len(content), block), len(content), len(content) + block]
    steps.append(("c", b"".join(p_read(100 + i, b"h1", o, block) for i, o in enumerate(offsets))))
    replies = [p_data(100 + i, content[o : o + block]) for i, o in enumerate(offsets[:-2])]
    replies += [p_status(100 + len(offsets) - i, FX_EOF) for i in (2, 1)]
    order = order if order is not None else list(range(len(replies)))
    steps.append(("s", b"".join(replies[i] for i in order)))
    return [*steps, ("c", p_close(9, b"h1")), ("s", p_status(9, FX_OK))]


def upload(content: bytes, block: int, path: str = "/data/fw.bin") -> list[tuple[str, bytes]]:
    steps = [*HELLO, ("c", p_open(1, path, WRITE_FLAGS)), ("s", p_handle(1, b"w1"))]
    offsets = list(range(0, len(content), block))
    writes = [p_write(200 + i, b"w1", o, content[o : o + block]) for i, o in enumerate(offsets)]
    steps += [
        ("c", b"".join(writes)),
        ("s", b"".join(p_status(200 + i, 0) for i in range(len(offsets)))),
    ]
    return [*steps, ("c", p_close(9, b"w1")), ("s", p_status(9, FX_OK))]


def client_bytes(steps: list[tuple[str, bytes]]) -> bytes:
    return b"".join(d for s, d in steps if s == "c")


def server_bytes(steps: list[tuple[str, bytes]]) -> bytes:
    return b"".join(d for s, d in steps if s == "s")


# -- unit and property tests -----------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=6000), block=st.integers(1, 900), data=st.data())
def test_download_out_of_order_replies_any_split(
    content: bytes, block: int, data: st.DataObject
) -> None:
    count = len(range(0, len(content), block)) + 2
    order = data.draw(st.permutations(list(range(count))))
    steps = download(content, block, order)
    run = drive(SftpTap(allow_upload=False, allow_download=True), steps, cutter(data))
    assert run.to_device == client_bytes(steps)
    assert run.to_vendor == server_bytes(steps)
    assert run.replies == b""
    assert run.events == [
        FileTransfer("/data/log.bin", "download", len(content), sha(content), True)
    ]


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=6000), block=st.integers(1, 900), data=st.data())
def test_upload_any_split(content: bytes, block: int, data: st.DataObject) -> None:
    steps = upload(content, block)
    run = drive(SftpTap(allow_upload=True, allow_download=False), steps, cutter(data))
    assert run.to_device == client_bytes(steps)
    assert run.events == [FileTransfer("/data/fw.bin", "upload", len(content), sha(content), True)]


def test_upload_writes_out_of_order_after_the_first() -> None:
    content = os.urandom(5000)
    steps = [*HELLO, ("c", p_open(1, "/f", WRITE_FLAGS)), ("s", p_handle(1, b"w"))]
    for rid, off in enumerate([0, 3000, 1000, 4000, 2000]):
        steps += [("c", p_write(rid + 10, b"w", off, content[off : off + 1000]))]
        steps += [("s", p_status(rid + 10, FX_OK))]
    steps += [("c", p_close(9, b"w")), ("s", p_status(9, FX_OK))]
    events = drive(SftpTap(allow_upload=True, allow_download=True), steps).events
    assert events == [FileTransfer("/f", "upload", 5000, sha(content), True)]


@settings(max_examples=100, deadline=None)
@given(
    allow_upload=st.booleans(),
    allow_download=st.booleans(),
    flags=st.integers(0, 0x3F),
    data=st.data(),
)
def test_refused_open_is_answered_and_not_forwarded(
    allow_upload: bool, allow_download: bool, flags: int, data: st.DataObject
) -> None:
    writes = bool(flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC | 0x20))
    reads = bool(flags & FXF_READ or not flags & FXF_WRITE)
    before, after = p_read(5, b"nohandle", 0, 10), packet(STAT, u32(8), sstr("/etc"))
    steps = [*HELLO, ("c", before + p_open(7, "/etc/motd", flags) + after)]
    run = drive(
        SftpTap(allow_upload=allow_upload, allow_download=allow_download), steps, cutter(data)
    )
    if writes and not allow_upload:
        refusal = TransferRefusal("upload", "/etc/motd", UPLOAD_DENIED)
    elif reads and not allow_download:
        refusal = TransferRefusal("download", "/etc/motd", DOWNLOAD_DENIED)
    else:
        assert run.to_device == client_bytes(steps)
        assert run.replies == b"" and run.events == []
        return
    assert run.to_device == HELLO[0][1] + before + after
    assert run.replies == p_status(7, FX_PERMISSION_DENIED, refusal.reason)
    assert run.events == [refusal]


MUTATIONS = [
    (packet(REMOVE, u32(3), sstr("/a")), TransferRefusal("remove", "/a", UPLOAD_DENIED)),
    (packet(MKDIR, u32(3), sstr("/d"), u32(0)), TransferRefusal("mkdir", "/d", UPLOAD_DENIED)),
    (
        packet(SETSTAT, u32(3), sstr("/a"), u32(4), u32(0o777)),
        TransferRefusal("setstat", "/a", UPLOAD_DENIED),
    ),
    (
        packet(RENAME, u32(3), sstr("/a"), sstr("/b")),
        TransferRefusal("rename", "/a -> /b", UPLOAD_DENIED),
    ),
    (
        packet(EXTENDED, u32(3), sstr("posix-rename@openssh.com"), sstr("/a"), sstr("/b")),
        TransferRefusal("posix-rename@openssh.com", "/a -> /b", UPLOAD_DENIED),
    ),
    (
        packet(EXTENDED, u32(3), sstr("vendor-magic@example.com")),
        TransferRefusal("vendor-magic@example.com", "", UPLOAD_DENIED),
    ),
    (packet(REMOVE, u32(3)), TransferRefusal("remove", "", "sallyport: malformed request refused")),
]


@pytest.mark.parametrize(("request_bytes", "refusal"), MUTATIONS)
def test_download_only_grant_refuses_changes(
    request_bytes: bytes, refusal: TransferRefusal
) -> None:
    run = drive(SftpTap(allow_upload=False, allow_download=True), [*HELLO, ("c", request_bytes)])
    assert run.to_device == HELLO[0][1]
    assert run.replies == p_status(3, FX_PERMISSION_DENIED, refusal.reason)
    assert run.events == [refusal]
    run = drive(SftpTap(allow_upload=True, allow_download=False), [*HELLO, ("c", request_bytes)])
    assert run.to_device == HELLO[0][1] + request_bytes and run.events == []


@pytest.mark.parametrize("body", [b"", b"\0\0\0\3", u32(3) + u32(9), u32(3) + sstr("/x")])
def test_malformed_open_is_refused_under_any_grant(body: bytes) -> None:
    run = drive(SftpTap(allow_upload=True, allow_download=True), [("c", packet(OPEN, body))])
    rid = 3 if body else 0
    assert run.to_device == b""
    assert run.replies == p_status(
        rid, FX_PERMISSION_DENIED, "sallyport: malformed request refused"
    )
    assert run.events == [TransferRefusal("open", "", "sallyport: malformed request refused")]


def test_read_only_requests_pass_a_download_only_grant() -> None:
    reqs = [
        packet(EXTENDED, u32(3), sstr("statvfs@openssh.com"), sstr("/")),
        packet(OPENDIR, u32(4), sstr("/")),
        packet(STAT, u32(5), sstr("/etc")),
        packet(77, b"unknown type passes"),
    ]
    run = drive(SftpTap(allow_upload=False, allow_download=True), [*HELLO, ("c", b"".join(reqs))])
    assert run.to_device == HELLO[0][1] + b"".join(reqs)
    assert run.replies == b"" and run.events == []


def test_reorder_buffer_bound_keeps_the_in_order_prefix() -> None:
    content = os.urandom(10_000)
    order = [0, 1, 9, 8, 7, 6, 2, 3, 4, 5, 10, 11]  # 9, 8, 7 fill 3000 bytes; 6 overflows
    steps = download(content, 1000, order)
    run = drive(SftpTap(allow_upload=False, allow_download=True, max_buffer=3000), steps)
    assert run.events == [
        FileTransfer("/data/log.bin", "download", 2000, sha(content[:2000]), False)
    ]
    assert run.to_vendor == server_bytes(steps)  # the stream itself is untouched


def test_gap_and_resume_are_incomplete() -> None:
    content = os.urandom(3000)
    steps = download(content, 1000)
    steps[5] = (
        "s",
        p_data(100, content[:1000])
        + p_status(101, 4, "io")
        + p_data(102, content[2000:])
        + p_status(103, FX_EOF),
    )
    ev = drive(SftpTap(allow_upload=True, allow_download=True), steps).events
    assert ev == [FileTransfer("/data/log.bin", "download", 1000, sha(content[:1000]), False)]
    ev = drive(
        SftpTap(allow_upload=True, allow_download=True), download(content, 1000, start=1000)
    ).events
    assert ev == [FileTransfer("/data/log.bin", "download", 2000, sha(content[1000:]), False)]


def test_overlapping_and_duplicate_replies_are_incomplete() -> None:
    content = os.urandom(1500)
    steps = [*HELLO, ("c", p_open(1, "/f", FXF_READ)), ("s", p_handle(1, b"h"))]
    steps += [("c", p_read(2, b"h", 0, 1000) + p_read(3, b"h", 500, 1000) + p_read(4, b"h", 0, 9))]
    steps += [("c", p_read(5, b"h", 1500, 100)), ("s", p_data(2, content[:1000]))]
    steps += [("s", p_data(3, content[500:]) + p_data(4, b"different" * 20))]
    steps += [("s", p_status(5, FX_EOF)), ("c", p_close(6, b"h")), ("s", p_status(6, FX_OK))]
    ev = drive(SftpTap(allow_upload=True, allow_download=True), steps).events
    assert ev == [FileTransfer("/f", "download", 1500, sha(content), False)]


def test_duplicate_buffered_reply_keeps_the_first_copy() -> None:
    content = os.urandom(2000)
    steps = [*HELLO, ("c", p_open(1, "/f", FXF_READ)), ("s", p_handle(1, b"h"))]
    reads = [p_read(2, b"h", 0, 1000), p_read(3, b"h", 1000, 1000), p_read(4, b"h", 1000, 1000)]
    steps += [("c", b"".join(reads) + p_read(5, b"h", 2000, 1000))]
    steps += [("s", p_data(3, content[1000:]) + p_data(4, b"x" * 1000) + p_data(2, content[:1000]))]
    steps += [("s", p_status(5, FX_EOF)), ("c", p_close(6, b"h")), ("s", p_status(6, FX_OK))]
    ev = drive(SftpTap(allow_upload=True, allow_download=True), steps).events
    assert ev == [FileTransfer("/f", "download", 2000, sha(content), False)]


def test_fstat_size_completes_a_download_without_eof() -> None:
    content = b"x" * 1500
    steps = [*HELLO, ("c", p_open(1, "/f", FXF_READ)), ("s", p_handle(1, b"h"))]
    steps += [
        ("c", packet(FSTAT, u32(2), sstr(b"h"))),
        ("s", packet(ATTRS, u32(2), u32(1), u64(1500))),
    ]
    steps += [("c", p_read(3, b"h", 0, 1500)), ("s", p_data(3, content))]
    steps += [("c", p_close(4, b"h")), ("s", p_status(4, FX_OK))]
    ev = drive(SftpTap(allow_upload=False, allow_download=True), steps).events
    assert ev == [FileTransfer("/f", "download", 1500, sha(content), True)]


def test_empty_files_open_without_activity_and_unclosed_files() -> None:
    steps = [*HELLO, ("c", p_open(1, "/empty", WRITE_FLAGS)), ("s", p_handle(1, b"a"))]
    steps += [("c", p_close(2, b"a")), ("s", p_status(2, FX_OK))]
    steps += [("c", p_open(3, "/nothing", FXF_READ)), ("s", p_handle(3, b"a"))]  # handle reused
    steps += [("c", p_close(4, b"a")), ("s", p_status(4, FX_OK))]
    steps += [("c", p_open(5, "/rw", FXF_READ | FXF_WRITE)), ("s", p_handle(5, b"b"))]
    steps += [("c", p_write(6, b"b", 0, b"abc")), ("s", p_status(6, FX_OK))]
    steps += [("c", p_read(7, b"b", 0, 10)), ("s", p_data(7, b"abc"))]
    steps += [("c", p_open(8, "/open", WRITE_FLAGS)), ("s", p_handle(8, b"c"))]
    steps += [("c", p_write(9, b"c", 0, b"partial"))]  # no reply, no close
    tap = SftpTap(allow_upload=True, allow_download=True)
    assert drive(tap, steps).events == [FileTransfer("/empty", "upload", 0, sha(b""), True)]
    assert sorted(tap.close(), key=str) == sorted(
        [
            FileTransfer("/rw", "upload", 3, sha(b"abc"), False),
            FileTransfer("/rw", "download", 3, sha(b"abc"), False),
            FileTransfer("/open", "upload", 7, sha(b"partial"), False),
        ],
        key=str,
    )
    assert tap.from_client(p_open(1, "/x", FXF_READ)) == (b"", b"")  # closed


def test_failed_write_makes_upload_incomplete() -> None:
    steps = [*HELLO, ("c", p_open(1, "/f", WRITE_FLAGS)), ("s", p_handle(1, b"w"))]
    steps += [("c", p_write(2, b"w", 0, b"abc")), ("s", p_status(2, 4, "disk full"))]
    steps += [("c", p_close(3, b"w")), ("s", p_status(3, FX_OK))]
    ev = drive(SftpTap(allow_upload=True, allow_download=True), steps).events
    assert ev == [FileTransfer("/f", "upload", 3, sha(b"abc"), False)]


def test_oversized_length_fails_closed_without_buffering() -> None:
    tap = SftpTap(allow_upload=True, allow_download=True)
    fwd, _ = tap.from_client(HELLO[0][1] + u32(0xFFFFFFF0) + b"\x06")
    assert fwd == HELLO[0][1]
    assert tap.desync is not None
    assert tap.events() == [TransferRefusal("tap-desync", "", tap.desync)]
    assert tap.from_client(b"\0" * 100_000) == (b"", b"")


def test_wrong_version_fails_closed() -> None:
    tap = SftpTap(allow_upload=True, allow_download=True)
    assert tap.from_server(packet(VERSION, u32(6))) == packet(VERSION, u32(6))
    assert tap.desync == "sallyport: unsupported SFTP version 6"
    assert tap.from_client(p_open(1, "/x", FXF_READ)) == (b"", b"")


@settings(max_examples=300, deadline=None)
@given(
    client=st.lists(st.binary(max_size=300), max_size=8),
    server=st.lists(st.binary(max_size=300), max_size=8),
    allow=st.tuples(st.booleans(), st.booleans()),
)
def test_garbage_never_raises(
    client: list[bytes], server: list[bytes], allow: tuple[bool, bool]
) -> None:
    tap = SftpTap(allow_upload=allow[0], allow_download=allow[1], max_packet=4096)
    for c, s in zip(client, server, strict=False):
        fwd, reply = tap.from_client(c)
        assert isinstance(fwd, bytes) and isinstance(reply, bytes) and len(fwd) <= len(c) + 4096
        assert tap.from_server(s) == s
    for ev in tap.events() + tap.close():
        assert isinstance(ev, FileTransfer | TransferRefusal)


HELD = {OPEN, SETSTAT, FSETSTAT, REMOVE, MKDIR, RMDIR, RENAME, SYMLINK}


@settings(max_examples=200, deadline=None)
@given(
    body=st.lists(
        st.tuples(st.integers(0, 255).filter(lambda t: t != EXTENDED), st.binary(max_size=40)),
        max_size=12,
    ),
    data=st.data(),
)
def test_wellframed_random_packets(body: list[tuple[int, bytes]], data: st.DataObject) -> None:
    """Any type, any payload: nothing raises, requests that might change the device or
    download are refused (here: all of them), everything else passes in order."""
    raw = [packet(t, payload) for t, payload in body]
    tap = SftpTap(allow_upload=False, allow_download=False)
    run = drive(tap, [("c", b"".join(raw))], cutter(data))
    assert run.to_device == b"".join(
        p for (t, _), p in zip(body, raw, strict=True) if t not in HELD
    )
    assert len(run.events) == sum(t in HELD for t, _ in body)
    assert all(isinstance(e, TransferRefusal) for e in run.events)


# -- end to end with real OpenSSH --------------------------------------------------------------


@dataclass
class Relay:
    """asyncssh server on 127.0.0.1 that relays sftp/scp channels through the taps."""

    port: int
    upstream: asyncssh.SSHClientConnection
    allow_upload: bool
    allow_download: bool
    tasks: TaskSet = field(default_factory=TaskSet)
    events: list[TapEvent] = field(default_factory=list)
    finished: list[asyncio.Event] = field(default_factory=list)

    async def settled(self, sessions: int) -> list[TapEvent]:
        """Wait for *sessions* channels to end; drain their events."""
        for _ in range(300):
            if len(self.finished) >= sessions and all(e.is_set() for e in self.finished):
                break
            await asyncio.sleep(0.02)
        events, self.events = self.events, []
        return events


class RelaySession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.done = asyncio.Event()
        relay.finished.append(self.done)
        self.tap: SftpTap | ScpTap | None = None
        self.request: dict[str, str] = {}
        self.up: asyncssh.SSHClientChannel[bytes] | None = None
        self.pending: list[bytes | None] = []  # None: EOF

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        self.request = {"subsystem": subsystem}
        self.tap = SftpTap(
            allow_upload=self.relay.allow_upload, allow_download=self.relay.allow_download
        )
        return subsystem == "sftp"

    def exec_requested(self, command: str) -> bool:
        self.request = {"command": command}
        try:
            self.tap = ScpTap(
                command,
                allow_upload=self.relay.allow_upload,
                allow_download=self.relay.allow_download,
            )
        except ValueError:
            return False
        return True

    def session_started(self) -> None:
        if isinstance(self.tap, ScpTap) and self.tap.refusal is not None:
            self.chan.write(self.tap.refusal_bytes)
            self.chan.exit(1)
            return
        self.relay.tasks.spawn(self._open_upstream())

    async def _open_upstream(self) -> None:
        self.up, _ = await self.relay.upstream.create_session(
            lambda: DeviceSide(self),
            encoding=None,
            **self.request,  # type: ignore[arg-type]
        )
        for item in self.pending:
            self._to_device(item)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.up is None:
            self.pending.append(data)
        else:
            self._to_device(data)

    def eof_received(self) -> bool:
        if self.up is None:
            self.pending.append(None)
        else:
            self._to_device(None)
        return True

    def _to_device(self, data: bytes | None) -> None:
        assert self.up is not None and self.tap is not None
        if data is None:
            self.up.write_eof()
            return
        if isinstance(self.tap, SftpTap):
            data, reply = self.tap.from_client(data)
            if reply:
                self.chan.write(reply)
        else:
            data = self.tap.from_client(data)
        self.up.write(data)
        self.relay.events += self.tap.events()

    def from_device(self, data: bytes) -> None:
        assert self.tap is not None
        self.chan.write(self.tap.from_server(data))
        self.relay.events += self.tap.events()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()
        if self.tap is not None:
            self.relay.events += self.tap.close()
        self.done.set()


class DeviceSide(asyncssh.SSHClientSession[bytes]):
    def __init__(self, vendor: RelaySession) -> None:
        self.vendor = vendor

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.vendor.chan.write_stderr(data)
        else:
            self.vendor.from_device(data)

    def eof_received(self) -> bool:
        self.vendor.chan.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        status = self.chan.get_exit_status()
        self.vendor.chan.exit(status if status is not None and status >= 0 else 255)


class RelayServer(asyncssh.SSHServer):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "vendor"

    def session_requested(self) -> RelaySession:
        return RelaySession(self.relay)


@contextlib.asynccontextmanager
async def run_relay(
    device: SshdDevice, *, allow_upload: bool, allow_download: bool
) -> AsyncIterator[Relay]:
    upstream = await asyncssh.connect(
        device.host,
        device.port,
        username=device.username,
        password=device.password,
        known_hosts=([asyncssh.import_public_key(device.host_public_key)], [], []),
        config=None,
        client_keys=None,
        agent_path=None,
        preferred_auth="password",
    )
    relay = Relay(0, upstream, allow_upload, allow_download)
    server = await asyncssh.create_server(
        lambda: RelayServer(relay),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encoding=None,
        line_editor=False,
    )
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        server.close()
        await server.wait_closed()
        await relay.tasks.cancel_all()
        upstream.close()
        await upstream.wait_closed()


CLIENT_OPTS = [
    "-F", "/dev/null",
    "-o", "BatchMode=no",  # before sftp's own -b implied "batchmode yes": the first one wins
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "PubkeyAuthentication=no",
    "-o", "PreferredAuthentications=password",
    "-o", "NumberOfPasswordPrompts=1",
]  # fmt: skip


@dataclass
class Client:
    returncode: int
    stdout: str
    stderr: str


async def openssh(argv: list[str], workdir: Path, timeout: float = 120) -> Client:
    """Run sftp/scp with the relay's password answered through askpass."""
    askpass = make_askpass(workdir, password="any password")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=client_env(askpass.env),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Client(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def sftp(relay: Relay, workdir: Path, *commands: str) -> Client:
    batch = workdir / f"batch-{uuid.uuid4().hex[:8]}"
    batch.write_text("".join(c + "\n" for c in commands))
    argv = ["/usr/bin/sftp", *CLIENT_OPTS, "-b", str(batch), "-P", str(relay.port)]
    return await openssh([*argv, "vendor@127.0.0.1"], workdir)


async def scp(relay: Relay, workdir: Path, *args: str) -> Client:
    return await openssh(["/usr/bin/scp", *CLIENT_OPTS, "-P", str(relay.port), *args], workdir)


@contextlib.contextmanager
def device_directory(device: SshdDevice) -> Iterator[Path]:
    """A fresh directory in the device user's home, owned by that user."""
    account = pwd.getpwnam(device.username)
    path = Path(account.pw_dir) / f"tap-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    os.chown(path, account.pw_uid, account.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def device_dir(sshd_device: SshdDevice) -> Iterator[Path]:
    with device_directory(sshd_device) as path:
        yield path


def remote(path: Path) -> str:
    return f"vendor@127.0.0.1:{path}"


@pytest.mark.integration
async def test_sftp_put_and_get_20mb(
    sshd_device: SshdDevice, device_dir: Path, tmp_path: Path
) -> None:
    content = os.urandom(20 * 2**20 + 12345)
    local, back = tmp_path / "fw.bin", tmp_path / "back.bin"
    local.write_bytes(content)
    async with run_relay(sshd_device, allow_upload=True, allow_download=True) as relay:
        put = await sftp(relay, tmp_path, f"put {local} {device_dir}/fw.bin")
        assert put.returncode == 0, put.stderr
        assert (device_dir / "fw.bin").read_bytes() == content
        get = await sftp(relay, tmp_path, f"get {device_dir}/fw.bin {back}")
        assert get.returncode == 0, get.stderr
        assert back.read_bytes() == content
        events = await relay.settled(2)
    path = f"{device_dir}/fw.bin"
    assert events == [
        FileTransfer(path, "upload", len(content), sha(content), True),
        FileTransfer(path, "download", len(content), sha(content), True),
    ]


@pytest.mark.integration
async def test_sftp_download_only_grant_refuses_put(
    sshd_device: SshdDevice, device_dir: Path, tmp_path: Path
) -> None:
    local = tmp_path / "evil.bin"
    local.write_bytes(b"new firmware")
    (device_dir / "log.txt").write_bytes(b"device log\n")
    async with run_relay(sshd_device, allow_upload=False, allow_download=True) as relay:
        res = await sftp(
            relay,
            tmp_path,
            f"-put {local} {device_dir}/evil.bin",
            f"-mkdir {device_dir}/newdir",
            f"-rm {device_dir}/log.txt",
            f"get {device_dir}/log.txt {tmp_path}/log.txt",
        )
        events = await relay.settled(1)
    assert res.returncode == 0, res.stderr
    assert f'dest open "{device_dir}/evil.bin": Permission denied' in res.stderr
    assert f'remote mkdir "{device_dir}/newdir": Permission denied' in res.stderr
    assert not (device_dir / "evil.bin").exists() and not (device_dir / "newdir").exists()
    assert (device_dir / "log.txt").exists() and (
        tmp_path / "log.txt"
    ).read_bytes() == b"device log\n"
    assert events == [
        TransferRefusal("upload", f"{device_dir}/evil.bin", UPLOAD_DENIED),
        TransferRefusal("mkdir", f"{device_dir}/newdir", UPLOAD_DENIED),
        TransferRefusal("remove", f"{device_dir}/log.txt", UPLOAD_DENIED),
        FileTransfer(f"{device_dir}/log.txt", "download", 11, sha(b"device log\n"), True),
    ]


@pytest.mark.integration
async def test_sftp_upload_only_grant_refuses_get(
    sshd_device: SshdDevice, device_dir: Path, tmp_path: Path
) -> None:
    (device_dir / "secret.txt").write_bytes(b"patient data")
    (tmp_path / "patch.bin").write_bytes(b"patch")
    async with run_relay(sshd_device, allow_upload=True, allow_download=False) as relay:
        res = await sftp(
            relay,
            tmp_path,
            f"put {tmp_path}/patch.bin {device_dir}/patch.bin",
            f"get {device_dir}/secret.txt {tmp_path}/s.txt",
        )
        events = await relay.settled(1)
    assert res.returncode != 0
    assert f'remote open "{device_dir}/secret.txt": Permission denied' in res.stderr
    assert not (tmp_path / "s.txt").exists()
    assert (device_dir / "patch.bin").read_bytes() == b"patch"
    assert events == [
        FileTransfer(f"{device_dir}/patch.bin", "upload", 5, sha(b"patch"), True),
        TransferRefusal("download", f"{device_dir}/secret.txt", DOWNLOAD_DENIED),
    ]


@pytest.mark.integration
async def test_default_scp_uses_sftp_through_the_tap(
    sshd_device: SshdDevice, device_dir: Path, tmp_path: Path
) -> None:
    content = os.urandom(3 * 2**20 + 7)
    local = tmp_path / "cfg.tar"
    local.write_bytes(content)
    async with run_relay(sshd_device, allow_upload=True, allow_download=True) as relay:
        up = await scp(relay, tmp_path, str(local), remote(device_dir / "cfg.tar"))
        assert up.returncode == 0, up.stderr
        down = await scp(relay, tmp_path, remote(device_dir / "cfg.tar"), f"{tmp_path}/c2")
        assert down.returncode == 0, down.stderr
        events = await relay.settled(2)
    assert (device_dir / "cfg.tar").read_bytes() == content == (tmp_path / "c2").read_bytes()
    path = f"{device_dir}/cfg.tar"
    assert events == [
        FileTransfer(path, "upload", len(content), sha(content), True),
        FileTransfer(path, "download", len(content), sha(content), True),
    ]
