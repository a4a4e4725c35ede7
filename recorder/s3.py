"""Recordings in S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW, ...).

The sink has the same synchronous interface as ``LocalSink`` (the recorders call it from
the gateway's event loop; the relay closes it from a worker thread). The S3 client
(aiobotocore) lives on its own event loop in one daemon thread per storage, so a write
never waits for the network: it buffers, and when the buffer reaches ``part_size`` it
hands that part to the S3 thread as one ``UploadPart`` of a multipart upload and
returns. Each part's upload runs while the session goes on. If a part fails, the next
write or flush raises ``StorageError`` and the session ends (fail closed); so does a
backlog of more than ``max_inflight`` parts not yet acknowledged. ``close`` uploads the
last part and completes the upload; a recording smaller than one part is a single
``PutObject`` at close.

Crash semantics, honestly: S3 cannot append, and every part but the last must be at
least 5 MiB, so up to ``part_size`` bytes (default 8 MiB) of the newest recording data
exist only in the gateway's memory; a gateway crash loses them (the local backend loses
at most the recorder's one-second buffer). The parts already uploaded survive, but as an
*incomplete multipart upload*, which is not an object until completed. ``recover(key)``
completes such an upload from the parts S3 holds, which makes a valid prefix of the
recording (cut at a part boundary; the readers accept a cut final line) and returns its
SHA-256 and size. Run it for the recordings a crashed node left in status ``recording``,
and do not let a bucket lifecycle rule abort incomplete uploads before that. A sink
closed after a failed part completes the upload with the parts before the failure and
reports that prefix, marked incomplete.

Immutability: the local backend makes a finished file read-only (0440); S3 has no such
per-object switch for the writer. Use a bucket with Object Lock (compliance mode) or a
policy that denies ``s3:PutObject``/``s3:DeleteObject`` on existing keys to anyone but
retention; independently, each recording's SHA-256 is in the signed audit chain
(``broker:recording:final``), so any change to a stored recording is detected when it is
verified or exported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from recorder.errors import StorageError
from recorder.storage import StoredObject, check_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

T = TypeVar("T")
MIN_PART = 5 * 1024 * 1024
DEFAULT_PART = 8 * 1024 * 1024
_ERRORS = (
    BotoCoreError,
    ClientError,
    OSError,
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
)


class _LoopThread:
    """An event loop of its own in a daemon thread: the S3 client lives here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sallyport-s3")
        self.thread.daemon = True
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclass
class _Part:
    number: int
    end: int  # recording bytes up to the end of this part
    sha256: str  # of the recording up to the end of this part
    future: concurrent.futures.Future[str]  # the part's ETag


class S3Storage:
    """Recordings as objects ``prefix + key`` in one bucket."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        part_size: int = DEFAULT_PART,
        max_inflight: int = 8,
        timeout: float = 60.0,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes (an S3 rule)")
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        self.bucket, self.prefix = bucket, prefix
        self.part_size, self.max_inflight, self.timeout = part_size, max_inflight, timeout
        self._stack = AsyncExitStack()
        self._thread = _LoopThread()
        config = AioConfig(
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            self.client: S3Client = self._thread.run(
                self._open(endpoint_url, region, access_key, secret_key, config), timeout
            )
        except BaseException:
            self._thread.stop()
            raise

    async def _open(
        self,
        endpoint_url: str | None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
        config: AioConfig,
    ) -> S3Client:
        client = get_session().create_client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        return await self._stack.enter_async_context(client)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the S3 thread and wait for it (from any other thread)."""
        return self._thread.run(coro, self.timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._thread.submit(coro)

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def close(self) -> None:
        """Cancel uploads still running (a sink never closed), close the client, stop."""
        try:
            self.run(self._shutdown())
        finally:
            self._thread.stop()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._stack.aclose()

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (development and tests)."""

        async def go() -> None:
            try:
                await self.client.head_bucket(Bucket=self.bucket)
            except ClientError:
                await self.client.create_bucket(Bucket=self.bucket)

        self.run(go())

    def create(self, key: str) -> S3Sink:
        return S3Sink(self, check_key(key))

    def read(self, key: str) -> bytes:
        async def go() -> bytes:
            response = await self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data

        try:
            return self.run(go())
        except _ERRORS as exc:
            raise StorageError("recording-missing", f"cannot read {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.run(self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key)))
        except _ERRORS as exc:
            raise StorageError("recording-delete-failed", f"cannot delete {key}: {exc}") from exc

    def recover(self, key: str) -> StoredObject | None:
        """Complete the unfinished multipart upload of ``key`` (left by a crash) from the
        parts S3 holds; the result is a prefix of the recording. None if there is none."""

        async def go() -> StoredObject | None:
            name = self.object_key(key)
            listing = await self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=name)
            uploads = [u for u in listing.get("Uploads", []) if u.get("Key") == name]
            if not uploads:
                return None
            upload_id = uploads[-1]["UploadId"]
            held = await self.client.list_parts(Bucket=self.bucket, Key=name, UploadId=upload_id)
            parts: list[CompletedPartTypeDef] = []
            for number, part in enumerate(sorted(held.get("Parts", []), key=_number), 1):
                if part.get("PartNumber") != number:
                    break  # only a contiguous run of parts is a prefix
                parts.append({"PartNumber": number, "ETag": part.get("ETag", "")})
            if not parts:
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id
                )
                return None
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            response = await self.client.get_object(Bucket=self.bucket, Key=name)
            digest, size = hashlib.sha256(), 0
            async with response["Body"] as body:
                async for chunk in body.iter_chunks():
                    digest.update(chunk)
                    size += len(chunk)
            return StoredObject(key, digest.hexdigest(), size, complete=False)

        try:
            return self.run(go())
        except _ERRORS as exc:
            raise StorageError("recording-recover-failed", f"cannot recover {key}: {exc}") from exc


def _number(part: Any) -> int:
    return int(part.get("PartNumber", 0))


class S3Sink:
    """One recording being uploaded; see the module docstring for what a crash keeps."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self._storage = storage
        self._name = storage.object_key(key)
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._parts: list[_Part] = []
        self._upload: concurrent.futures.Future[str] | None = None
        self._closed: StoredObject | None = None

    def write(self, data: bytes) -> None:
        self._check()
        self._buffer += data
        self._hash.update(data)
        self._size += len(data)
        if len(self._buffer) >= self._storage.part_size:
            self._ship()

    def write_parts(self, parts: list[bytes]) -> None:
        self._check()
        for part in parts:
            self._buffer += part
            self._hash.update(part)
            self._size += len(part)
        if len(self._buffer) >= self._storage.part_size:
            self._ship()

    def _check(self) -> None:
        if self._closed is not None:
            raise StorageError("recording-closed", f"{self.key} is already closed")
        inflight = 0
        for part in self._parts:
            if not part.future.done():
                inflight += 1
            elif part.future.exception() is not None:
                raise StorageError(
                    "recording-write-failed",
                    f"cannot upload part {part.number} of {self.key}: {part.future.exception()}",
                )
        if inflight >= self._storage.max_inflight:
            raise StorageError(
                "recording-backlog", f"{inflight} parts of {self.key} are still uploading"
            )

    def _ship(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        if self._upload is None:
            self._upload = self._storage.submit(self._start())
        number = len(self._parts) + 1
        future = self._storage.submit(self._upload_part(number, data))
        self._parts.append(_Part(number, self._size, self._hash.hexdigest(), future))

    async def _start(self) -> str:
        client = self._storage.client
        created = await client.create_multipart_upload(Bucket=self._storage.bucket, Key=self._name)
        return created["UploadId"]

    async def _upload_part(self, number: int, data: bytes) -> str:
        assert self._upload is not None
        upload_id = await asyncio.wrap_future(self._upload)
        response = await self._storage.client.upload_part(
            Bucket=self._storage.bucket,
            Key=self._name,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return response["ETag"]

    def close(self, complete: bool = True) -> StoredObject:
        """Upload what is buffered and complete the object. Never raises: on failure the
        stored prefix (possibly empty) is reported, marked incomplete."""
        if self._closed is not None:
            return self._closed
        try:
            if not self._parts:
                self._closed = self._put(complete)
            else:
                if self._buffer:
                    self._ship()
                self._closed = self._finish(complete)
        except _ERRORS:
            self._closed = StoredObject(self.key, hashlib.sha256().hexdigest(), 0, False)
        return self._closed

    def _put(self, complete: bool) -> StoredObject:
        data = bytes(self._buffer)
        self._buffer.clear()
        storage = self._storage
        storage.run(storage.client.put_object(Bucket=storage.bucket, Key=self._name, Body=data))
        return StoredObject(self.key, self._hash.hexdigest(), self._size, complete)

    def _finish(self, complete: bool) -> StoredObject:
        storage = self._storage
        assert self._upload is not None
        done: list[CompletedPartTypeDef] = []
        stored = StoredObject(self.key, hashlib.sha256().hexdigest(), 0, False)
        for part in self._parts:
            try:
                etag = part.future.result(storage.timeout)
            except Exception:
                complete = False
                break
            done.append({"PartNumber": part.number, "ETag": etag})
            stored = StoredObject(self.key, part.sha256, part.end, complete)
        upload_id = self._upload.result(storage.timeout)
        if done:
            storage.run(
                storage.client.complete_multipart_upload(
                    Bucket=storage.bucket,
                    Key=self._name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                )
            )
        else:
            storage.run(
                storage.client.abort_multipart_upload(
                    Bucket=storage.bucket, Key=self._name, UploadId=upload_id
                )
            )
        return StoredObject(self.key, stored.sha256, stored.size, complete)
