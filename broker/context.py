"""What every gateway connection shares: settings, database, vault, storage, audit,
notifications."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.ca import HostCA
from broker.devicepool import DevicePool
from broker.preauth import AuditThrottle, PreAuthLimiter
from broker.supervisor import Supervisor
from broker.tasks import TaskSet
from policy.cache import PolicyCache
from policy.config import Settings
from policy.models import utcnow
from policy.notify import Notifier
from policy.supervise import limits_from
from policy.vault import Vault
from recorder.audit import AuditLog
from recorder.flusher import Flusher
from recorder.storage import Storage


@dataclass
class GatewayContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    vault: Vault
    storage: Storage
    audit: AuditLog
    ca: HostCA
    flusher: Flusher = field(default_factory=Flusher)
    tasks: TaskSet = field(default_factory=TaskSet)
    clock: Callable[[], datetime] = utcnow
    notifier: Notifier | None = None  # email and webhooks for session events
    supervisor: Supervisor = field(init=False)
    devices: DevicePool = field(init=False)  # device connections (shared when upstream_reuse)
    policy: PolicyCache = field(init=False)  # logins, devices, grants (policy.cache)
    preauth: PreAuthLimiter = field(init=False)  # the SSH listener's, before login
    door_preauth: PreAuthLimiter = field(init=False)  # the browser door's, before a ticket
    refusals: AuditThrottle = field(default_factory=AuditThrottle)  # pre-login refusal events

    def __post_init__(self) -> None:
        s = self.settings
        limits = limits_from(
            s.session_window_warnings, s.session_idle_timeout, s.session_max_length
        )
        self.supervisor = Supervisor(self, limits)
        self.devices = DevicePool(
            self.vault,
            reuse=s.upstream_reuse,
            max_channels=s.upstream_max_channels,
            idle_seconds=s.upstream_idle_seconds,
            connect_timeout=s.upstream_connect_timeout,
        )
        self.policy = PolicyCache.for_url(self.sessions, s.database_url)
        self.preauth, self.door_preauth = (
            PreAuthLimiter(
                per_source=s.per_source_max_startups,
                total=s.max_startups,
                penalty_failures=s.penalty_failures,
                penalty_seconds=s.penalty_seconds,
            )
            for _ in range(2)
        )

    def now(self) -> datetime:
        return self.clock()
