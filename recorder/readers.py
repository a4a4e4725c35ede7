"""Readers for the channel recording formats, tolerant of a prefix cut short by a crash."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from recorder.channel import ASCIICAST, STDIN, STREAM
from recorder.errors import FormatError

_FRAME = struct.Struct(">dBI")


@dataclass
class Event:
    time: float
    code: str  # "o" output, "i" input, "r" resize, "e" stderr (stream format only)
    data: bytes


@dataclass
class ParsedRecording:
    format: str
    header: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    truncated: bool = False

    def output(self) -> bytes:
        return b"".join(e.data for e in self.events if e.code in ("o", "e"))

    def input(self) -> bytes:
        return b"".join(e.data for e in self.events if e.code == "i")


def parse(data: bytes) -> ParsedRecording:
    """Parse either format, chosen by its header line."""
    head, sep, body = data.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        raise FormatError("recording-header-invalid", "first line is not a JSON header") from None
    if not sep or not isinstance(header, dict):
        raise FormatError("recording-header-invalid", "recording has no complete header line")
    if header.get("format") == "sallyport-stream":
        if header.get("version") != 1:
            raise FormatError("recording-version", f"stream version {header.get('version')}")
        return _parse_stream(header, body)
    if header.get("version") == 2:
        return _parse_asciicast(header, body)
    raise FormatError("recording-version", f"unknown recording header {header!r}")


def _parse_asciicast(header: dict[str, Any], body: bytes) -> ParsedRecording:
    rec = ParsedRecording(ASCIICAST, header)
    lines = body.split(b"\n")
    for index, line in enumerate(lines):
        if not line:
            continue
        try:
            t, code, text = json.loads(line)
        except ValueError:
            if index == len(lines) - 1:  # a final line cut short by a crash
                rec.truncated = True
                break
            raise FormatError(
                "recording-line-invalid", f"line {index + 2} is not an event"
            ) from None
        rec.events.append(Event(float(t), str(code), str(text).encode()))
    return rec


def _parse_stream(header: dict[str, Any], body: bytes) -> ParsedRecording:
    rec = ParsedRecording(STREAM, header)
    pos = 0
    codes = {STDIN: "i", 1: "o", 2: "e"}
    while pos < len(body):
        if pos + _FRAME.size > len(body):
            rec.truncated = True
            break
        t, stream, length = _FRAME.unpack_from(body, pos)
        pos += _FRAME.size
        if stream not in codes:
            raise FormatError("recording-frame-invalid", f"unknown stream {stream} at {pos}")
        chunk = body[pos : pos + length]
        if len(chunk) < length:
            rec.truncated = True
        rec.events.append(Event(t, codes[stream], chunk))
        pos += length
    return rec
