"""Shared fixtures: a real database (SQLite or PostgreSQL), a gateway, a real sshd device.

The database comes from ``SALLYPORT_TEST_DB``: ``sqlite`` (default) or ``postgresql``
(``SALLYPORT_TEST_PG`` names the server, default 127.0.0.1:5432 with trust auth). The
schema is migrated once per run; each test starts from empty tables.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.cli import prepare
from broker.gateway import Gateway, build_context, start_gateway
from policy import admin, migrate, totp
from policy.config import Settings
from policy.db import create_engine, session_factory
from policy.keyfiles import load_vault
from policy.models import Base, CredentialKind, Device
from policy.vault import Vault
from tests.support.openssh import ClientIdentity, SshResult, make_identity, run_ssh
from tests.support.pgdb import scratch_database
from tests.support.sshd import SshdDevice, run_sshd


def _backend() -> str:
    backend = os.environ.get("SALLYPORT_TEST_DB", "sqlite")
    if backend not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"SALLYPORT_TEST_DB={backend!r}: use sqlite or postgresql")
    return backend


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: a SQLite file to copy, or a PostgreSQL database to truncate."""
    if _backend() == "sqlite":
        path = tmp_path_factory.mktemp("db") / "template.db"
        migrate.upgrade(f"sqlite+aiosqlite:///{path}")
        yield str(path)
        return
    with scratch_database("sallyport_test") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def database_url(migrated_template: str, tmp_path: Path) -> str:
    if _backend() == "sqlite":
        path = tmp_path / "sallyport.db"
        shutil.copyfile(migrated_template, path)
        return f"sqlite+aiosqlite:///{path}"
    # the policy generation's single row is part of the schema (migration 0006): kept
    tables = ", ".join(
        f'"{t.name}"' for t in Base.metadata.sorted_tables if t.name != "policy_generation"
    )
    engine = create_sync_engine(migrated_template.replace("+asyncpg", "+psycopg"))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return migrated_template


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    data = tmp_path / "data"
    s = Settings(
        data_dir=data,
        database_url=database_url,
        gateway_host="127.0.0.1",
        gateway_port=0,
        browser_port=0,
        recordings_dir=data / "recordings",
        node_name="test-node",
    )
    prepare(s)
    return s


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings.database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def vault(settings: Settings) -> Vault:
    return load_vault(settings.vault_key_path)


@dataclass
class Clock:
    """Real time plus an offset the tests move forward (one fresh TOTP step per login)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gateway(settings: Settings, clock: Clock) -> AsyncIterator[Gateway]:
    ctx = build_context(settings)
    ctx.clock = clock
    gw = await start_gateway(ctx, host="127.0.0.1", port=0)
    yield gw
    await gw.close()


@pytest.fixture
def sshd_device(tmp_path: Path) -> Iterator[SshdDevice]:
    with run_sshd(tmp_path / "sshd") as device:
        yield device


@dataclass
class VendorLogin:
    """A vendor user with a real key, able to log in through the gateway with OpenSSH."""

    login: str
    secret: str
    identity: ClientIdentity
    workdir: Path
    gateway: Gateway
    clock: Clock
    password: str | None = None

    def code(self) -> str:
        """A code for a step later than any used so far (the replay guard refuses reuse)."""
        self.clock.offset += timedelta(seconds=totp.STEP_SECONDS)
        return totp.code_at(self.secret, self.clock())

    async def ssh(
        self,
        device: str | None,
        command: list[str] | str | None = None,
        *,
        answers: list[str] | None = None,
        identity: ClientIdentity | bool | None = True,
        **kwargs: object,
    ) -> SshResult:
        user = f"{self.login}:{device}" if device else self.login
        return await run_ssh(
            self.workdir,
            host="127.0.0.1",
            port=self.gateway.port,
            user=user,
            identity=self.identity if identity is True else (identity or None),
            command=command,
            answers=answers if answers is not None else [self.code()],
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
async def vendor(
    tmp_path: Path,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    gateway: Gateway,
    clock: Clock,
) -> VendorLogin:
    identity = make_identity(tmp_path, "vendor1")
    async with db() as s:
        await admin.add_vendor(s, "Infusia Medical")
        _user, secret = await admin.add_vendor_user(
            s,
            vault,
            login="vendor1",
            vendor="Infusia Medical",
            public_keys=[identity.public_key_line],
            password="correct horse battery staple",
        )
    return VendorLogin(
        "vendor1",
        secret,
        identity,
        tmp_path,
        gateway,
        clock,
        password="correct horse battery staple",
    )


@pytest.fixture
async def pump(
    db: async_sessionmaker[AsyncSession], vault: Vault, sshd_device: SshdDevice
) -> Device:
    """The real sshd, in the inventory as ``pump-12`` with its password vaulted."""
    async with db() as s:
        await admin.add_segment(s, "icu")
        return await admin.add_device(
            s,
            vault,
            name="pump-12",
            segment="icu",
            address=sshd_device.host,
            services=[admin.ServiceSpec("ssh", sshd_device.port)],
            credential=admin.Credential(
                sshd_device.username, CredentialKind.PASSWORD, sshd_device.password
            ),
            host_key=sshd_device.host_public_key,
        )


async def grant(
    db: async_sessionmaker[AsyncSession],
    *,
    devices: list[str],
    start: datetime | None = None,
    end: datetime | None = None,
    login: str = "vendor1",
    services: list[str] | None = None,
) -> int:
    now = datetime.now(UTC)
    async with db() as s:
        g = await admin.add_grant(
            s,
            login=login,
            devices=devices,
            services=services or ["ssh"],
            ticket="CHG0001234",
            start=start or now - timedelta(minutes=1),
            end=end or now + timedelta(hours=2),
            approved_by="test",
        )
        return g.id
