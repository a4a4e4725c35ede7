"""Channel recordings (recorder/channel.py, readers.py, storage.py) on local storage."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.channel import (
    ASCIICAST,
    FLUSH_BYTES,
    STDERR,
    STREAM,
    AsciicastRecording,
    StreamRecording,
)
from recorder.errors import FormatError, StorageError
from recorder.readers import parse
from recorder.storage import LocalStorage

STARTED = 1_741_944_615.75  # 2025-03-14T09:30:15.75Z


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "recordings")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def cast(
    storage: LocalStorage,
    clock: FakeClock,
    key: str = "s1/chan0.cast",
    *,
    width: int = 80,
    height: int = 24,
    term: str | None = None,
    command: str | None = None,
) -> AsciicastRecording:
    return AsciicastRecording(
        storage.create(key),
        width=width,
        height=height,
        started_at=STARTED,
        term=term,
        command=command,
        clock=clock,
    )


def stream(
    storage: LocalStorage,
    clock: FakeClock,
    key: str = "s1/chan0.stream",
    *,
    command: str | None = None,
) -> StreamRecording:
    return StreamRecording(storage.create(key), started_at=STARTED, command=command, clock=clock)


def lines(data: bytes) -> list[Any]:
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def only_events(storage: LocalStorage, key: str) -> list[tuple[str, str]]:
    return [(e.code, e.data.decode()) for e in parse(storage.read(key)).events]


# --- asciicast ------------------------------------------------------------------------------


def test_asciicast_header(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock, width=132, height=43, term="xterm-256color", command="top")
    rec.close()
    header = lines(storage.read(rec.key))[0]
    assert isinstance(header, dict)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (132, 43)
    assert header["timestamp"] == int(STARTED)
    assert header["env"] == {"TERM": "xterm-256color"}
    assert header["command"] == "top"


def test_asciicast_header_written_at_once(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    header = json.loads(storage.read(rec.key))
    assert header["version"] == 2
    rec.close()


def test_asciicast_zero_size_terminal_gets_a_valid_header(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock, width=0, height=0)
    rec.close()
    header = parse(storage.read(rec.key)).header
    assert header["width"] >= 1 and header["height"] >= 1


def test_asciicast_every_event_line_is_time_code_text(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    rec.output(b"login: ")
    clock.advance(0.25)
    rec.input(b"admin\r")
    clock.advance(1.5)
    rec.resize(120, 40)
    rec.output(b'\x1b[2J\x1b[H"quoted" \\ back\ttab\n\x00nul')
    clock.advance(0.000_000_4)
    rec.output("ünïcödé €".encode())
    rec.close()
    events = lines(storage.read(rec.key))[1:]
    assert len(events) == 5
    for event in events:
        assert isinstance(event, list) and len(event) == 3
        t, code, text = event
        assert isinstance(t, float)
        assert code in ("o", "i", "r")
        assert isinstance(text, str)
    assert [e[0] for e in events] == [0.0, 0.25, 1.75, 1.75, 1.75]  # rounded to 6 places
    assert events[3][2] == '\x1b[2J\x1b[H"quoted" \\ back\ttab\n\x00nul'
    assert events[4][2] == "ünïcödé €"


def test_asciicast_times_follow_the_clock(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    for step in (0.0, 0.5, 2.0, 60.0):
        clock.advance(step)
        rec.output(b".")
    rec.close()
    parsed = parse(storage.read(rec.key))
    assert [e.time for e in parsed.events] == [0.0, 0.5, 2.5, 62.5]


@pytest.mark.parametrize("char", ["é", "€", "😀", "𝄞"])
def test_asciicast_multibyte_character_split_across_outputs(
    storage: LocalStorage, clock: FakeClock, char: str
) -> None:
    encoded = ("ab" + char + "cd").encode()
    for cut in range(3, 2 + len(char.encode())):
        rec = cast(storage, clock, key=f"split/{cut}.cast")
        rec.output(encoded[:cut])
        clock.advance(0.1)
        rec.output(encoded[cut:])
        rec.close()
        data = storage.read(rec.key)
        parsed = parse(data)
        text = parsed.output().decode()
        assert text == "ab" + char + "cd"
        assert "\ufffd" not in text
        assert "\ufffd" not in data.decode()
        # the character is in one event, not split into two halves
        assert any(char in e.data.decode() for e in parsed.events)


def test_asciicast_character_split_byte_by_byte(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    for byte in "😀 é €".encode():
        rec.output(bytes([byte]))
    rec.close()
    assert parse(storage.read(rec.key)).output().decode() == "😀 é €"


def test_asciicast_input_multibyte_split(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    data = "€".encode()
    rec.input(data[:1])
    rec.output(b"prompt")
    rec.input(data[1:])
    rec.close()
    parsed = parse(storage.read(rec.key))
    assert parsed.input().decode() == "€"
    assert parsed.output() == b"prompt"


def test_asciicast_incomplete_character_at_close_becomes_replacement(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    rec.output(b"ok " + "€".encode()[:2])
    rec.close()
    assert parse(storage.read(rec.key)).output().decode() == "ok \ufffd"


def test_asciicast_invalid_utf8_replaced(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    rec.output(b"a\xffb\xc3(")
    rec.close()
    assert parse(storage.read(rec.key)).output().decode() == "a\ufffdb\ufffd("


def test_asciicast_input_and_resize_events(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    rec.input(b"ls -l\r")
    clock.advance(1)
    rec.resize(120, 40)
    rec.output(b"total 0\r\n")
    rec.close()
    assert only_events(storage, rec.key) == [
        ("i", "ls -l\r"),
        ("r", "120x40"),
        ("o", "total 0\r\n"),
    ]


def test_asciicast_events_readable_after_flush_without_close(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    rec.output(b"first")
    rec.input(b"x")
    rec.flush()
    parsed = parse(storage.read(rec.key))
    assert not parsed.truncated
    assert [(e.code, e.data) for e in parsed.events] == [("o", b"first"), ("i", b"x")]
    rec.output(b"second")
    rec.flush()
    assert parse(storage.read(rec.key)).output() == b"firstsecond"


def test_asciicast_large_output_reaches_storage_without_flush(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    chunk = b"x" * 4096
    for _ in range(FLUSH_BYTES // len(chunk) + 1):
        rec.output(chunk)
    on_disk = parse(storage.read(rec.key))
    assert len(on_disk.output()) >= FLUSH_BYTES
    rec.close()


@pytest.mark.parametrize("cut_back", [1, 2, 5, 10])
def test_asciicast_file_cut_in_last_line(
    storage: LocalStorage, clock: FakeClock, cut_back: int
) -> None:
    rec = cast(storage, clock)
    rec.output(b"one")
    rec.resize(100, 30)
    rec.output("last line with €uro".encode())
    rec.flush()
    data = storage.read(rec.key)
    cut = data[: len(data) - 1 - cut_back]  # drop the newline and some of the line
    parsed = parse(cut)
    assert parsed.truncated
    assert [(e.code, e.data) for e in parsed.events] == [("o", b"one"), ("r", b"100x30")]
    rec.close()


def test_asciicast_cut_inside_a_multibyte_character(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    rec.output(b"keep")
    rec.output("€€€".encode())
    rec.close()
    data = storage.read(rec.key)
    index = data.rindex("€".encode()) + 1
    parsed = parse(data[:index])
    assert parsed.truncated
    assert parsed.output() == b"keep"


def test_asciicast_cut_at_line_boundary_is_not_truncated(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    rec.output(b"a")
    rec.output(b"b")
    rec.close()
    data = storage.read(rec.key)
    first_two = data[: data.index(b"\n", data.index(b"\n") + 1) + 1]
    parsed = parse(first_two)
    assert not parsed.truncated
    assert parsed.output() == b"a"


def test_corrupt_middle_line_is_an_error(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    rec.output(b"a")
    rec.output(b"b")
    rec.close()
    head, first, second, _ = storage.read(rec.key).split(b"\n")
    with pytest.raises(FormatError):
        parse(b"\n".join([head, first[:-3], second, b""]))


@pytest.mark.parametrize(
    "data",
    [b"", b"not json\n", b'{"version": 2}', b"[1, 2]\n", b'{"version": 3}\n', b'{"no": 1}\n'],
)
def test_parse_refuses_bad_headers(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse(data)


def test_asciicast_close_returns_hash_and_size_of_the_file(
    storage: LocalStorage, clock: FakeClock
) -> None:
    rec = cast(storage, clock)
    rec.output("€ some output\r\n".encode())
    rec.input(b"q")
    rec.flush()
    rec.output(b"buffered until close")
    stored = rec.close()
    data = storage.read(rec.key)
    assert stored.key == rec.key == "s1/chan0.cast"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert b"buffered until close" in data


def test_close_reports_complete(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    rec.output(b"x")
    assert rec.close().complete


def test_failed_final_write_closes_incomplete_with_hash_of_what_was_stored(
    storage: LocalStorage, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = cast(storage, clock)
    rec.output(b"stored before the disk filled")
    rec.flush()

    def full_disk(fd: int, buffers: list[bytes]) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(StorageError):  # written through: the failure shows at once
        rec.output(b"never stored")
    stored = rec.close()  # does not raise
    monkeypatch.undo()
    data = storage.read(rec.key)
    assert not stored.complete
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    parsed = parse(data)
    assert parsed.output() == b"stored before the disk filled"
    assert rec.close() == stored


def test_failed_write_during_recording_raises_storage_error(
    storage: LocalStorage, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = cast(storage, clock)

    def broken(fd: int, buffers: list[bytes]) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "writev", broken)
    with pytest.raises(StorageError) as exc:
        rec.output(b"x")  # written through before the relay passes the bytes on
    assert exc.value.code == "recording-write-failed"
    monkeypatch.undo()
    rec.close()


def test_close_twice_returns_the_same_result(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    rec.output(b"x")
    first = rec.close()
    assert rec.close() == first
    assert hashlib.sha256(storage.read(rec.key)).hexdigest() == first.sha256


def test_closed_recording_file_is_read_only(
    storage: LocalStorage, clock: FakeClock, tmp_path: Path
) -> None:
    rec = cast(storage, clock)
    rec.output(b"x")
    rec.close()
    path = storage.path(rec.key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o440


def test_open_recording_file_is_not_world_readable(storage: LocalStorage, clock: FakeClock) -> None:
    rec = cast(storage, clock)
    assert stat.S_IMODE(storage.path(rec.key).stat().st_mode) & 0o007 == 0
    rec.close()


# --- stream ---------------------------------------------------------------------------------


def test_stream_header(storage: LocalStorage, clock: FakeClock) -> None:
    rec = stream(storage, clock, command="tar cf - /var/log")
    rec.close()
    parsed = parse(storage.read(rec.key))
    assert parsed.format == STREAM
    assert parsed.header == {
        "format": "sallyport-stream",
        "version": 1,
        "timestamp": STARTED,
        "command": "tar cf - /var/log",
    }
    assert parsed.events == []
    assert not parsed.truncated


def test_stream_all_byte_values_round_trip(storage: LocalStorage, clock: FakeClock) -> None:
    payload = bytes(range(256)) * 3
    rec = stream(storage, clock)
    rec.output(payload[:100])
    clock.advance(0.5)
    rec.output(payload[100:])
    stored = rec.close()
    data = storage.read(rec.key)
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    parsed = parse(data)
    assert parsed.output() == payload
    assert [e.time for e in parsed.events] == [0.0, 0.5]


def test_stream_codes_for_stdin_stdout_stderr(storage: LocalStorage, clock: FakeClock) -> None:
    rec = stream(storage, clock)
    rec.input(b"\x00stdin\xff")
    rec.output(b"out\n")
    rec.output(b"err\n", STDERR)
    rec.resize(10, 10)  # no terminal: ignored
    rec.output(b"")  # nothing to record
    rec.close()
    parsed = parse(storage.read(rec.key))
    assert [(e.code, e.data) for e in parsed.events] == [
        ("i", b"\x00stdin\xff"),
        ("o", b"out\n"),
        ("e", b"err\n"),
    ]
    assert parsed.input() == b"\x00stdin\xff"
    assert parsed.output() == b"out\nerr\n"


def test_stream_readable_after_flush_without_close(storage: LocalStorage, clock: FakeClock) -> None:
    rec = stream(storage, clock)
    rec.output(b"\n\n\x00")
    rec.flush()
    parsed = parse(storage.read(rec.key))
    assert parsed.output() == b"\n\n\x00"
    assert not parsed.truncated
    rec.close()


@pytest.mark.parametrize("cut_back", [1, 10, 19, 20, 23, 25])
def test_stream_file_cut_mid_frame(storage: LocalStorage, clock: FakeClock, cut_back: int) -> None:
    rec = stream(storage, clock)
    rec.output(b"complete frame")
    rec.output(b"x" * 20, STDERR)  # frame = 13-byte header + 20 bytes
    rec.close()
    data = storage.read(rec.key)
    parsed = parse(data[:-cut_back])
    assert parsed.truncated
    assert parsed.events[0].data == b"complete frame"
    # whatever survives of the cut frame is a prefix of what was written
    assert parsed.output().startswith(b"complete frame")
    assert b"x" * 20 not in parsed.output()


def test_stream_unknown_stream_number_is_an_error(storage: LocalStorage, clock: FakeClock) -> None:
    rec = stream(storage, clock)
    rec.output(b"data", stream=7)
    rec.close()
    with pytest.raises(FormatError):
        parse(storage.read(rec.key))


def test_format_names(storage: LocalStorage, clock: FakeClock) -> None:
    a = cast(storage, clock)
    s = stream(storage, clock)
    a.close()
    s.close()
    assert parse(storage.read(a.key)).format == a.format == ASCIICAST
    assert parse(storage.read(s.key)).format == s.format == STREAM


# --- properties -----------------------------------------------------------------------------

chunks = st.lists(st.binary(max_size=40), max_size=30)


@settings(max_examples=150, deadline=None)
@given(data=chunks)
def test_property_asciicast_output_text(
    tmp_path_factory: pytest.TempPathFactory, data: list[bytes]
) -> None:
    store = LocalStorage(tmp_path_factory.mktemp("cast"))
    clock = FakeClock()
    rec = cast(store, clock)
    for chunk in data:
        clock.advance(0.01)
        rec.output(chunk)
    stored = rec.close()
    raw = store.read(rec.key)
    assert stored.sha256 == hashlib.sha256(raw).hexdigest()
    parsed = parse(raw)
    assert not parsed.truncated
    assert parsed.output().decode() == b"".join(data).decode("utf-8", "replace")


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["o", "i", "r"]), st.binary(max_size=20)), max_size=30)
)
def test_property_asciicast_interleaved_input_output(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, bytes]]
) -> None:
    store = LocalStorage(tmp_path_factory.mktemp("cast"))
    rec = cast(store, FakeClock())
    for code, chunk in ops:
        if code == "o":
            rec.output(chunk)
        elif code == "i":
            rec.input(chunk)
        else:
            rec.resize(len(chunk) + 1, 24)
    rec.close()
    parsed = parse(store.read(rec.key))
    out = b"".join(c for k, c in ops if k == "o")
    inp = b"".join(c for k, c in ops if k == "i")
    assert parsed.output().decode() == out.decode("utf-8", "replace")
    assert parsed.input().decode() == inp.decode("utf-8", "replace")
    resizes = [e.data.decode() for e in parsed.events if e.code == "r"]
    assert resizes == [f"{len(c) + 1}x24" for k, c in ops if k == "r"]


@settings(max_examples=150, deadline=None)
@given(data=chunks, streams=st.lists(st.sampled_from([1, 2]), min_size=30, max_size=30))
def test_property_stream_round_trips_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: list[bytes], streams: list[int]
) -> None:
    store = LocalStorage(tmp_path_factory.mktemp("stream"))
    rec = stream(store, FakeClock())
    for chunk, number in zip(data, streams, strict=False):
        rec.output(chunk, number)
    stored = rec.close()
    raw = store.read(rec.key)
    assert stored.size == len(raw)
    parsed = parse(raw)
    assert not parsed.truncated
    assert parsed.output() == b"".join(data)
    expected = [("o" if n == 1 else "e", c) for c, n in zip(data, streams, strict=False) if c]
    assert [(e.code, e.data) for e in parsed.events] == expected


# --- storage --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["../x", "/abs", "a/../b", "a/..", "..", ".", "", ".hidden", "a b", "a\\b", "-x", "x" * 402],
)
def test_bad_keys_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(StorageError) as exc:
        storage.create(key)
    assert exc.value.code == "recording-key-invalid"
    with pytest.raises(StorageError):
        storage.read(key)


def test_key_with_trailing_newline_refused(storage: LocalStorage) -> None:
    with pytest.raises(StorageError):
        storage.path("session-1.cast\n")


def test_nested_key_creates_directories(storage: LocalStorage) -> None:
    sink = storage.create("2025/03/14/session-1/chan-0.cast")
    sink.write(b"hello")
    sink.close()
    assert storage.read("2025/03/14/session-1/chan-0.cast") == b"hello"
    assert storage.path("2025/03/14/session-1/chan-0.cast").is_relative_to(storage.root)


def test_same_key_twice_refused(storage: LocalStorage) -> None:
    sink = storage.create("dup.cast")
    sink.write(b"original")
    with pytest.raises(StorageError) as exc:
        storage.create("dup.cast")
    assert exc.value.code == "recording-open-failed"
    sink.close()
    with pytest.raises(StorageError):
        storage.create("dup.cast")
    assert storage.read("dup.cast") == b"original"


def test_write_to_closed_sink_refused(storage: LocalStorage) -> None:
    sink = storage.create("closed.cast")
    sink.write(b"data")
    stored = sink.close()
    with pytest.raises(StorageError) as exc:
        sink.write(b"more")
    assert exc.value.code == "recording-closed"
    with pytest.raises(StorageError):
        sink.write_parts([b"more"])
    assert storage.read("closed.cast") == b"data"
    assert sink.close() == stored


def test_read_missing_key(storage: LocalStorage) -> None:
    with pytest.raises(StorageError) as exc:
        storage.read("nope.cast")
    assert exc.value.code == "recording-missing"


def test_write_parts_many_parts_hash_and_size(storage: LocalStorage) -> None:
    parts = [bytes([i % 256]) * (i % 7) for i in range(1500)]  # more than IOV_MAX, some empty
    sink = storage.create("parts.bin")
    sink.write_parts(parts)
    sink.write(b"tail")
    stored = sink.close()
    expected = b"".join(parts) + b"tail"
    assert storage.read("parts.bin") == expected
    assert stored.size == len(expected)
    assert stored.sha256 == hashlib.sha256(expected).hexdigest()


def test_short_writev_completes_and_hashes_exactly(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        joined = b"".join(buffers)
        return real_writev(fd, [joined[: max(1, len(joined) // 3)]])

    monkeypatch.setattr(os, "writev", short_writev)
    parts = [b"alpha-", b"", b"beta-", b"gamma-" * 10, b"delta"]
    sink = storage.create("short.bin")
    sink.write_parts(parts)
    stored = sink.close()
    expected = b"".join(parts)
    assert storage.read("short.bin") == expected
    assert stored.size == len(expected)
    assert stored.sha256 == hashlib.sha256(expected).hexdigest()
