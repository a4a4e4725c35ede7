"""Where recordings go. A sink hashes what it writes, so the SHA-256 is known at close."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from recorder.errors import StorageError

_IOV_MAX = 512
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,400}$")


@dataclass(frozen=True)
class StoredObject:
    """What a sink holds when closed: the hash and size of exactly the bytes written."""

    key: str
    sha256: str
    size: int
    complete: bool = True


class Sink(Protocol):
    key: str

    def write(self, data: bytes) -> None: ...

    def write_parts(self, parts: list[bytes]) -> None: ...

    def close(self, complete: bool = True) -> StoredObject: ...


class LocalSink:
    """An append-only file; bytes reach the kernel on every ``write`` (crash-safe prefix)."""

    def __init__(self, key: str, path: Path) -> None:
        self.key = key
        self.path = path
        self._hash = hashlib.sha256()
        self._size = 0
        self._closed = StoredObject(key, self._hash.hexdigest(), 0, False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise StorageError("recording-open-failed", f"cannot create {key}: {exc}") from exc

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise StorageError("recording-closed", f"{self.key} is already closed")
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            raise StorageError("recording-write-failed", f"cannot write {self.key}: {exc}") from exc
        finally:
            self._hash.update(view[:done])
            self._size += done

    def write_parts(self, parts: list[bytes]) -> None:
        """Write several buffers with one system call where possible (no joining copy)."""
        if self._fd is None:
            raise StorageError("recording-closed", f"{self.key} is already closed")
        for start in range(0, len(parts), _IOV_MAX):
            batch = parts[start : start + _IOV_MAX]
            total = sum(len(p) for p in batch)
            try:
                written = os.writev(self._fd, batch)
            except OSError as exc:
                raise StorageError(
                    "recording-write-failed", f"cannot write {self.key}: {exc}"
                ) from exc
            if written == total:
                for part in batch:
                    self._hash.update(part)
                self._size += total
            else:  # a short write: finish the rest part by part
                self._finish_short_write(batch, written)

    def _finish_short_write(self, batch: list[bytes], written: int) -> None:
        for part in batch:
            if written >= len(part):
                self._hash.update(part)
                self._size += len(part)
                written -= len(part)
            else:
                self._hash.update(part[:written])
                self._size += written
                self.write(part[written:])
                written = 0

    def close(self, complete: bool = True) -> StoredObject:
        """Sync and seal the file (read-only). Never raises: a failed sync marks the
        object incomplete, and the hash still covers exactly what was written."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError:
                complete = False
            finally:
                os.close(fd)
            try:
                os.chmod(self.path, 0o440)
            except OSError:
                complete = False
            self._closed = StoredObject(self.key, self._hash.hexdigest(), self._size, complete)
        return self._closed


class Storage(Protocol):
    """A recording store: ``LocalStorage`` here, ``recorder.s3.S3Storage`` for S3."""

    def create(self, key: str) -> Sink: ...

    def read(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def recover(self, key: str) -> StoredObject | None:
        """Make what a crashed writer left of ``key`` readable, if the backend needs to
        (S3: complete its multipart upload); None when there is nothing to do."""
        ...

    def close(self) -> None: ...


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise StorageError("recording-key-invalid", f"bad storage key {key!r}")
    return key


class LocalStorage:
    """Recordings as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def create(self, key: str) -> LocalSink:
        return LocalSink(key, self.path(key))

    def read(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except OSError as exc:
            raise StorageError("recording-missing", f"cannot read {key}: {exc}") from exc

    def recover(self, key: str) -> StoredObject | None:
        """A crashed writer's file is already in place (written through): nothing to do."""
        return None

    def delete(self, key: str) -> None:
        """Remove a recording (retention); a file already gone is not an error."""
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError("recording-delete-failed", f"cannot delete {key}: {exc}") from exc

    def close(self) -> None:
        """Nothing to release (the S3 backend closes its client here)."""
