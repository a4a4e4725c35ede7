"""Before authentication: how much of the gateway an unauthenticated peer may hold.

Like OpenSSH's ``MaxStartups``, ``PerSourceMaxStartups`` and ``PerSourcePenalties``: a
connection that has not authenticated yet holds an *admission*; there are at most
``per_source`` of them per source and ``total`` in all, and a source whose connections
keep failing authentication is refused outright for a while (``penalty_seconds``,
doubling with each further penalty up to ``penalty_max``). Sources are addresses, IPv6
ones by /64 (one host usually holds a whole /64). Pure accounting, clock passed in: the
listeners (``broker.gateway``, the browser door) ask ``admit(source)``, close a refused
connection before any protocol work, ``release()`` the admission when the peer has
authenticated or left, and report ``failed`` / ``succeeded``.

``AuditThrottle`` keeps refusals from flooding the audit chain: per source and reason at
most one event a minute, carrying how many refusals it stands for.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from recorder import metrics

if TYPE_CHECKING:
    from broker.context import GatewayContext

log = structlog.get_logger(__name__)

PER_SOURCE = "preauth-per-source"
TOTAL = "preauth-total"
PENALTY = "preauth-penalty"

MESSAGES = {
    PER_SOURCE: "too many unauthenticated connections from your address; try again later",
    TOTAL: "the gateway is busy with unauthenticated connections; try again later",
    PENALTY: "too many failed logins from your address; try again later",
}


def source_key(address: str) -> str:
    """The unit limits count by: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after: float  # seconds

    @property
    def message(self) -> str:
        return MESSAGES[self.reason]


@dataclass
class Admission:
    limiter: PreAuthLimiter
    source: str
    released: bool = False

    def release(self) -> None:
        """The peer authenticated or left: its slot is free (idempotent)."""
        if not self.released:
            self.released = True
            self.limiter._release(self.source)


@dataclass
class _Source:
    open: int = 0
    failures: deque[float] = field(default_factory=deque)
    strikes: int = 0
    penalized_until: float = 0.0


class PreAuthLimiter:
    def __init__(
        self,
        *,
        per_source: int,
        total: int,
        penalty_failures: int,
        penalty_seconds: float,
        penalty_window: float = 60.0,
        penalty_max: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_source, self.total = per_source, total
        self.penalty_failures, self.penalty_seconds = penalty_failures, penalty_seconds
        self.penalty_window, self.penalty_max = penalty_window, penalty_max
        self.clock = clock
        self.open = 0
        self._sources: dict[str, _Source] = {}

    def admit(self, address: str) -> Admission | Refusal:
        key, now = source_key(address), self.clock()
        state = self._sources.get(key)
        if state is not None and state.penalized_until > now:
            return Refusal(PENALTY, state.penalized_until - now)
        if state is not None and state.open >= self.per_source:
            return Refusal(PER_SOURCE, 1.0)
        if self.open >= self.total:
            return Refusal(TOTAL, 1.0)
        if state is None:
            state = self._sources[key] = _Source()
        state.open += 1
        self.open += 1
        return Admission(self, key)

    def failed(self, address: str) -> None:
        """A connection from ``address`` ended without authenticating."""
        key, now = source_key(address), self.clock()
        state = self._sources.setdefault(key, _Source())
        state.failures.append(now)
        while state.failures and state.failures[0] <= now - self.penalty_window:
            state.failures.popleft()
        if len(state.failures) >= self.penalty_failures:
            state.failures.clear()
            length = min(self.penalty_seconds * 2**state.strikes, self.penalty_max)
            state.strikes += 1
            state.penalized_until = now + length

    def succeeded(self, address: str) -> None:
        state = self._sources.get(source_key(address))
        if state is not None:
            state.failures.clear()
            state.strikes = 0
            self._forget(source_key(address), state)

    def penalized(self, address: str) -> bool:
        state = self._sources.get(source_key(address))
        return state is not None and state.penalized_until > self.clock()

    def _release(self, key: str) -> None:
        state = self._sources.get(key)
        self.open -= 1
        if state is not None:
            state.open -= 1
            self._forget(key, state)

    def _forget(self, key: str, state: _Source) -> None:
        """Drop a source with nothing left to remember (the table stays small)."""
        if not state.open and not state.failures and state.penalized_until <= self.clock():
            if not state.strikes:
                self._sources.pop(key, None)

    def __len__(self) -> int:
        return len(self._sources)


class AuditThrottle:
    """At most one audit event per (source, reason) per ``window`` seconds."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._last: dict[tuple[str, str], float] = {}
        self._folded: dict[tuple[str, str], int] = {}

    def due(self, source: str, reason: str) -> int | None:
        """None: fold this refusal into the next event; else write one event standing for
        this many refusals (this one and those folded since the last event)."""
        key, now = (source_key(source), reason), self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._folded[key] = self._folded.get(key, 0) + 1
            return None
        if len(self._last) > 10_000:  # a spray of sources: forget the old ones
            cutoff = now - self.window
            for old in [k for k, t in self._last.items() if t < cutoff]:
                self._last.pop(old, None)
                self._folded.pop(old, None)
        self._last[key] = now
        return 1 + self._folded.pop(key, 0)


def record_refusal(ctx: GatewayContext, source: str, reason: str, **detail: Any) -> None:
    """A pre-login refusal: counted always, audited (``broker:preauth:refuse``) at most
    once a minute per source and reason, with how many refusals the event stands for."""
    metrics.refused(reason)
    count = ctx.refusals.due(source, reason)
    if count is not None:
        log.warning("connection refused before login", client=source, reason=reason, count=count)
        ctx.tasks.spawn(
            ctx.audit.record(
                "broker:preauth:refuse", client=source, reason=reason, count=count, **detail
            ),
            name="preauth-audit",
        )
