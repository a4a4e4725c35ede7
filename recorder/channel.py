"""Channel recordings: what a vendor's channel carried, streamed to storage as it happens.

Two formats, both versioned and both readable when cut short by a crash:
- ``asciicast`` v2 for terminal (PTY) channels, which the browser player replays;
- ``sallyport-stream`` v1 for channels without a terminal (exec, file transfer), which
  keeps every byte of binary data and costs no text escaping on bulk output.

Writers push each event to the sink as it is added (``FLUSH_BYTES``); the Flusher's
periodic ``flush()`` is the safety net for anything an encoder holds back.
"""

from __future__ import annotations

import codecs
import json
import struct
import time
from collections.abc import Callable
from typing import Any

from recorder import metrics
from recorder.errors import RecorderError, StorageError
from recorder.storage import Sink, StoredObject

# Write-through: every event reaches the kernel before the relay passes its bytes on, so
# a full disk or a crash can never leave relayed traffic out of the recording.
FLUSH_BYTES = 1
ASCIICAST = "asciicast-v2"
STREAM = "sallyport-stream-v1"

STDIN, STDOUT, STDERR = 0, 1, 2
_FRAME = struct.Struct(">dBI")  # seconds since start, stream, length


class ChannelRecording:
    """Common buffering, hashing and closing; subclasses encode events."""

    format = ""

    def __init__(self, sink: Sink, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._clock = clock
        self._t0 = clock()
        self._parts: list[bytes] = []
        self._pending = 0
        self._failed = False
        self._closed: StoredObject | None = None

    @property
    def key(self) -> str:
        return self._sink.key

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def _append(self, *data: bytes) -> None:
        if self._closed is not None:
            raise StorageError("recording-closed", f"{self.key} is already closed")
        self._parts.extend(data)
        self._pending += sum(len(d) for d in data)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            parts, size = self._parts, self._pending
            self._parts, self._pending = [], 0
            try:
                self._sink.write_parts(parts)
            except RecorderError:
                self._failed = True  # whatever follows, this recording is incomplete
                raise
            metrics.recorded(size)

    def close(self, complete: bool = True) -> StoredObject:
        """Write what is buffered and seal the recording. Never raises: if the last writes
        fail, the result is marked incomplete and hashes exactly what reached storage."""
        if self._closed is None:
            try:
                self._finish()
                self.flush()
            except RecorderError:
                complete = False
                self._parts, self._pending = [], 0
            self._closed = self._sink.close(complete and not self._failed)
        return self._closed

    def _finish(self) -> None:
        """Hook for encoders with state to drain before close."""

    def output(self, data: bytes, stream: int = STDOUT) -> None:
        raise NotImplementedError

    def input(self, data: bytes) -> None:
        raise NotImplementedError

    def resize(self, width: int, height: int) -> None:
        """Terminal size change; channels without a terminal ignore it."""


class AsciicastRecording(ChannelRecording):
    """asciicast v2: a JSON header line, then ``[time, code, data]`` lines."""

    format = ASCIICAST

    def __init__(
        self,
        sink: Sink,
        *,
        width: int,
        height: int,
        started_at: float,
        term: str | None = None,
        command: str | None = None,
        title: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sink, clock)
        header: dict[str, Any] = {
            "version": 2,
            "width": max(1, width),
            "height": max(1, height),
            "timestamp": int(started_at),
        }
        if term:
            header["env"] = {"TERM": term}
        if command:
            header["command"] = command
        if title:
            header["title"] = title
        self._decoders = {
            "o": codecs.getincrementaldecoder("utf-8")("replace"),
            "i": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._append(json.dumps(header).encode() + b"\n")
        self.flush()

    def _event(self, code: str, text: str) -> None:
        line = json.dumps([round(self.elapsed(), 6), code, text], ensure_ascii=False)
        self._append(line.encode() + b"\n")

    def _text(self, code: str, data: bytes, final: bool = False) -> None:
        text = self._decoders[code].decode(data, final)
        if text:
            self._event(code, text)

    def output(self, data: bytes, stream: int = STDOUT) -> None:
        self._text("o", data)

    def input(self, data: bytes) -> None:
        self._text("i", data)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def _finish(self) -> None:
        for code in ("o", "i"):
            self._text(code, b"", final=True)


class StreamRecording(ChannelRecording):
    """sallyport-stream v1: a JSON header line, then binary frames (time, stream, bytes)."""

    format = STREAM

    def __init__(
        self,
        sink: Sink,
        *,
        started_at: float,
        command: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sink, clock)
        header = {"format": "sallyport-stream", "version": 1, "timestamp": started_at}
        if command is not None:
            header["command"] = command
        self._append(json.dumps(header).encode() + b"\n")
        self.flush()

    def _frame(self, stream: int, data: bytes) -> None:
        if data:
            self._append(_FRAME.pack(self.elapsed(), stream, len(data)), data)

    def output(self, data: bytes, stream: int = STDOUT) -> None:
        self._frame(stream, data)

    def input(self, data: bytes) -> None:
        self._frame(STDIN, data)
