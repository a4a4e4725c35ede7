"""Passive SFTP v3 tap: audit every file a vendor transfers; enforce the grant's direction.

The relay feeds :class:`SftpTap` both byte streams of an ``sftp`` subsystem channel
(version 3, draft-ietf-secsh-filexfer-02, as OpenSSH speaks it). The tap does no I/O.

Forwarding: client bytes go on as they arrive, except each packet's 5-byte header (held
until complete) and whole packets the grant might refuse: ``OPEN``, plus ``SETSTAT``,
``FSETSTAT``, ``REMOVE``, ``MKDIR``, ``RMDIR``, ``RENAME``, ``SYMLINK`` and ``EXTENDED``
when uploads are not allowed. Order is kept; unknown types pass. Server bytes pass as is.

Refusals: without upload permission, ``OPEN`` with WRITE, APPEND, CREAT, TRUNC or EXCL,
every request above that changes the device, and every ``EXTENDED`` request except the
read-only :data:`READ_ONLY_EXTENSIONS` (unknown ones fail closed); without download
permission, ``OPEN`` for reading (READ set, or WRITE unset: the server opens read-only).
Listings, ``STAT``, ``READLINK`` stay allowed. A refused (or unparseable, refusable)
request is not forwarded: the vendor gets ``SSH_FX_PERMISSION_DENIED`` with the reason as
message, and a :class:`TransferRefusal` is queued.

Transfers: per handle, written bytes (``WRITE``) and read bytes (``DATA`` replies matched
to ``READ`` ids) are hashed in offset order from the first requested offset; out-of-order
replies wait in a reorder buffer shared by the channel and bounded by *max_buffer*. The
``CLOSE`` reply emits a :class:`FileTransfer` per direction used (read and written: two).
``size`` counts the contiguous bytes hashed, so a ``reget``/``reput`` reports only the
resumed tail (and is incomplete). A handle neither read nor written emits nothing, except
that a truncating or exclusive-create open is an upload of 0 bytes. ``complete`` means:
hashed from offset 0 with no gap, overlap, buffer overflow or error status, and for an
upload every ``WRITE`` and the ``CLOSE`` answered OK; for a download a ``READ`` at the
end got ``SSH_FX_EOF`` (as OpenSSH ``get``/``scp`` do) or an ``FSTAT`` gave that size.
When overflow or a gap stops in-order hashing, ``size``/``sha256`` cover the in-order part.

Desync: a packet length of 0 or over *max_packet*, a server ``VERSION`` other than 3, or
over :data:`MAX_TRACKED` outstanding requests means the tap cannot follow. It fails
closed: :attr:`SftpTap.desync` is set, a ``TransferRefusal("tap-desync", ...)`` is queued
and nothing more from the vendor is forwarded (the relay should end the channel). Memory
is bounded by *max_packet* per direction plus *max_buffer*. Paths are decoded as UTF-8,
other bytes backslash-escaped.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = range(1, 11)
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = range(11, 21)
STATUS, HANDLE, DATA, NAME, ATTRS = range(101, 106)
EXTENDED, EXTENDED_REPLY = 200, 201

FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20
FX_OK, FX_EOF, FX_PERMISSION_DENIED = 0, 1, 3
ATTR_SIZE = 0x1
_CREATE_NEW = FXF_CREAT | FXF_EXCL
_WRITE_FLAGS = FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC | FXF_EXCL

UPLOAD_DENIED = "sallyport: upload not allowed by this grant"
DOWNLOAD_DENIED = "sallyport: download not allowed by this grant"
MALFORMED = "sallyport: malformed request refused"
MAX_TRACKED = 65536

_MUTATING = {SETSTAT: "setstat", FSETSTAT: "fsetstat", REMOVE: "remove", MKDIR: "mkdir"}
_MUTATING |= {RMDIR: "rmdir", RENAME: "rename", SYMLINK: "symlink"}
READ_ONLY_EXTENSIONS = frozenset(
    b"statvfs@openssh.com fstatvfs@openssh.com limits@openssh.com expand-path@openssh.com "
    b"home-directory users-groups-by-id@openssh.com fsync@openssh.com".split()
)
_REPLIES = (STATUS, HANDLE, DATA, ATTRS)
_TWO_PATHS = frozenset({RENAME, SYMLINK})
_TWO_PATH_EXTENSIONS = frozenset({b"posix-rename@openssh.com", b"hardlink@openssh.com"})


@dataclass(frozen=True)
class FileTransfer:
    path: str
    direction: Literal["upload", "download"]
    size: int
    sha256: str
    complete: bool


@dataclass(frozen=True)
class TransferRefusal:
    operation: str
    path: str
    reason: str


TapEvent = FileTransfer | TransferRefusal


class _Malformed(ValueError):
    pass


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body, self.pos = body, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise _Malformed("truncated packet")
        self.pos += n
        return self.body[self.pos - n : self.pos]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def string(self) -> bytes:
        return self.take(self.u32())


def decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _status_packet(request_id: int, code: int, message: str) -> bytes:
    msg = message.encode()
    body = struct.pack(">BII", STATUS, request_id, code)
    body += struct.pack(">I", len(msg)) + msg + struct.pack(">I", 0)
    return struct.pack(">I", len(body)) + body


_Packet = tuple[int, bytes, bytes, bool]  # type, header, body, held (not passed on yet)


class _Framer:
    """Splits one direction into SFTP packets, holding back only what it must.

    :meth:`feed` yields ``bytes`` that may be passed on now and a :data:`_Packet` for each
    complete captured or held packet. On an impossible length it sets :attr:`dead`.
    """

    def __init__(
        self, max_packet: int, capture: frozenset[int], hold: frozenset[int], passing: bool
    ) -> None:
        self.max_packet, self.capture, self.hold = max_packet, capture | hold, hold
        self.passing = passing  # False: yield packets only
        self.buf = bytearray()
        self.header = b""
        self.ptype = -1  # -1 while reading a header
        self.left = 0
        self.dead: str | None = None

    def feed(self, data: bytes) -> Iterator[bytes | _Packet]:
        view, pos = memoryview(data), 0
        while pos < len(data) and self.dead is None:
            if self.ptype < 0:
                take = min(5 - len(self.buf), len(data) - pos)
                self.buf += view[pos : pos + take]
                pos += take
                if len(self.buf) < 5:
                    return
                length, ptype = struct.unpack(">IB", self.buf)
                self.header = bytes(self.buf)
                self.buf.clear()
                if length < 1 or length > self.max_packet:
                    self.dead = f"sallyport: SFTP packet length {length} out of bounds"
                    return
                self.ptype, self.left = ptype, length - 1
                if self.passing and ptype not in self.hold:
                    yield self.header
            else:
                take = min(self.left, len(data) - pos)
                chunk = view[pos : pos + take]
                pos, self.left = pos + take, self.left - take
                if self.passing and self.ptype not in self.hold:
                    yield bytes(chunk)
                if self.ptype in self.capture:
                    self.buf += chunk
            if self.ptype >= 0 and self.left == 0:
                ptype, self.ptype = self.ptype, -1
                if ptype in self.capture:
                    body = bytes(self.buf)
                    self.buf.clear()
                    yield ptype, self.header, body, ptype in self.hold


class _Stream:
    """One direction of one open file: bytes hashed in offset order."""

    def __init__(self, start: int) -> None:
        self.start = self.end = start
        self.sha = hashlib.sha256()
        self.pending: dict[int, bytes] = {}
        self.irregular = False  # overlap, duplicate, overflow or error reply
        self.stopped = False  # the reorder buffer overflowed

    def regular(self) -> bool:
        return self.start == 0 and not self.irregular and not self.pending


class _File:
    def __init__(self, path: str, flags: int) -> None:
        self.path, self.flags = path, flags
        self.write: _Stream | None = None
        self.read: _Stream | None = None
        self.writes_unacked = 0
        self.eof_at: int | None = None
        self.size_hint: int | None = None


class SftpTap:
    """Stateful SFTP v3 tap for one channel; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        allow_upload: bool,
        allow_download: bool,
        max_buffer: int = 8 * 2**20,
        max_packet: int = 2**20,
    ) -> None:
        self.allow_upload, self.allow_download = allow_upload, allow_download
        self.max_buffer = max_buffer
        self.desync: str | None = None
        hold = {OPEN} | (set() if allow_upload else {*_MUTATING, EXTENDED})
        requests, replies = frozenset({READ, WRITE, CLOSE, FSTAT}), frozenset({VERSION, *_REPLIES})
        self._client = _Framer(max_packet, requests, frozenset(hold), passing=True)
        self._server = _Framer(max_packet, replies, frozenset(), passing=False)
        self._events: list[TapEvent] = []
        self._requests: dict[int, tuple[int, _File, int]] = {}  # id -> (type, file, offset)
        self._handles: dict[bytes, _File] = {}
        self._live: dict[int, _File] = {}
        self._buffered = 0
        self._closed = False

    # -- the relay's interface -------------------------------------------------------

    def from_client(self, data: bytes) -> tuple[bytes, bytes]:
        """(bytes to forward to the device, bytes to send back to the vendor now)."""
        out, reply = bytearray(), bytearray()
        if self.desync is not None or self._closed:
            return b"", b""
        for item in self._client.feed(data):
            if isinstance(item, bytes):
                out += item
                continue
            ptype, header, body, held = item
            refusal = self._on_request(ptype, body)
            if refusal is not None:
                reply += refusal
            elif held:
                out += header + body
            if self.desync is not None:
                break
        if self._client.dead is not None:
            self._fail(self._client.dead)
        return bytes(out), bytes(reply)

    def from_server(self, data: bytes) -> bytes:
        """Bytes to forward to the vendor: always *data* unchanged."""
        if self.desync is None and not self._closed:
            for item in self._server.feed(data):
                assert not isinstance(item, bytes)
                self._on_reply(item[0], item[2])
                if self.desync is not None:
                    break
            if self._server.dead is not None:
                self._fail(self._server.dead)
        return data

    def events(self) -> list[TapEvent]:
        """Drain the queued events."""
        events, self._events = self._events, []
        return events

    def close(self) -> list[TapEvent]:
        """End of channel: files still open become ``complete=False`` events; drain."""
        for file in list(self._live.values()):
            self._finish(file, closed_ok=False)
        self._handles.clear()
        self._requests.clear()
        self._closed = True
        return self.events()

    # -- client requests ---------------------------------------------------------------

    def _on_request(self, ptype: int, body: bytes) -> bytes | None:
        reader = _Reader(body)
        try:
            request_id = reader.u32()
            if ptype == OPEN:
                return self._on_open(request_id, reader)
            if ptype in (READ, WRITE, CLOSE, FSTAT):
                self._on_handle_request(ptype, request_id, reader)
                return None
            return self._check_mutation(ptype, request_id, reader)
        except _Malformed:
            if ptype in (READ, WRITE, CLOSE, FSTAT):
                return None  # not a policy decision: the server answers it
            request_id = int.from_bytes(body[:4], "big") if len(body) >= 4 else 0
            operation = {OPEN: "open", EXTENDED: "extended"}.get(ptype) or _MUTATING[ptype]
            return self._refuse(request_id, operation, "", MALFORMED)

    def _on_open(self, request_id: int, reader: _Reader) -> bytes | None:
        path, flags = decode_path(reader.string()), reader.u32()
        if flags & _WRITE_FLAGS and not self.allow_upload:
            return self._refuse(request_id, "upload", path, UPLOAD_DENIED)
        if (flags & FXF_READ or not flags & FXF_WRITE) and not self.allow_download:
            return self._refuse(request_id, "download", path, DOWNLOAD_DENIED)
        self._track(request_id, (OPEN, _File(path, flags), 0))
        return None

    def _on_handle_request(self, ptype: int, request_id: int, reader: _Reader) -> None:
        handle = reader.string()
        file = self._handles.get(handle)
        if file is None:
            return
        if ptype == CLOSE:  # forget the handle now: the server may reuse it
            del self._handles[handle]
            self._track(request_id, (CLOSE, file, 0))
        elif ptype == FSTAT:
            self._track(request_id, (FSTAT, file, 0))
        elif ptype == READ:
            offset = reader.u64()
            if file.read is None:
                file.read = _Stream(offset)
            self._track(request_id, (READ, file, offset))
        else:
            offset, data = reader.u64(), reader.string()
            if file.write is None:
                file.write = _Stream(offset)
            file.writes_unacked += 1
            self._feed(file.write, offset, data)
            self._track(request_id, (WRITE, file, offset))

    def _check_mutation(self, ptype: int, request_id: int, reader: _Reader) -> bytes | None:
        if ptype == EXTENDED:
            name = reader.string()
            if name in READ_ONLY_EXTENSIONS:
                return None
            operation, two = decode_path(name), name in _TWO_PATH_EXTENSIONS
            path = self._paths(reader, two) if two or name == b"lsetstat@openssh.com" else ""
        elif ptype == FSETSTAT:
            file = self._handles.get(reader.string())
            operation, path = "fsetstat", file.path if file else ""
        else:
            operation, path = _MUTATING[ptype], self._paths(reader, ptype in _TWO_PATHS)
        return self._refuse(request_id, operation, path, UPLOAD_DENIED)

    @staticmethod
    def _paths(reader: _Reader, two: bool) -> str:
        first = decode_path(reader.string())
        return f"{first} -> {decode_path(reader.string())}" if two else first

    def _refuse(self, request_id: int, operation: str, path: str, reason: str) -> bytes:
        self._events.append(TransferRefusal(operation, path, reason))
        return _status_packet(request_id, FX_PERMISSION_DENIED, reason)

    def _track(self, request_id: int, entry: tuple[int, _File, int]) -> None:
        self._requests[request_id] = entry
        if len(self._requests) + len(self._handles) > MAX_TRACKED:
            self._fail(f"sallyport: more than {MAX_TRACKED} outstanding SFTP requests")

    # -- server replies ----------------------------------------------------------------

    def _on_reply(self, ptype: int, body: bytes) -> None:
        reader = _Reader(body)
        try:
            if ptype == VERSION:
                if (version := reader.u32()) != 3:
                    self._fail(f"sallyport: unsupported SFTP version {version}")
                return
            entry = self._requests.pop(reader.u32(), None)
            if entry is None:
                return
            kind, file, offset = entry
            code = reader.u32() if ptype == STATUS else None
            if kind == OPEN:
                if ptype == HANDLE:
                    self._handles[reader.string()] = file
                    self._live[id(file)] = file
            elif kind == CLOSE:
                self._finish(file, closed_ok=code == FX_OK)
            elif kind == WRITE:
                file.writes_unacked -= 1
                if code != FX_OK and file.write is not None:
                    file.write.irregular = True
            elif kind == READ and file.read is not None:
                if ptype == DATA:
                    self._feed(file.read, offset, reader.string())
                elif code == FX_EOF:
                    file.eof_at = offset if file.eof_at is None else min(file.eof_at, offset)
                else:
                    file.read.irregular = True
            elif kind == FSTAT and ptype == ATTRS and reader.u32() & ATTR_SIZE:
                file.size_hint = reader.u64()
        except _Malformed:
            return

    # -- hashing -------------------------------------------------------------------------

    def _feed(self, s: _Stream, offset: int, data: bytes) -> None:
        if s.stopped:
            return
        if offset < s.end:  # overlaps bytes already hashed: the first copy wins
            s.irregular = True
            data, offset = data[s.end - offset :], s.end
        if not data:
            return
        if offset == s.end:
            s.sha.update(data)
            s.end += len(data)
            while s.end in s.pending:
                chunk = s.pending.pop(s.end)
                self._buffered -= len(chunk)
                s.sha.update(chunk)
                s.end += len(chunk)
        elif offset in s.pending:
            s.irregular = True  # a second reply for the same offset: the first copy wins
        elif self._buffered + len(data) > self.max_buffer:
            s.irregular = s.stopped = True  # reorder buffer full: hash no further
            self._release(s)
        else:
            s.pending[offset] = data
            self._buffered += len(data)

    def _release(self, s: _Stream) -> None:
        self._buffered -= sum(len(c) for c in s.pending.values())
        s.pending.clear()

    def _finish(self, file: _File, *, closed_ok: bool) -> None:
        self._live.pop(id(file), None)
        w, r = file.write, file.read
        emptied = file.flags & FXF_TRUNC or file.flags & _CREATE_NEW == _CREATE_NEW
        if w is None and emptied:
            w = _Stream(0)  # truncated or newly created, never written: 0 bytes uploaded
        if w is not None:
            done = closed_ok and w.regular() and file.writes_unacked == 0
            self._emit(file, "upload", w, done)
        if r is not None:
            at_end = r.end in (file.eof_at, file.size_hint)
            self._emit(file, "download", r, r.regular() and at_end)

    def _emit(
        self, file: _File, direction: Literal["upload", "download"], s: _Stream, done: bool
    ) -> None:
        self._release(s)
        s.stopped = True  # late replies (after CLOSE) change nothing
        size = s.end - s.start
        self._events.append(FileTransfer(file.path, direction, size, s.sha.hexdigest(), done))

    def _fail(self, reason: str) -> None:
        if self.desync is None:
            self.desync = reason
            self._events.append(TransferRefusal("tap-desync", "", reason))
