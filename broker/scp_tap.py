"""Passive tap for the legacy scp protocol (``scp -O``): audit files, enforce direction.

OpenSSH's ``scp -O`` runs ``scp [-v] [-r] [-p] [-d] -t|-f [--] PATH...`` on the device
through an exec channel. With ``-t`` the vendor is the *source* (upload), with ``-f`` the
device is (download). The source sends control lines (``C<mode> <size> <name>``,
``D<mode> 0 <name>``, ``E``, ``T<mtime> 0 <atime> 0``, and ``\\1``/``\\2`` error lines),
each file's *size* bytes followed by a status byte; the sink answers every control line
and every file with ``\\0``, or ``\\1``/``\\2`` plus a message line. The source waits for
each answer, so an answer always arrives at the tap before the bytes that depend on it.

:class:`ScpTap` parses the exec command (anything else, including shell syntax such as
``;``, ``|``, ``$`` or backquotes, raises ValueError), says up front whether the grant
refuses its direction (:attr:`ScpTap.refusal`; the relay then sends
:attr:`ScpTap.refusal_bytes` to the vendor, which OpenSSH's scp prints, and exits 1),
and passes bytes through unchanged while emitting one :class:`FileTransfer` per ``C``
record: ``size`` is the number of bytes seen, ``complete`` means all *size* bytes came,
the source's status byte was ``\\0`` and the sink acknowledged with ``\\0``. A file the
sink refuses is reported with size 0 and ``complete=False``.

Paths: for ``-f`` a top-level name is matched to the PATH argument it came from (the
device's shell may have expanded a glob); nested names are joined to their ``D``
directories. For ``-t`` the device writes TARGET/NAME when TARGET is an existing
directory and TARGET itself otherwise, which the tap cannot see: it logs TARGET when
TARGET ends in NAME and is not marked as a directory (``-d``, a trailing ``/``, ``.``),
else TARGET/NAME (so a copy to a new file name is logged as TARGET/NAME).

The refusal is also the first event. A stream the tap cannot follow (an unknown record,
an unsafe name, a line over *max_line* bytes, source bytes while the source should wait
for an answer or after a fatal ``\\2`` error) sets :attr:`ScpTap.desync`, queues a
``TransferRefusal(operation="tap-desync")`` and stops all further bytes (fail closed:
the relay should end the channel).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Literal

from broker.sftp_tap import (
    DOWNLOAD_DENIED,
    UPLOAD_DENIED,
    FileTransfer,
    TapEvent,
    TransferRefusal,
    decode_path,
)

_C_LINE = re.compile(rb"C([0-7]{4}) ([0-9]{1,19}) ([^\n]+)", re.DOTALL)
_D_LINE = re.compile(rb"D([0-7]{4}) ([0-9]{1,19}) ([^\n]+)", re.DOTALL)
_T_LINE = re.compile(rb"T[0-9]{1,20} [0-9]{1,9} [0-9]{1,20} [0-9]{1,9}")
_SHELL_SYNTAX = re.compile(r"[;&|<>()$`\n\r\x00]")
_FLAGS = frozenset("rpdvtf")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ScpCommand:
    direction: Literal["upload", "download"]  # -t: the vendor uploads; -f: downloads
    paths: tuple[str, ...]
    target_is_dir: bool  # -d


def parse_scp_command(command: str) -> ScpCommand | None:
    """The ``scp -t``/``scp -f`` command OpenSSH's ``scp -O`` sends, or None."""
    if _SHELL_SYNTAX.search(command):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] != "scp":
        return None
    flags, rest = set(), words[1:]
    while rest and rest[0].startswith("-") and rest[0] != "--" and len(rest[0]) > 1:
        if not set(rest[0][1:]) <= _FLAGS:
            return None
        flags |= set(rest.pop(0)[1:])
    if rest and rest[0] == "--":
        rest.pop(0)
    if len(flags & {"t", "f"}) != 1 or not rest or ("t" in flags and len(rest) != 1):
        return None
    return ScpCommand("upload" if "t" in flags else "download", tuple(rest), "d" in flags)


def _join(base: str, name: str) -> str:
    if not base:
        return name
    return base + name if base.endswith("/") else f"{base}/{name}"


class _File:
    def __init__(self, path: str, size: int) -> None:
        self.path, self.size, self.left = path, size, size
        self.sha = hashlib.sha256()
        self.source_ok = False


class ScpTap:
    """Stateful tap for one ``scp -t``/``scp -f`` exec channel."""

    def __init__(
        self, command: str, *, allow_upload: bool, allow_download: bool, max_line: int = 65536
    ) -> None:
        parsed = parse_scp_command(command)
        if parsed is None:
            raise ValueError("not an scp -t/-f command")
        self.command, self.direction, self.max_line = parsed, parsed.direction, max_line
        self.desync: str | None = None
        self.refusal: TransferRefusal | None = None
        if self.direction == "upload" and not allow_upload:
            self.refusal = TransferRefusal("scp-upload", parsed.paths[0], UPLOAD_DENIED)
        elif self.direction == "download" and not allow_download:
            self.refusal = TransferRefusal("scp-download", " ".join(parsed.paths), DOWNLOAD_DENIED)
        self.refusal_bytes = b"\x02" + self.refusal.reason.encode() + b"\n" if self.refusal else b""
        self._events: list[TapEvent] = [self.refusal] if self.refusal else []
        self._state = "ack"  # ack (source waits), line, data, status, status-line, done
        self._awaiting = "start"  # what the awaited answer is for
        self._line = bytearray()
        self._ack_line: bytearray | None = None  # an error answer being read
        self._file: _File | None = None
        self._dir: str | None = None  # a D record awaiting its answer
        self._dirs: list[str] = []
        self._closed = False

    # -- the relay's interface -------------------------------------------------------

    def from_client(self, data: bytes) -> bytes:
        """Vendor -> device bytes to forward (unchanged unless refused or desynced)."""
        return self._feed(data, source=self.direction == "upload")

    def from_server(self, data: bytes) -> bytes:
        """Device -> vendor bytes to forward (unchanged unless refused or desynced)."""
        return self._feed(data, source=self.direction == "download")

    def events(self) -> list[TapEvent]:
        """Drain the queued events."""
        events, self._events = self._events, []
        return events

    def close(self) -> list[TapEvent]:
        """End of channel: a file in flight becomes a ``complete=False`` event; drain."""
        self._end()
        self._closed = True
        return self.events()

    def _end(self) -> None:
        if self._file is not None:
            self._emit(complete=False)
        self._state = "done"

    # -- parsing -----------------------------------------------------------------------

    def _feed(self, data: bytes, *, source: bool) -> bytes:
        if self.refusal is not None or self.desync is not None or self._closed:
            return b""
        if source:
            self._source(data)
        elif self._state != "done":
            self._sink(data)
        return b"" if self.desync is not None else data

    def _source(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and self.desync is None:
            if self._state == "done":
                self._fail("sallyport: scp source went on after a fatal error")
            elif self._state == "data":
                assert self._file is not None
                chunk = data[pos : pos + self._file.left]
                self._file.sha.update(chunk)
                self._file.left -= len(chunk)
                pos += len(chunk)
                if not self._file.left:
                    self._state = "status"
            elif self._state == "status":
                assert self._file is not None
                byte, pos = data[pos], pos + 1
                if byte > 2:
                    self._fail("sallyport: bad scp status byte")
                self._file.source_ok = byte == 0
                self._state, self._awaiting = "ack" if byte == 0 else "status-line", "data"
            elif self._state == "ack":
                self._fail("sallyport: scp source sent data before its answer")
            else:
                pos = self._take_line(data, pos, self._line)
                if self._line.endswith(b"\n"):
                    line = bytes(self._line[:-1])
                    self._line.clear()
                    self._on_line(line)

    def _take_line(self, data: bytes, pos: int, line: bytearray) -> int:
        end = data.find(b"\n", pos)
        stop = len(data) if end < 0 else end + 1
        line += data[pos:stop]
        if len(line) > self.max_line:
            self._fail("sallyport: scp control line too long")
        return stop

    def _on_line(self, line: bytes) -> None:
        if self._state == "status-line":  # the source could not read the whole file
            self._state = "ack"
            return
        kind = line[:1]
        if kind in (b"\x01", b"\x02"):  # the source reports an error; no answer follows
            self._state = "done" if kind == b"\x02" else "line"
            return
        c, d = _C_LINE.fullmatch(line), _D_LINE.fullmatch(line)
        record = c or d
        name = record.group(3) if record else b""
        if name in (b".", b"..") or b"/" in name:
            self._fail("sallyport: unsafe name in scp record")
        elif c:
            self._file = _File(self._path(decode_path(name)), int(c.group(2)))
            self._state, self._awaiting = "ack", "C"
        elif d:
            self._dir = self._path(decode_path(name))
            self._state, self._awaiting = "ack", "D"
        elif line == b"E" or _T_LINE.fullmatch(line):
            self._state, self._awaiting = "ack", line[:1].decode()
        else:
            self._fail("sallyport: unknown scp record")

    def _path(self, name: str) -> str:
        if self._dirs:
            return _join(self._dirs[-1], name)
        paths = [p.rstrip("/") or p for p in self.command.paths]
        if self.direction == "download":
            same = [p for p in paths if posixpath.basename(p) == name]
            globbed = [p for p in paths if _GLOB.search(p)]
            return same[0] if same else _join(posixpath.dirname((globbed or paths)[0]), name)
        target = self.command.paths[0]
        is_dir = self.command.target_is_dir or target.endswith("/") or target in ("", ".", "~")
        if not is_dir and posixpath.basename(target) == name:
            return target
        return _join(target, name)

    def _sink(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and self.desync is None and self._state != "done":
            if self._ack_line is None:
                byte, pos = data[pos], pos + 1
                if byte == 0:
                    self._on_answer(ok=True, fatal=False)
                elif byte in (1, 2):
                    self._ack_line = bytearray((byte,))
                else:
                    self._fail("sallyport: bad scp answer byte")
            else:
                pos = self._take_line(data, pos, self._ack_line)
                if self._ack_line.endswith(b"\n"):
                    fatal = self._ack_line[0] == 2
                    self._ack_line = None
                    self._on_answer(ok=False, fatal=fatal)

    def _on_answer(self, *, ok: bool, fatal: bool) -> None:
        if self._state != "ack":  # an unsolicited error (e.g. sink I/O error mid-file)
            if ok:
                self._fail("sallyport: unexpected scp answer")
            elif self._file is not None:
                self._file.source_ok = False
            if fatal:
                self._end()
            return
        self._state = "line"
        if self._awaiting == "C" and self._file is not None:
            if ok:
                self._state = "data" if self._file.left else "status"
            else:  # refused by the sink: the source skips the file
                self._emit(complete=False)
        elif self._awaiting == "data" and self._file is not None:
            self._emit(complete=ok and self._file.source_ok)
        elif self._awaiting == "D" and self._dir is not None:
            if ok:
                self._dirs.append(self._dir)
            self._dir = None
        elif self._awaiting == "E" and self._dirs:
            self._dirs.pop()
        if fatal:
            self._end()

    def _emit(self, *, complete: bool) -> None:
        f, self._file = self._file, None
        assert f is not None
        seen = f.size - f.left
        self._events.append(FileTransfer(f.path, self.direction, seen, f.sha.hexdigest(), complete))

    def _fail(self, reason: str) -> None:
        if self.desync is None:
            self.desync = reason
            self._events.append(TransferRefusal("tap-desync", "", reason))
