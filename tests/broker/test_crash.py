"""kill -9 of a real gateway process mid-session, then a restart: a consistent state."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.cli import main
from policy import admin, totp
from policy.config import Settings, render_settings
from policy.models import Device, Recording, Session
from policy.vault import Vault
from recorder.readers import parse
from recorder.s3 import MIN_PART, S3Storage
from tests.conftest import grant
from tests.support.openssh import make_identity, run_ssh
from tests.support.seaweed import (
    ACCESS_KEY,
    SECRET_KEY,
    Seaweed,
    ready_bucket,
    run_seaweed,
    s3_storage,
)

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("sallyport")
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(exe), "serve", "--config", str(config), "--only", "gateway"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


async def wait_port(port: int) -> None:
    for _ in range(300):
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"gateway never listened on {port}")


async def test_kill_9_then_restart_closes_the_orphaned_session(
    settings: Settings, db: Sessions, vault: Vault, pump: Device, tmp_path: Path
) -> None:
    identity = make_identity(tmp_path, "vendor1")
    async with db() as s:
        await admin.add_vendor(s, "Infusia")
        _user, secret = await admin.add_vendor_user(
            s, vault, login="vendor1", vendor="Infusia", public_keys=[identity.public_key_line]
        )
    await grant(db, devices=["pump-12"])
    port = free_port()
    live = replace(settings, gateway_port=port, web_port=free_port(), node_name="node-a")
    config = tmp_path / "sallyport.toml"
    config.write_text(render_settings(live))
    log = tmp_path / "gateway.log"

    first = start_gateway(config, log)
    try:
        await wait_port(port)
        ssh = asyncio.ensure_future(
            run_ssh(
                tmp_path, host="127.0.0.1", port=port, user="vendor1:pump-12",
                identity=identity, command="echo before-crash; sleep 60",
                answers=[totp.code_at(secret, datetime.now(UTC))],
            )
        )  # fmt: skip
        for _ in range(200):  # until the output is on disk (flushed within a second)
            async with db() as s:
                key = await s.scalar(select(Recording.storage_key))
            path = live.recordings_dir / key if key else None
            if path and path.exists() and b"before-crash" in parse(path.read_bytes()).output():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the recording never showed the output")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        result = await asyncio.wait_for(ssh, 30)
        assert result.returncode != 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()

    async with db() as s:
        assert (await s.scalars(select(Session))).one().ended_at is None  # the crash left it open

    second = start_gateway(config, log)
    try:
        await wait_port(port)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
        recording = (await s.scalars(select(Recording))).one()
    assert session.end_reason == "gateway-crash" and session.ended_at is not None
    data = (live.recordings_dir / recording.storage_key).read_bytes()
    assert recording.status == "incomplete"
    assert recording.sha256 == hashlib.sha256(data).hexdigest() and recording.size == len(data)
    assert b"before-crash" in parse(data).output()
    # and the evidence still verifies: the audit chain is intact across the crash
    assert await asyncio.to_thread(main, ["audit", "verify", "--config", str(config)]) == 0


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


async def test_kill_9_on_s3_completes_the_upload_from_the_parts_that_arrived(
    settings: Settings, db: Sessions, vault: Vault, pump: Device, tmp_path: Path, seaweed: Seaweed
) -> None:
    """On S3 a crash leaves a multipart upload open: the restart completes it from the
    parts S3 holds, and the recording's hash is that of the object it produced."""
    bucket = f"crash-{uuid.uuid4().hex[:10]}"
    store = s3_storage(seaweed, bucket, "rec/")
    await asyncio.to_thread(ready_bucket, store)
    identity = make_identity(tmp_path, "vendor1")
    async with db() as s:
        await admin.add_vendor(s, "Infusia")
        _user, secret = await admin.add_vendor_user(
            s, vault, login="vendor1", vendor="Infusia", public_keys=[identity.public_key_line]
        )
    await grant(db, devices=["pump-12"])
    port = free_port()
    live = replace(
        settings, gateway_port=port, node_name="node-s3", recordings_backend="s3",
        s3_endpoint=seaweed.endpoint, s3_bucket=bucket, s3_prefix="rec/",
    )  # fmt: skip
    config = tmp_path / "sallyport.toml"
    config.write_text(render_settings(live))
    log = tmp_path / "gateway.log"
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    first = start_gateway(config, log, env)
    try:
        await wait_port(port)
        ssh = asyncio.ensure_future(
            run_ssh(
                tmp_path, host="127.0.0.1", port=port, user="vendor1:pump-12",
                identity=identity, command="head -c 12000000 /dev/zero; sleep 60",
                answers=[totp.code_at(secret, datetime.now(UTC))],
            )
        )  # fmt: skip
        for _ in range(300):  # until S3 holds at least one part (8 MiB) of the recording
            async with db() as s:
                key = await s.scalar(select(Recording.storage_key))
            if key and await asyncio.to_thread(_parts_uploaded, store, key):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no part of the recording ever reached S3")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        await asyncio.wait_for(ssh, 30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()

    second = start_gateway(config, log, env)
    try:
        await wait_port(port)
        for _ in range(100):
            async with db() as s:
                recording = (await s.scalars(select(Recording))).one()
            if recording.sha256 is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    data = await asyncio.to_thread(store.read, recording.storage_key)
    store.close()
    assert recording.status == "incomplete" and len(data) >= MIN_PART
    assert recording.sha256 == hashlib.sha256(data).hexdigest() and recording.size == len(data)
    output = parse(data).output()  # a prefix of the 12 MB of zeros, readable as it stands
    assert len(output) > 4_000_000 and set(output) == {0}
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
    assert session.end_reason == "gateway-crash"


def _parts_uploaded(store: S3Storage, key: str) -> bool:
    async def go() -> bool:
        name = store.object_key(key)
        listing = await store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=name)
        for upload in listing.get("Uploads", []):
            parts = await store.client.list_parts(
                Bucket=store.bucket, Key=name, UploadId=upload["UploadId"]
            )
            if parts.get("Parts"):
                return True
        return False

    return store.run(go())
