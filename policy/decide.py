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

from policy.windows import Weekly, effective_window, next_opening


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
    OUTSIDE_RECURRING_WINDOW = "outside-recurring-window"


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
    observer_required: bool = False  # moderated: a staff observer must be present
    # sessions only inside an occurrence of this weekly window (policy.windows)
    recurrence: Weekly | None = None

    def window_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The interval a session may run in at ``now`` (the current occurrence of a
        recurring grant, clipped to the grant window), or None when it may not run."""
        if self.revoked_at is not None:
            return None
        return effective_window(self.window_start, self.window_end, self.recurrence, now)

    def live_at(self, now: datetime) -> bool:
        return self.window_at(now) is not None

    def next_opening(self, now: datetime) -> datetime | None:
        """When a session may next start under this grant (None: never again)."""
        if self.revoked_at is not None:
            return None
        return next_opening(self.window_start, self.window_end, self.recurrence, now)


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: Reason
    detail: str = ""
    grant: GrantView | None = None
    reasons: tuple[str, ...] = field(default=())
    # an allowed session's end: the grant window's, or the current occurrence's
    window_end: datetime | None = None

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
    and whose window ``[start, end)`` contains ``now`` (for a recurring grant: inside an
    occurrence too). The allowed session's ``window_end`` is where it must close: the
    grant window's end, or the current occurrence's. Otherwise the denial names the most
    specific reason, so the vendor learns why (window not started, between occurrences,
    ended, ...).
    """
    if not device_known:
        return Decision.deny(Reason.DEVICE_UNKNOWN, device)
    for_device = [g for g in grants if device in g.devices]
    if not for_device:
        return Decision.deny(Reason.NO_GRANT, device)
    with_service = [g for g in for_device if service in g.services]
    if not with_service:
        return Decision.deny(Reason.SERVICE_NOT_GRANTED, f"{service} on {device}")
    open_now = [(g, w) for g in with_service if (w := g.window_at(now)) is not None]
    if open_now:  # the grant that lets the session run longest
        grant, window = max(open_now, key=lambda gw: gw[1][1])
        return Decision(
            True,
            Reason.ALLOWED,
            grant=grant,
            reasons=(f"grant {grant.id} ({grant.ticket_ref}) covers {service} on {device}",),
            window_end=window[1],
        )
    return _closed(device, with_service, now)


def _closed(device: str, grants: Sequence[GrantView], now: datetime) -> Decision:
    """Why none of these grants (for the device and service) is open now.

    The soonest reopening wins, so the vendor learns when to come back; a recurring
    grant between occurrences names the next one and the weekly window.
    """
    unrevoked = [g for g in grants if g.revoked_at is None]
    openings = [(at, g) for g in unrevoked if (at := g.next_opening(now)) is not None]
    if openings:
        at, grant = min(openings, key=lambda pair: pair[0])
        weekly = f", recurring {grant.recurrence.describe()}" if grant.recurrence else ""
        if now < grant.window_start:
            return Decision.deny(
                Reason.WINDOW_NOT_STARTED, f"window starts {at:%Y-%m-%d %H:%M} UTC{weekly}"
            )
        # inside its window yet not open: a recurring grant between occurrences
        return Decision.deny(
            Reason.OUTSIDE_RECURRING_WINDOW,
            f"next occurrence starts {at:%Y-%m-%d %H:%M} UTC{weekly}",
        )
    spent = [
        (g, g.recurrence)
        for g in unrevoked
        if g.recurrence is not None and g.window_start <= now < g.window_end
    ]
    if spent:  # the window still runs, but its last occurrence is over
        last, weekly_window = max(spent, key=lambda pair: pair[0].window_end)
        return Decision.deny(
            Reason.OUTSIDE_RECURRING_WINDOW,
            f"no further occurrence of {weekly_window.describe()} before the window ends "
            f"{last.window_end:%Y-%m-%d %H:%M} UTC",
        )
    if unrevoked:
        last = max(unrevoked, key=lambda g: g.window_end)
        return Decision.deny(
            Reason.WINDOW_ENDED, f"window ended {last.window_end:%Y-%m-%d %H:%M} UTC"
        )
    return Decision.deny(Reason.GRANT_REVOKED, device)


def live_grants(grants: Sequence[GrantView], now: datetime) -> list[GrantView]:
    """The grants a vendor may use now, soonest-ending first (by the current occurrence)."""
    open_now = [(w[1], g) for g in grants if (w := g.window_at(now)) is not None]
    return [g for _, g in sorted(open_now, key=lambda pair: pair[0])]
