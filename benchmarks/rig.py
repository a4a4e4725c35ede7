"""The benchmark rig: a real sshd device, an OpenSSH jump host, and a sallyport gateway
running as its own process (``sallyport serve``), all on loopback.

The session-setup measurement compares the gateway with and without a shared device
connection (``upstream_reuse``): ``extra_gateway`` starts another ``sallyport serve
--only gateway`` on the same data with one setting, so both run fresh in one rig and
their rounds interleave.

Every path is driven by the stock OpenSSH client with public-key auth; the gateway path
also answers the TOTP prompt (through a tiny shell askpass, so it costs no interpreter
start). Each gateway login uses its own vendor user, because the replay guard accepts a
TOTP step only once per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh

from benchmarks.stats import process_cpu_seconds
from broker.cli import prepare
from broker.keys import load_host_key
from policy import admin, totp
from policy.config import Settings, default_database_url, render_settings
from policy.db import create_engine, session_factory
from policy.keyfiles import load_vault
from policy.models import CredentialKind
from tests.support.openssh import ClientIdentity, make_identity
from tests.support.sshd import SshdDevice, run_sshd

DEVICE = "bench-dev"


@dataclass
class VendorUserKey:
    login: str
    secret: str
    identity: ClientIdentity


@dataclass(frozen=True)
class GatewayProcess:
    port: int
    pid: int
    reuse: bool  # upstream_reuse: one device connection shared by the sessions


@dataclass
class Rig:
    workdir: Path
    device: SshdDevice
    jump: SshdDevice
    identity: ClientIdentity
    gateway_port: int
    gateway_pid: int
    users: list[VendorUserKey]
    askpass: Path
    database_url: str = ""
    gateway_host_key: str = ""  # "ssh-ed25519 AAAA..." for pinning from asyncssh clients
    kex: str | None = None  # pin the client's key exchange on every path (None: defaults)
    settings: Settings | None = None
    extra: dict[bool, GatewayProcess] = field(default_factory=dict)  # by upstream_reuse
    _next_user: int = field(default=0)
    _load_users: int = field(default=0)

    def _common(self, port: int, identity: ClientIdentity | None = None) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"IdentityFile={(identity or self.identity).private_key}",
            "-o",
            "BatchMode=no",
            *(["-o", f"KexAlgorithms={self.kex}"] if self.kex else []),
            "-p",
            str(port),
        ]

    def direct(self, command: str) -> tuple[list[str], dict[str, str]]:
        argv = [*self._common(self.device.port), f"{self.device.username}@127.0.0.1", command]
        return argv, _env()

    def jump_host(self, command: str) -> tuple[list[str], dict[str, str]]:
        hop = f"{self.jump.username}@127.0.0.1:{self.jump.port}"
        # The inner hop inherits no -o options from the command line for the jump leg, so
        # the jump host's options go through a ProxyCommand built the same way -J does.
        proxy = " ".join(
            shlex.quote(a)
            for a in [*self._common(self.jump.port), "-W", "%h:%p", hop.split(":")[0]]
        )
        argv = [
            *self._common(self.device.port),
            "-o",
            f"ProxyCommand={proxy}",
            f"{self.device.username}@127.0.0.1",
            command,
        ]
        return argv, _env()

    def gateway(self, command: str) -> tuple[list[str], dict[str, str]]:
        return self.gateway_as(self.next_user(), command)

    def next_user(self) -> VendorUserKey:
        user = self.users[self._next_user]
        self._next_user += 1
        return user

    def gateway_with(self, reuse: bool) -> GatewayProcess:
        """The gateway process running with ``upstream_reuse`` = ``reuse``: an extra one
        if there is one, else the rig's own."""
        assert self.settings is not None
        if reuse in self.extra:
            return self.extra[reuse]
        if self.settings.upstream_reuse == reuse:
            return GatewayProcess(self.gateway_port, self.gateway_pid, reuse)
        raise RuntimeError(f"no gateway with upstream_reuse={reuse} is running (extra_gateway)")

    def gateway_reuse(self, reuse: bool) -> Callable[[str], tuple[list[str], dict[str, str]]]:
        """A path (as ``gateway``) through the gateway with ``upstream_reuse`` = ``reuse``."""
        port = self.gateway_with(reuse).port
        return lambda command: self.gateway_as(self.next_user(), command, port)

    def device_logins(self) -> int:
        """Logins the device's sshd accepted with the vaulted password: the gateway's own
        (direct and jump clients log in with a key)."""
        return self.device.log_text().count("Accepted password for ")

    def gateway_as(
        self, user: VendorUserKey, command: str, port: int | None = None
    ) -> tuple[list[str], dict[str, str]]:
        argv = [
            *self._common(port or self.gateway_port, user.identity),
            "-o",
            "PreferredAuthentications=publickey,keyboard-interactive",
            f"{user.login}:{DEVICE}@127.0.0.1",
            command,
        ]
        env = _env()
        env.update(
            SSH_ASKPASS=str(self.askpass),
            SSH_ASKPASS_REQUIRE="force",
            DISPLAY=":0",
            SP_CODE=totp.code_at(user.secret, datetime.now(UTC)),
        )
        return argv, env

    def gateway_cpu_seconds(self, pid: int | None = None) -> float:
        return process_cpu_seconds(pid or self.gateway_pid)

    def gateway_rss_bytes(self) -> int:
        return rss_bytes(self.gateway_pid)

    @property
    def recordings_dir(self) -> Path:
        assert self.settings is not None
        return self.settings.recordings_dir

    def gateway_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.gateway_pid}/fd"))

    def add_load_users(self, count: int) -> list[LoadUser]:
        """``count`` more vendor users, each granted the device, with in-process keys (an
        asyncssh pool logs in as them; ssh-keygen per user would only cost time)."""
        keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(count)]
        first = len(self.users) + self._load_users
        self._load_users += count
        logins = [f"load{first + i:05d}" for i in range(count)]
        lines = [k.export_public_key().decode().strip() for k in keys]
        assert self.settings is not None
        secrets = asyncio.run(_seed_users(self.settings, logins, lines))
        return [
            LoadUser(login, secret, key.export_private_key().decode())
            for login, secret, key in zip(logins, secrets, keys, strict=True)
        ]


@dataclass
class LoadUser:
    login: str
    secret: str
    private_key: str  # OpenSSH format, unencrypted (a throwaway benchmark key)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TERM")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(
    settings: Settings, device: SshdDevice, identities: list[ClientIdentity]
) -> list[VendorUserKey]:
    vault = load_vault(settings.vault_key_path)
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as db:
            await admin.add_segment(db, "bench")
            await admin.add_device(
                db,
                vault,
                name=DEVICE,
                segment="bench",
                address=device.host,
                services=[admin.ServiceSpec("ssh", device.port)],
                credential=admin.Credential(
                    device.username, CredentialKind.PASSWORD, device.password
                ),
                host_key=device.host_public_key,
            )
            await admin.add_vendor(db, "Bench Vendor")
    finally:
        await engine.dispose()
    logins = [f"bench{i:04d}" for i in range(len(identities))]
    secrets = await _seed_users(settings, logins, [i.public_key_line for i in identities])
    return [
        VendorUserKey(login, secret, identity)
        for login, secret, identity in zip(logins, secrets, identities, strict=True)
    ]


async def _seed_users(settings: Settings, logins: list[str], public_keys: list[str]) -> list[str]:
    """Vendor users of the bench vendor, each with one key and a grant to the device for
    the next six hours; returns their TOTP secrets."""
    vault = load_vault(settings.vault_key_path)
    engine = create_engine(settings.database_url)
    now = datetime.now(UTC)
    secrets = []
    try:
        async with session_factory(engine)() as db:
            for login, key in zip(logins, public_keys, strict=True):
                _user, secret = await admin.add_vendor_user(
                    db, vault, login=login, vendor="Bench Vendor", public_keys=[key]
                )
                await admin.add_grant(
                    db,
                    login=login,
                    devices=[DEVICE],
                    services=["ssh"],
                    ticket="CHG0000001",
                    start=now - timedelta(minutes=1),
                    end=now + timedelta(hours=6),
                    approved_by="benchmark",
                )
                secrets.append(secret)
    finally:
        await engine.dispose()
    return secrets


@contextlib.contextmanager
def rig(workdir: Path, users: int) -> Iterator[Rig]:
    workdir.mkdir(parents=True, exist_ok=True)
    identity = make_identity(workdir, "bench-client")
    with (
        run_sshd(workdir / "device", username="spbench") as device,
        run_sshd(workdir / "jump", username="spbench") as jump,
    ):
        device.add_authorized_key(identity.public_key_line)
        jump.add_authorized_key(identity.public_key_line)
        data = workdir / "gateway"
        port = _free_port()
        settings = Settings(
            data_dir=data,
            database_url=default_database_url(data),
            gateway_host="127.0.0.1",
            gateway_port=port,
            web_host="127.0.0.1",
            web_port=_free_port(),
            browser_port=0,  # ephemeral: the benchmarks use no browser door
            recordings_dir=data / "recordings",
            log_level="warning",
        )
        prepare(settings)
        host_key = load_host_key(settings.host_key_path).export_public_key().decode()
        config = data / "sallyport.toml"
        config.write_text(render_settings(settings))
        identities = [make_identity(workdir / "vendors", f"bench{i:04d}") for i in range(users)]
        seeded = asyncio.run(seed(settings, device, identities))
        askpass = write_askpass(workdir)
        reuse = {"SALLYPORT_GATEWAY_UPSTREAM_REUSE": str(settings.upstream_reuse).lower()}
        with _serve(config, workdir / "gateway.log", port, reuse) as proc:
            yield Rig(
                workdir, device, jump, identity, port, proc.pid, seeded, askpass,
                settings.database_url, " ".join(host_key.split()[:2]), settings=settings,
            )  # fmt: skip


@contextlib.contextmanager
def extra_gateway(r: Rig, reuse: bool) -> Iterator[GatewayProcess]:
    """Another gateway process (``--only gateway``) on the rig's data and database, with
    ``upstream_reuse`` = ``reuse`` (an environment override), as ``r.extra[reuse]``."""
    assert r.settings is not None
    port = _free_port()
    env = {
        "SALLYPORT_GATEWAY_PORT": str(port),
        "SALLYPORT_GATEWAY_UPSTREAM_REUSE": "true" if reuse else "false",
        # its own node name: it recovers only its own sessions
        "SALLYPORT_NODE_NAME": f"{r.settings.node_name}-reuse-{'on' if reuse else 'off'}",
    }
    config = r.settings.data_dir / "sallyport.toml"
    log_path = r.workdir / f"gateway-reuse-{'on' if reuse else 'off'}.log"
    with _serve(config, log_path, port, env, only="gateway") as proc:
        r.extra[reuse] = GatewayProcess(port, proc.pid, reuse)
        try:
            yield r.extra[reuse]
        finally:
            del r.extra[reuse]


@contextlib.contextmanager
def _serve(
    config: Path,
    log_path: Path,
    port: int,
    env: dict[str, str] | None = None,
    only: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``sallyport serve`` as its own process until the block exits."""
    argv = [str(Path(sys.executable).with_name("sallyport")), "serve", "--config", str(config)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, *(["--only", only] if only else [])],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            _wait_port(port, proc)
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def write_askpass(workdir: Path) -> Path:
    """The shell askpass that answers the TOTP prompt with ``$SP_CODE`` (no interpreter
    start per login, so it costs the measured setup nothing)."""
    askpass = workdir / "askpass.sh"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$SP_CODE"\n')
    askpass.chmod(0o755)
    return askpass


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("gateway did not start listening within 30 s")
