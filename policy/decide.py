"""Access decisions: pure functions of data and ``now``.

The broker turns SSH events into questions ("may vendor1 log in?", "may vendor1 open a
shell on pump-12 now?") and acts on the Decision. Nothing here reads a clock, a socket or
the database, so every rule can be tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Reason(StrEnum):
    """Machine-readable decision reasons; the broker maps them to messages and codes."""

    ALLOWED = "allowed"
    UNKNOWN_USER = "unknown-user"
    USER_DISABLED = "user-disabled"
    USER_LOCKED = "user-locked"
    DEVICE_UNKNOWN = "device-unknown"
    NO_GRANT = "no-grant"
    WINDOW_NOT_STARTED = "window-not-started"
    WINDOW_ENDED = "window-ended"
    GRANT_REVOKED = "grant-revoked"
    SERVICE_NOT_GRANTED = "service-not-granted"


@dataclass(frozen=True)
class UserView:
    login: str
    disabled: bool
    locked_until: datetime | None


@dataclass(frozen=True)
class GrantView:
    id: int
    ticket_ref: str
    devices: frozenset[str]
    services: frozenset[str]
    window_start: datetime
    window_end: datetime
    revoked_at: datetime | None = None
    transfers: str = "read-write"
    idle_timeout: int | None = None
    max_session: int | None = None

    def live_at(self, now: datetime) -> bool:
        return self.revoked_at is None and self.window_start <= now < self.window_end


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: Reason
    detail: str = ""
    grant: GrantView | None = None
    reasons: tuple[str, ...] = field(default=())

    @classmethod
    def deny(cls, reason: Reason, detail: str = "") -> Decision:
        return cls(False, reason, detail, None, (f"{reason}: {detail}" if detail else reason,))


def decide_login(user: UserView | None, now: datetime) -> Decision:
    """May this vendor user authenticate at all (before the factors are checked)?"""
    if user is None:
        return Decision.deny(Reason.UNKNOWN_USER)
    if user.disabled:
        return Decision.deny(Reason.USER_DISABLED)
    if user.locked_until is not None and now < user.locked_until:
        return Decision.deny(Reason.USER_LOCKED, f"locked until {user.locked_until:%H:%M:%S} UTC")
    return Decision(True, Reason.ALLOWED, reasons=("user may authenticate",))


def decide_target(
    device: str,
    device_known: bool,
    service: str,
    grants: Iterable[GrantView],
    now: datetime,
) -> Decision:
    """May the vendor (whose grants these are) use ``service`` on ``device`` at ``now``?

    Allows only through a grant that names the device and the service, is not revoked,
    and whose window ``[start, end)`` contains ``now``. Otherwise the denial names the
    most specific reason, so the vendor learns why (window not started, ended, ...).
    """
    if not device_known:
        return Decision.deny(Reason.DEVICE_UNKNOWN, device)
    for_device = [g for g in grants if device in g.devices]
    if not for_device:
        return Decision.deny(Reason.NO_GRANT, device)
    with_service = [g for g in for_device if service in g.services]
    if not with_service:
        return Decision.deny(Reason.SERVICE_NOT_GRANTED, f"{service} on {device}")
    live = [g for g in with_service if g.live_at(now)]
    if live:
        grant = max(live, key=lambda g: g.window_end)
        return Decision(
            True,
            Reason.ALLOWED,
            grant=grant,
            reasons=(f"grant {grant.id} ({grant.ticket_ref}) covers {service} on {device}",),
        )
    unrevoked = [g for g in with_service if g.revoked_at is None]
    upcoming = sorted((g for g in unrevoked if now < g.window_start), key=_start)
    if upcoming:
        return Decision.deny(
            Reason.WINDOW_NOT_STARTED,
            f"window starts {upcoming[0].window_start:%Y-%m-%d %H:%M} UTC",
        )
    if unrevoked:
        last = max(unrevoked, key=lambda g: g.window_end)
        return Decision.deny(
            Reason.WINDOW_ENDED, f"window ended {last.window_end:%Y-%m-%d %H:%M} UTC"
        )
    return Decision.deny(Reason.GRANT_REVOKED, device)


def live_grants(grants: Sequence[GrantView], now: datetime) -> list[GrantView]:
    """The grants a vendor may use now, soonest-ending first."""
    return sorted((g for g in grants if g.live_at(now)), key=lambda g: g.window_end)


def _start(grant: GrantView) -> datetime:
    return grant.window_start
