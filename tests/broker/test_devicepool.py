"""One device connection shared by session channels (``upstream_reuse``), seen from the
real sshd device's log: how many times the gateway logged in, and when it left."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway, build_context, start_gateway
from policy import store
from policy.config import Settings, load_settings
from policy.errors import ConfigError
from policy.models import Device, Session
from policy.vault import DEVICE_CREDENTIAL, Vault
from tests.broker.test_gateway import settled
from tests.conftest import VendorLogin, grant
from tests.support.openssh import client_env, make_askpass, ssh_argv
from tests.support.sshd import SshdDevice, _descendants

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]

LOOP = "echo ready; while read l; do echo got:$l; done; echo bye"


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Reuse on unless a test's parameter says otherwise (``indirect`` parametrize)."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    return dataclasses.replace(settings, **{"upstream_reuse": True, **overrides})


def logins(device: SshdDevice) -> int:
    """Password logins the device accepted: the gateway's (the vaulted credential)."""
    return device.log_text().count("Accepted password for ")


def departures(device: SshdDevice) -> int:
    return device.log_text().count("Disconnected from user ")


async def until(check: Any, what: str, timeout: float = 15) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@dataclasses.dataclass
class Held:
    """A vendor session held open: ``while read`` on the device echoes each line."""

    proc: asyncio.subprocess.Process

    async def line(self) -> bytes:
        assert self.proc.stdout is not None
        return await asyncio.wait_for(self.proc.stdout.readline(), 15)

    async def echo(self, text: str) -> bytes:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.line()

    async def finish(self) -> tuple[int, bytes]:
        """EOF to the device: the loop ends and the command exits 0."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        rest = await asyncio.wait_for(self.proc.stdout.read(), 15)
        return await asyncio.wait_for(self.proc.wait(), 15), rest

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def holding(
    vendor: VendorLogin, count: int, command: str = LOOP
) -> AsyncIterator[list[Held]]:
    """``count`` live sessions to pump-12, opened one after another (each its own code)."""
    held: list[Held] = []
    try:
        for _ in range(count):
            askpass = make_askpass(vendor.workdir, [vendor.code()])
            argv = ssh_argv(
                host="127.0.0.1",
                port=vendor.gateway.port,
                user=f"{vendor.login}:pump-12",
                identity=vendor.identity,
                command=command,
            )
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=client_env(askpass.env),
                start_new_session=True,
            )
            held.append(Held(proc))
            assert await held[-1].line() == b"ready\n"
        yield held
    finally:
        for h in held:
            if h.proc.returncode is None:
                h.kill()
                await h.proc.wait()


async def test_sequential_sessions_share_one_device_login(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    first = await vendor.ssh("pump-12", "echo one")
    second = await vendor.ssh("pump-12", "echo two; exit 4")
    assert (first.returncode, first.stdout) == (0, b"one\n")
    assert (second.returncode, second.stdout) == (4, b"two\n")
    assert logins(sshd_device) == 1  # the second session rode the first one's connection
    assert departures(sshd_device) == 0  # kept for the next session
    [kept] = gateway.ctx.devices.connections()
    assert kept.channels == 0
    await settled(db)
    async with db() as s:
        ended = [(r.end_reason, r.exit_status) for r in await s.scalars(select(Session))]
    assert sorted(ended, key=str) == [("exit", 0), ("exit", 4)]


@pytest.mark.parametrize("settings", [{"upstream_reuse": False}], indirect=True)
async def test_reuse_off_logs_in_for_every_session(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    for word in ("one", "two"):
        result = await vendor.ssh("pump-12", f"echo {word}")
        assert result.stdout == f"{word}\n".encode()
    assert logins(sshd_device) == 2
    await until(lambda: departures(sshd_device) == 2, "both connections closed")
    assert gateway.ctx.devices.connections() == []


async def test_a_changed_credential_makes_a_new_connection(
    vendor: VendorLogin, pump: Device, db: Sessions, vault: Vault, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    assert (await vendor.ssh("pump-12", "echo one")).stdout == b"one\n"
    # the same password sealed again: a new stored secret, so a new login
    async with db() as s:
        sealed = vault.seal_text(sshd_device.password, DEVICE_CREDENTIAL)
        await s.execute(update(Device).values(credential_secret=sealed))
        await s.commit()
    assert (await vendor.ssh("pump-12", "echo two")).stdout == b"two\n"
    assert logins(sshd_device) == 2
    assert (await vendor.ssh("pump-12", "echo three")).stdout == b"three\n"
    assert logins(sshd_device) == 2  # and that one is shared in turn


async def test_a_repinned_host_key_is_checked_again(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    assert (await vendor.ssh("pump-12", "echo one")).stdout == b"one\n"
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    for pinned in (impostor, f"{sshd_device.host_public_key} re-pinned"):
        async with db() as s:
            await s.execute(update(Device).values(ssh_host_key=pinned))
            await s.commit()
        result = await vendor.ssh("pump-12", "echo two")
        if pinned == impostor:  # the open connection (checked against the old key) is not used
            assert result.returncode != 0 and result.stdout == b""
            assert "does not match the pinned one" in result.stderr
        else:
            assert result.stdout == b"two\n"
    assert logins(sshd_device) == 2  # the first, and one checked against the new pin
    assert len(gateway.ctx.devices.connections()) == 2  # the first expires when idle


@pytest.mark.parametrize("settings", [{"upstream_max_channels": 2}], indirect=True)
async def test_sessions_beyond_max_channels_open_another_connection(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    async with holding(vendor, 3) as held:
        assert [await h.echo(f"n{i}") for i, h in enumerate(held)] == [
            b"got:n0\n",
            b"got:n1\n",
            b"got:n2\n",
        ]
        assert logins(sshd_device) == 2
        assert sorted(c.channels for c in gateway.ctx.devices.connections()) == [1, 2]
        assert [await h.finish() for h in held] == [(0, b"bye\n")] * 3


@pytest.mark.parametrize("settings", [{"upstream_max_channels": 50}], indirect=True)
async def test_a_device_refusing_more_channels_gets_another_connection(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    """sshd allows 10 sessions per connection (MaxSessions): the 11th is refused there
    and opened on a second connection, the vendor sees nothing of it."""
    await grant(db, devices=["pump-12"])
    async with holding(vendor, 11) as held:
        assert await held[-1].echo("eleventh") == b"got:eleventh\n"
        assert logins(sshd_device) == 2
        assert sorted(c.channels for c in gateway.ctx.devices.connections()) == [1, 10]
        assert [await h.finish() for h in held] == [(0, b"bye\n")] * 11


@pytest.mark.parametrize("settings", [{"upstream_idle_seconds": 0.3}], indirect=True)
async def test_an_idle_connection_is_closed(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    async with holding(vendor, 1) as held:
        assert await held[0].echo("x") == b"got:x\n"
        await asyncio.sleep(0.6)  # longer than the idle time: a busy connection stays
        assert departures(sshd_device) == 0
        assert await held[0].echo("y") == b"got:y\n"
        assert await held[0].finish() == (0, b"bye\n")
    await until(lambda: departures(sshd_device) == 1, "the idle connection closed")
    assert gateway.ctx.devices.connections() == []
    assert (await vendor.ssh("pump-12", "echo again")).stdout == b"again\n"
    assert logins(sshd_device) == 2


async def test_a_killed_session_leaves_the_other_on_the_connection_working(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    await grant(db, devices=["pump-12"])
    async with holding(vendor, 2) as (gone, stays):
        gone.kill()  # the vendor's client dies: its channel closes, not the connection
        await until(lambda: gateway.ctx.devices.connections()[0].channels == 1, "one left")
        assert await stays.echo("still") == b"got:still\n"
        assert (await vendor.ssh("pump-12", "echo third")).stdout == b"third\n"
        assert await stays.finish() == (0, b"bye\n")
    assert logins(sshd_device) == 1 and departures(sshd_device) == 0
    await settled(db)
    async with db() as s:
        reasons = sorted(str(r.end_reason) for r in await s.scalars(select(Session)))
    assert reasons == ["exit", "exit", "vendor-disconnect"]


async def test_commands_outliving_their_channels_do_not_block_new_sessions(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    """sshd keeps a session (and its MaxSessions slot) until its command exits, even once
    the gateway closed the channel: ten vendors gone from ``sleep`` commands fill the
    connection from the device's side while the pool counts none. The next session goes
    to a new connection instead of being refused."""
    await grant(db, devices=["pump-12"])
    async with holding(vendor, 10, "echo ready; exec sleep 60") as held:  # each said ready
        assert [c.channels for c in gateway.ctx.devices.connections()] == [10]
        for h in held:
            h.kill()
        await until(lambda: gateway.ctx.devices.connections()[0].channels == 0, "all closed")
    after = await vendor.ssh("pump-12", "echo after")
    assert (after.returncode, after.stdout) == (0, b"after\n")
    assert logins(sshd_device) == 2


@pytest.mark.parametrize(
    "settings", [{"upstream_reuse": True}, {"upstream_reuse": False}], indirect=True
)
async def test_a_device_dropping_the_connection_ends_its_sessions(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    gateway: Gateway,
    sshd_device: SshdDevice,
    settings: Settings,
) -> None:
    """As without sharing: each session on the lost connection ends ("exit", no status)."""
    await grant(db, devices=["pump-12"])
    async with holding(vendor, 2) as held:
        assert logins(sshd_device) == (1 if settings.upstream_reuse else 2)
        for pid in _descendants(sshd_device.pid):  # sshd's per-connection processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        codes = [await asyncio.wait_for(h.proc.wait(), 15) for h in held]
    assert all(code != 0 for code in codes)
    await settled(db)
    async with db() as s:
        ended = [(r.end_reason, r.exit_status) for r in await s.scalars(select(Session))]
    assert ended == [("exit", None), ("exit", None)]
    assert gateway.ctx.devices.connections() == []
    # the next session logs in afresh
    assert (await vendor.ssh("pump-12", "echo back")).stdout == b"back\n"


async def test_shutdown_closes_the_shared_connections(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    settings: Settings,
    sshd_device: SshdDevice,
    tmp_path: Path,
) -> None:
    await grant(db, devices=["pump-12"])
    ctx = build_context(settings)
    ctx.clock = vendor.clock
    own = await start_gateway(ctx, host="127.0.0.1", port=0)
    try:
        on_own = dataclasses.replace(vendor, gateway=own)
        assert (await on_own.ssh("pump-12", "echo one")).stdout == b"one\n"
        assert len(own.ctx.devices.connections()) == 1
    finally:
        await own.close()
    assert own.ctx.devices.connections() == []
    await until(lambda: departures(sshd_device) == 1, "the device saw the gateway leave")


async def test_concurrent_first_sessions_wait_for_one_login(
    pump: Device, db: Sessions, gateway: Gateway, sshd_device: SshdDevice
) -> None:
    async with db() as s:
        device = await store.device(s, "pump-12")
    assert device is not None
    pool = gateway.ctx.devices
    opened = await asyncio.gather(
        *(pool.open_session(device, asyncssh.SSHClientSession, "true") for _ in range(4))
    )
    assert logins(sshd_device) == 1  # one login; the other three waited for it
    [shared] = pool.connections()
    assert shared.channels == 4 and {conn for _chan, conn in opened} == {shared.conn}
    for chan, conn in opened:
        chan.close()
        pool.release(conn)
    assert shared.channels == 0


def test_settings_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "sallyport.toml"
    config.write_text(
        'data_dir = "d"\n[gateway]\nupstream_reuse = true\nupstream_max_channels = 4\n'
        "upstream_idle_seconds = 5\n"
    )
    s = load_settings(config, env={})
    assert (s.upstream_reuse, s.upstream_max_channels, s.upstream_idle_seconds) == (True, 4, 5.0)
    s = load_settings(config, env={"SALLYPORT_GATEWAY_UPSTREAM_REUSE": "off"})
    assert s.upstream_reuse is False
    for bad, message in (
        ("upstream_max_channels = 0", "upstream_max_channels: at least 1"),
        ("upstream_idle_seconds = -1", "upstream_idle_seconds: not negative"),
        ('upstream_reuse = "maybe"', "cannot read 'maybe' as true or false"),
    ):
        config.write_text(f'data_dir = "d"\n[gateway]\n{bad}\n')
        with pytest.raises(ConfigError, match=message):
            load_settings(config, env={})
