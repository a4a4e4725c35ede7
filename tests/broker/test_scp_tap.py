"""ScpTap: the legacy scp protocol (``scp -O``), on built streams and with real OpenSSH."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.scp_tap import ScpCommand, ScpTap, parse_scp_command
from broker.sftp_tap import DOWNLOAD_DENIED, UPLOAD_DENIED, FileTransfer, TapEvent, TransferRefusal
from tests.broker.test_sftp_tap import device_directory, remote, run_relay, scp
from tests.support.sshd import SshdDevice

OK = b"\0"


@pytest.fixture
def device_dir(sshd_device: SshdDevice) -> Iterator[Path]:
    with device_directory(sshd_device) as path:
        yield path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drive(
    tap: ScpTap, steps: list[tuple[str, bytes]], cuts: st.DataObject | None = None
) -> tuple[bytes, bytes, list[TapEvent]]:
    """Feed (side, bytes) steps: "v" from the vendor, "d" from the device."""
    from_vendor, from_device = bytearray(), bytearray()
    for side, data in steps:
        points = cuts.draw(st.lists(st.integers(0, len(data)), max_size=4)) if cuts else []
        for a, b in itertools.pairwise([0, *sorted(points), len(data)]):
            if side == "v":
                from_vendor += tap.from_client(data[a:b])
            else:
                from_device += tap.from_server(data[a:b])
    return bytes(from_vendor), bytes(from_device), tap.events()


def source_steps(
    files: list[tuple[str, bytes]], *, source: str, sink: str, times: bool = False
) -> list[tuple[str, bytes]]:
    """What a source sends for *files* (names may contain "dir/"), with sink answers."""
    steps = [(sink, OK)]
    cwd: list[str] = []
    for name, content in files:
        *dirs, base = name.split("/")
        while cwd != dirs[: len(cwd)]:
            steps += [(source, b"E\n"), (sink, OK)]
            cwd.pop()
        for d in dirs[len(cwd) :]:
            steps += [(source, f"D0755 0 {d}\n".encode()), (sink, OK)]
            cwd.append(d)
        if times:
            steps += [(source, b"T1700000000 0 1700000000 0\n"), (sink, OK)]
        steps += [(source, f"C0644 {len(content)} {base}\n".encode()), (sink, OK)]
        steps += [(source, content + OK), (sink, OK)]
    for _ in cwd:
        steps += [(source, b"E\n"), (sink, OK)]
    return steps


def joined(steps: list[tuple[str, bytes]], side: str) -> bytes:
    return b"".join(d for s, d in steps if s == side)


@pytest.mark.parametrize(
    ("command", "parsed"),
    [
        ("scp -t /tmp/x", ScpCommand("upload", ("/tmp/x",), False)),
        ("scp -r -p -d -t -- -dir", ScpCommand("upload", ("-dir",), True)),
        (
            "scp -v -f /var/log/*.log /etc/motd",
            ScpCommand("download", ("/var/log/*.log", "/etc/motd"), False),
        ),
        ("scp -f 'a b'", ScpCommand("download", ("a b",), False)),
        ("scp -pf x", ScpCommand("download", ("x",), False)),
        ("scp -t /tmp; rm -rf /", None),
        ("scp -f $(reboot)", None),
        ("scp -f `reboot`", None),
        ("scp -t /a /b", None),
        ("scp -t -f /a", None),
        ("scp -x -t /a", None),
        ("scp /a", None),
        ("sftp -t /a", None),
        ("scp -t 'unterminated", None),
        ("", None),
    ],
)
def test_parse_command(command: str, parsed: ScpCommand | None) -> None:
    assert parse_scp_command(command) == parsed
    if parsed is None:
        with pytest.raises(ValueError, match="not an scp"):
            ScpTap(command, allow_upload=True, allow_download=True)


NAMES = st.text("abcxyz.-_ é", min_size=1, max_size=8).filter(lambda n: n not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(
    files=st.lists(
        st.tuples(st.lists(NAMES, min_size=1, max_size=3).map("/".join), st.binary(max_size=3000)),
        max_size=5,
    ),
    times=st.booleans(),
    cuts=st.data(),
)
def test_upload_stream(files: list[tuple[str, bytes]], times: bool, cuts: st.DataObject) -> None:
    steps = source_steps(files, source="v", sink="d", times=times)
    tap = ScpTap("scp -r -p -t /data/in/", allow_upload=True, allow_download=False)
    vendor, device, events = drive(tap, steps, cuts)
    assert (vendor, device) == (joined(steps, "v"), joined(steps, "d"))
    assert events == [
        FileTransfer(f"/data/in/{name}", "upload", len(c), sha(c), True) for name, c in files
    ]
    assert tap.close() == []


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=5000), cuts=st.data())
def test_download_stream(content: bytes, cuts: st.DataObject) -> None:
    steps = source_steps([("b.log", content), ("a.log", b"x")], source="d", sink="v")
    tap = ScpTap("scp -f /var/log/*.log", allow_upload=False, allow_download=True)
    vendor, device, events = drive(tap, steps, cuts)
    assert (vendor, device) == (joined(steps, "v"), joined(steps, "d"))
    assert events == [
        FileTransfer("/var/log/b.log", "download", len(content), sha(content), True),
        FileTransfer("/var/log/a.log", "download", 1, sha(b"x"), True),
    ]


@pytest.mark.parametrize(
    ("command", "name", "path"),
    [
        ("scp -t /tmp/fw.bin", "fw.bin", "/tmp/fw.bin"),
        ("scp -t /tmp", "fw.bin", "/tmp/fw.bin"),
        ("scp -t /tmp/", "fw.bin", "/tmp/fw.bin"),
        ("scp -d -t /tmp/fw.bin", "fw.bin", "/tmp/fw.bin/fw.bin"),
        ("scp -t .", "fw.bin", "./fw.bin"),
        ("scp -f fw.bin", "fw.bin", "fw.bin"),
        ("scp -f /a/ /b/fw.bin", "fw.bin", "/b/fw.bin"),
        ("scp -f /opt/*", "fw.bin", "/opt/fw.bin"),
    ],
)
def test_paths(command: str, name: str, path: str) -> None:
    tap = ScpTap(command, allow_upload=True, allow_download=True)
    src, snk = ("v", "d") if tap.direction == "upload" else ("d", "v")
    _, _, events = drive(tap, source_steps([(name, b"abc")], source=src, sink=snk))
    assert [e.path for e in events if isinstance(e, FileTransfer)] == [path]


def test_errors_make_transfers_incomplete() -> None:
    tap = ScpTap("scp -t /ro", allow_upload=True, allow_download=True)
    steps = [("d", OK), ("v", b"C0644 3 a\n"), ("d", b"\x01scp: /ro/a: Permission denied\n")]
    steps += [("v", b"C0644 3 b\n"), ("d", OK), ("v", b"abc" + OK), ("d", b"\x01scp: disk full\n")]
    steps += [("v", b"C0644 4 c\n"), ("d", OK), ("v", b"ab")]  # the vendor went away mid-file
    assert drive(tap, steps)[2] == [
        FileTransfer("/ro/a", "upload", 0, sha(b""), False),
        FileTransfer("/ro/b", "upload", 3, sha(b"abc"), False),
    ]
    assert tap.close() == [FileTransfer("/ro/c", "upload", 2, sha(b"ab"), False)]
    tap = ScpTap("scp -r -t /t/", allow_upload=True, allow_download=True)
    steps = [("d", OK), ("v", b"D0755 0 sub\n"), ("d", b"\x01scp: /t/sub: Permission denied\n")]
    steps += [("v", b"C0644 1 x\n"), ("d", OK), ("v", b"y" + OK), ("d", OK)]
    assert drive(tap, steps)[2] == [FileTransfer("/t/x", "upload", 1, sha(b"y"), True)]
    tap = ScpTap("scp -f /x", allow_upload=True, allow_download=True)
    steps = [("v", OK), ("d", b"\x01scp: /y: No such file or directory\n")]
    steps += [("d", b"C0644 3 x\n"), ("v", OK), ("d", b"ab!\x01scp: /x: read error\n"), ("v", OK)]
    assert drive(tap, steps)[2] == [FileTransfer("/x", "download", 3, sha(b"ab!"), False)]


@pytest.mark.parametrize(
    ("command", "allow_upload", "allow_download", "refusal"),
    [
        ("scp -t /tmp/x", False, True, TransferRefusal("scp-upload", "/tmp/x", UPLOAD_DENIED)),
        ("scp -f /a /b", True, False, TransferRefusal("scp-download", "/a /b", DOWNLOAD_DENIED)),
    ],
)
def test_refused_direction(
    command: str, allow_upload: bool, allow_download: bool, refusal: TransferRefusal
) -> None:
    tap = ScpTap(command, allow_upload=allow_upload, allow_download=allow_download)
    assert tap.refusal == refusal
    assert tap.refusal_bytes == b"\x02" + refusal.reason.encode() + b"\n"
    assert tap.events() == [refusal]
    assert tap.from_client(b"\0C0644 1 x\n") == b"" and tap.from_server(b"\0") == b""


@pytest.mark.parametrize(
    "record",
    [b"X what\n", b"C0644 3 ../etc/passwd\n", b"C0644 3 .\n", b"Cbad\n", b"C0644 1" + b"1" * 70000],
)
def test_unfollowable_stream_fails_closed(record: bytes) -> None:
    tap = ScpTap("scp -t /tmp", allow_upload=True, allow_download=True)
    assert tap.from_server(OK) == OK
    assert tap.from_client(record) == b""
    assert tap.desync is not None
    assert tap.events() == [TransferRefusal("tap-desync", "", tap.desync)]
    assert tap.from_client(b"C0644 1 x\n") == b"" and tap.from_server(OK) == b""


def test_nothing_after_a_fatal_error() -> None:
    tap = ScpTap("scp -t /tmp", allow_upload=True, allow_download=True)
    assert drive(tap, [("d", OK), ("v", b"\x02scp: give up\n")])[2] == []
    assert tap.from_client(b"C0644 1 x\n") == b""
    assert tap.desync == "sallyport: scp source went on after a fatal error"


def test_source_must_wait_for_answers() -> None:
    tap = ScpTap("scp -t /tmp", allow_upload=True, allow_download=True)
    assert tap.from_client(b"C0644 1 x\n") == b""
    assert tap.desync == "sallyport: scp source sent data before its answer"


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=12),
    upload=st.booleans(),
)
def test_garbage_never_raises(chunks: list[tuple[bool, bytes]], upload: bool) -> None:
    tap = ScpTap("scp -t /x" if upload else "scp -f /x", allow_upload=True, allow_download=True)
    for from_vendor, data in chunks:
        out = tap.from_client(data) if from_vendor else tap.from_server(data)
        assert out in (data, b"")
    assert all(isinstance(e, FileTransfer | TransferRefusal) for e in tap.events() + tap.close())


# -- real OpenSSH: scp -O through an exec relay ------------------------------------------------


@pytest.mark.integration
async def test_scp_legacy_upload_and_download(
    sshd_device: SshdDevice, device_dir: Path, tmp_path: Path
) -> None:
    content = os.urandom(5 * 2**20 + 3)
    local = tmp_path / "fw.bin"
    local.write_bytes(content)
    tree = tmp_path / "conf"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.cfg").write_bytes(b"alpha\n")
    (tree / "sub" / "b.cfg").write_bytes(b"")
    async with run_relay(sshd_device, allow_upload=True, allow_download=True) as relay:
        up = await scp(relay, tmp_path, "-O", str(local), remote(device_dir / "fw.bin"))
        assert up.returncode == 0, up.stderr
        down = await scp(relay, tmp_path, "-O", remote(device_dir / "fw.bin"), f"{tmp_path}/b")
        assert down.returncode == 0, down.stderr
        rec = await scp(relay, tmp_path, "-O", "-r", "-p", str(tree), f"{remote(device_dir)}/")
        assert rec.returncode == 0, rec.stderr
        events = await relay.settled(3)
    assert (device_dir / "fw.bin").read_bytes() == content == (tmp_path / "b").read_bytes()
    assert (device_dir / "conf" / "a.cfg").read_bytes() == b"alpha\n"
    assert (device_dir / "conf" / "sub" / "b.cfg").read_bytes() == b""
    tail = sorted(events[2:], key=lambda e: e.path)
    assert events[:2] + tail == [
        FileTransfer(f"{device_dir}/fw.bin", "upload", len(content), sha(content), True),
        FileTransfer(f"{device_dir}/fw.bin", "download", len(content), sha(content), True),
        FileTransfer(f"{device_dir}/conf/a.cfg", "upload", 6, sha(b"alpha\n"), True),
        FileTransfer(f"{device_dir}/conf/sub/b.cfg", "upload", 0, sha(b""), True),
    ]


@pytest.mark.integration
async def test_scp_legacy_refused_directions(
    sshd_device: SshdDevice, device_dir: Path, tmp_path: Path
) -> None:
    local = tmp_path / "evil.bin"
    local.write_bytes(b"new firmware")
    (device_dir / "log.txt").write_bytes(b"device log\n")
    async with run_relay(sshd_device, allow_upload=False, allow_download=True) as relay:
        up = await scp(relay, tmp_path, "-O", str(local), remote(device_dir / "evil.bin"))
        events = await relay.settled(1)
    assert up.returncode != 0
    assert UPLOAD_DENIED in up.stderr
    assert not (device_dir / "evil.bin").exists()
    assert events == [TransferRefusal("scp-upload", f"{device_dir}/evil.bin", UPLOAD_DENIED)]
    async with run_relay(sshd_device, allow_upload=True, allow_download=False) as relay:
        down = await scp(relay, tmp_path, "-O", remote(device_dir / "log.txt"), f"{tmp_path}/l")
        events = await relay.settled(1)
    assert down.returncode != 0
    assert DOWNLOAD_DENIED in down.stderr
    assert not (tmp_path / "l").exists()
    assert events == [TransferRefusal("scp-download", f"{device_dir}/log.txt", DOWNLOAD_DENIED)]
