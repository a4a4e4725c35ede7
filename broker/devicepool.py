"""One authenticated SSH connection per device, shared by the session channels to it.

A vendor session needs one session channel on the device. Logging in to the device for
each one costs a key exchange and a login; with ``upstream_reuse`` on, the gateway keeps
the connection and opens the next session's channel on it.

A connection is reused only for a device exactly as it was when the connection was made:
the pool key holds the device id, address, ssh port, credential username and kind, the
credential secret *as stored* (encrypted), and the pinned host key. Any change in the
inventory makes a new connection; the old one serves its open channels and then expires.

Limits: at most ``upstream_max_channels`` channels per connection (OpenSSH's sshd allows
10 by default, ``MaxSessions``), and a device that refuses a channel on a kept connection
caps that connection where it is, the session going to another one (sshd counts a
session until its command exits, even after the gateway closed the channel: a revoked
``sleep 600`` still holds its slot). A connection without
channels is closed after ``upstream_idle_seconds``. A lost connection leaves the pool at
once; its channels end as they do when any device goes away.

With ``upstream_reuse`` off every session logs in on its own and its connection closes
with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import structlog

from broker.errors import UpstreamError
from broker.upstream import connect_device, ssh_port
from policy.models import Device
from policy.vault import Vault

log = structlog.get_logger(__name__)

# Channel-open failures that, on a connection with other channels open, mean "not on this
# connection": OpenSSH's sshd answers a session beyond MaxSessions with "connect failed:
# open failed" (code 2); other servers say "administratively prohibited" or "resource
# shortage".
FULL_CODES = frozenset(
    {
        asyncssh.OPEN_CONNECT_FAILED,
        asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
        asyncssh.OPEN_RESOURCE_SHORTAGE,
    }
)
# Fresh connections tried for one channel before the refusal reaches the vendor.
ATTEMPTS = 4

SessionFactory = Callable[[], asyncssh.SSHClientSession[bytes]]


@dataclass(frozen=True)
class PoolKey:
    """Everything a device connection was made from."""

    device_id: int
    address: str
    port: int
    username: str
    kind: str
    secret: bytes  # the encrypted credential as stored, never the plaintext
    host_key: str


def pool_key(device: Device) -> PoolKey:
    return PoolKey(
        device.id,
        device.address,
        ssh_port(device),
        device.credential_username or "",
        device.credential_kind.value if device.credential_kind else "",
        bytes(device.credential_secret or b""),
        device.ssh_host_key or "",
    )


@dataclass(eq=False)
class Pooled:
    """One device connection and the channels open on it."""

    key: PoolKey
    conn: asyncssh.SSHClientConnection
    limit: int
    channels: int = 0
    lost: bool = False
    idle: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def has_room(self) -> bool:
        return not self.lost and self.channels < self.limit


class _Watch(asyncssh.SSHClient):
    """Tells the pool when the device side of a pooled connection goes away."""

    def __init__(self, pool: DevicePool) -> None:
        self.pool = pool
        self.entry: Pooled | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.entry is not None:
            self.pool._lost(self.entry)


class DevicePool:
    def __init__(
        self,
        vault: Vault,
        *,
        reuse: bool,
        max_channels: int,
        idle_seconds: float,
        connect_timeout: float,
    ) -> None:
        self.vault = vault
        self.reuse = reuse
        self.max_channels = max_channels
        self.idle_seconds = idle_seconds
        self.connect_timeout = connect_timeout
        self._pools: dict[PoolKey, list[Pooled]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._by_conn: dict[asyncssh.SSHClientConnection, Pooled] = {}
        self._closing = False

    # -- what the relay calls -----------------------------------------------------------

    async def open_session(
        self, device: Device, factory: SessionFactory, command: str | None, **options: Any
    ) -> tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientConnection]:
        """A session channel on ``device`` (as ``SSHClientConnection.create_session``),
        and the connection it is on: hand that connection to :meth:`release` when the
        session ends."""
        if not self.reuse:
            return await self._open_unpooled(device, factory, command, options)
        key = pool_key(device)
        for _ in range(ATTEMPTS):
            entry, made = await self._acquire(key, device)
            others = entry.channels - 1
            try:
                chan, _session = await entry.conn.create_session(factory, command, **options)
            except asyncssh.ChannelOpenError as exc:
                log.info(
                    "device refused a channel", code=exc.code, reason=exc.reason, others=others
                )
                self._release(entry)
                # A full connection: try another. Full can mean channels this pool has
                # already closed: sshd keeps a session (and its MaxSessions slot) until
                # the command exits, so a kept connection with none of ours open can be
                # full too. Only a fresh connection's refusal is the device's answer.
                if exc.code in FULL_CODES and (others or not made):
                    entry.limit = min(entry.limit, entry.channels)
                    continue
                raise _refused(device, exc) from None
            except (asyncssh.Error, OSError) as exc:
                self._drop(entry)
                if made:
                    raise _unreachable(device, exc) from None
                continue  # a kept connection that died unnoticed: log in afresh
            except BaseException:
                self._release(entry)
                raise
            return chan, entry.conn
        raise UpstreamError(
            "device-channel-refused",
            f"device '{device.name}' refused a new session on every connection tried",
        )

    def release(self, conn: asyncssh.SSHClientConnection) -> None:
        """A session on ``conn`` ended (its channel already closed)."""
        entry = self._by_conn.get(conn)
        if entry is None:  # not pooled: one connection per session, as without the pool
            conn.close()
            return
        self._release(entry)

    async def close(self) -> None:
        """Gateway shutdown: close every device connection the pool holds."""
        self._closing = True
        entries = [e for pool in self._pools.values() for e in pool]
        for entry in entries:
            self._drop(entry)
        await asyncio.gather(*(e.conn.wait_closed() for e in entries), return_exceptions=True)

    # -- what tests and metrics look at ---------------------------------------------------

    def connections(self) -> list[Pooled]:
        return [e for pool in self._pools.values() for e in pool]

    # -- inside ---------------------------------------------------------------------------

    async def _open_unpooled(
        self, device: Device, factory: SessionFactory, command: str | None, options: Any
    ) -> tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientConnection]:
        conn = await connect_device(device, self.vault, self.connect_timeout)
        try:
            chan, _session = await conn.create_session(factory, command, **options)
        except asyncssh.ChannelOpenError as exc:
            conn.close()
            raise _refused(device, exc) from None
        except BaseException:
            conn.close()
            raise
        return chan, conn

    async def _acquire(self, key: PoolKey, device: Device) -> tuple[Pooled, bool]:
        """A slot on a connection for ``key`` (and whether the connection is new). One
        login per key at a time: concurrent first sessions wait for it instead of each
        logging in."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self._closing:
                raise UpstreamError("gateway-closing", "sallyport: the gateway is shutting down")
            entry = self._pick(self._pools.get(key, ()))
            made = entry is None
            if entry is None:
                entry = await self._connect(key, device)
            entry.channels += 1
            if entry.idle is not None:
                entry.idle.cancel()
                entry.idle = None
            return entry, made

    def _pick(self, entries: Iterable[Pooled]) -> Pooled | None:
        """The busiest connection with room: idle ones expire instead of lingering."""
        roomy = [e for e in entries if e.has_room]
        return max(roomy, key=lambda e: e.channels, default=None)

    async def _connect(self, key: PoolKey, device: Device) -> Pooled:
        watch = _Watch(self)
        conn = await connect_device(
            device, self.vault, self.connect_timeout, client_factory=lambda: watch
        )
        entry = watch.entry = Pooled(key, conn, self.max_channels)
        self._pools.setdefault(key, []).append(entry)
        self._by_conn[conn] = entry
        log.info("device connection opened", device=device.name, pooled=len(self._by_conn))
        return entry

    def _release(self, entry: Pooled) -> None:
        entry.channels -= 1
        if entry.channels > 0 or entry.lost:
            return
        if self.idle_seconds <= 0 or self._closing:
            self._drop(entry)
            return
        loop = asyncio.get_running_loop()
        entry.idle = loop.call_later(self.idle_seconds, self._expire, entry)

    def _expire(self, entry: Pooled) -> None:
        entry.idle = None
        if entry.channels == 0:
            log.info("idle device connection closed", idle_seconds=self.idle_seconds)
            self._drop(entry)

    def _lost(self, entry: Pooled) -> None:
        if not entry.lost:
            log.info("device connection lost", channels=entry.channels)
        self._forget(entry)

    def _drop(self, entry: Pooled) -> None:
        self._forget(entry)
        entry.conn.close()

    def _forget(self, entry: Pooled) -> None:
        entry.lost = True
        if entry.idle is not None:
            entry.idle.cancel()
            entry.idle = None
        self._by_conn.pop(entry.conn, None)
        pool = self._pools.get(entry.key)
        if pool is not None and entry in pool:
            pool.remove(entry)
            if not pool:
                del self._pools[entry.key]
                lock = self._locks.get(entry.key)
                if lock is not None and not lock.locked():
                    del self._locks[entry.key]


def _refused(device: Device, exc: asyncssh.ChannelOpenError) -> UpstreamError:
    return UpstreamError(
        "device-channel-refused",
        f"device '{device.name}' refused the session ({exc.reason or exc.code})",
    )


def _unreachable(device: Device, exc: BaseException) -> UpstreamError:
    return UpstreamError(
        "device-unreachable", f"device '{device.name}' is unreachable ({type(exc).__name__})"
    )
