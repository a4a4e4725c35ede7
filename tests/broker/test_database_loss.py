"""The database goes away under a running gateway: no new sessions, live ones close.

The gateway runs on its own PostgreSQL server, started and then stopped by this test, so
the suite's shared database is not touched.
"""

from __future__ import annotations

import asyncio
import glob
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.cli import prepare
from broker.gateway import Gateway, build_context, start_gateway
from policy import admin
from policy.config import Settings
from policy.db import create_engine, session_factory
from policy.keyfiles import load_signing_key, load_vault
from policy.models import AuditEvent, CredentialKind, Session
from recorder.verify import verify_chain
from tests.conftest import Clock, VendorLogin
from tests.support.openssh import make_identity
from tests.support.sshd import SshdDevice

pytestmark = pytest.mark.integration


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]


class PrivatePostgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sallyport-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def start(self) -> None:
        data = self.dir / "data"
        if not data.exists():
            self._as_postgres(_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(self.dir / "log"), "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"
        )

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", _pg_bin("pg_ctl"), "-D", str(pg.dir / "data"),
             "-m", "immediate", "stop"],
            capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(pg.dir, ignore_errors=True)


@pytest.fixture
async def lonely_gateway(
    private_pg: PrivatePostgres,
    settings: Settings,
    sshd_device: SshdDevice,
    clock: Clock,
    tmp_path: Path,
) -> AsyncIterator[tuple[Gateway, VendorLogin]]:
    s = replace(settings, database_url=private_pg.url)
    await asyncio.to_thread(prepare, s)
    vault = load_vault(s.vault_key_path)
    identity = make_identity(tmp_path, "vendor1")
    engine = create_engine(s.database_url)
    async with session_factory(engine)() as db:
        await admin.add_segment(db, "icu")
        await admin.add_device(
            db, vault, name="pump-12", segment="icu", address=sshd_device.host,
            services=[admin.ServiceSpec("ssh", sshd_device.port)],
            credential=admin.Credential(sshd_device.username, CredentialKind.PASSWORD,
                                        sshd_device.password),
            host_key=sshd_device.host_public_key,
        )  # fmt: skip
        await admin.add_vendor(db, "Infusia")
        _u, secret = await admin.add_vendor_user(
            db, vault, login="vendor1", vendor="Infusia", public_keys=[identity.public_key_line]
        )
        from datetime import timedelta

        now = clock()
        await admin.add_grant(
            db, login="vendor1", devices=["pump-12"], services=["ssh"], ticket="CHG1",
            start=now - timedelta(minutes=1), end=now + timedelta(hours=1), approved_by="test",
        )  # fmt: skip
    await engine.dispose()
    ctx = build_context(s)
    ctx.clock = clock
    ctx.supervisor.db_grace = 1.0
    gateway = await start_gateway(ctx, host="127.0.0.1", port=0)
    yield gateway, VendorLogin("vendor1", secret, identity, tmp_path, gateway, clock)
    await gateway.close()


async def test_losing_the_database_refuses_new_sessions_and_closes_live_ones(
    lonely_gateway: tuple[Gateway, VendorLogin], private_pg: PrivatePostgres
) -> None:
    gateway, vendor = lonely_gateway
    live = asyncio.ensure_future(vendor.ssh("pump-12", "echo up; sleep 60"))
    for _ in range(100):
        if gateway.ctx.supervisor.live:
            break
        await asyncio.sleep(0.1)
    assert gateway.ctx.supervisor.live, "the session never started"
    await asyncio.to_thread(private_pg.stop)

    refused = await vendor.ssh("pump-12", "echo should-not-run")
    assert refused.returncode == 255 and refused.stdout == b""
    assert "cannot reach its database" in refused.stderr

    result = await asyncio.wait_for(live, 30)
    assert result.stdout == b"up\n"
    assert "lost its database" in result.stderr

    # what happened while the database was away reaches the audit chain once it is back
    await asyncio.to_thread(private_pg.start)
    tags: list[str] = []
    for _ in range(100):
        async with gateway.ctx.sessions() as db:
            rows = list(await db.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        tags = [r.tag for r in rows if r.detail.get("spool_id")]
        if "broker:session:end" in tags:
            break
        await asyncio.sleep(0.2)
    assert "broker:login:deny" in tags and "broker:session:end" in tags
    denied = next(r for r in rows if r.tag == "broker:login:deny")
    assert denied.detail["reason"] == "database-unreachable" and denied.detail["occurred_at"]
    async with gateway.ctx.sessions() as db:
        key = load_signing_key(gateway.ctx.settings.audit_key_path)
        assert (await verify_chain(db, key.public_key())).ok
    for _ in range(50):  # and the session row gets its end, written once the database is back
        async with gateway.ctx.sessions() as db:
            ended = list(await db.scalars(select(Session).where(Session.ended_at.is_not(None))))
        if ended:
            break
        await asyncio.sleep(0.2)
    assert [s.end_reason for s in ended] == ["database-unreachable"]
