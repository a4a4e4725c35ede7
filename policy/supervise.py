"""What should happen to a live session now: a pure function of the facts and ``now``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from policy.errors import ConfigError

DEFAULT_WARNINGS = (15 * 60, 5 * 60, 60)


@dataclass(frozen=True)
class Limits:
    warnings: tuple[int, ...] = DEFAULT_WARNINGS  # seconds before the window ends
    idle_timeout: int | None = 30 * 60
    max_session: int | None = 12 * 3600


def limits_from(warnings: Sequence[str], idle_timeout: int, max_session: int) -> Limits:
    """Limits from settings: warnings in seconds; 0 turns a limit off."""
    try:
        seconds = tuple(sorted({int(w) for w in warnings}, reverse=True))
    except ValueError:
        raise ConfigError(
            "config-invalid", f"session.window_warnings: {','.join(warnings)!r} is not seconds"
        ) from None
    if any(w <= 0 for w in seconds) or idle_timeout < 0 or max_session < 0:
        raise ConfigError("config-invalid", "session limits must be positive (0 turns one off)")
    return Limits(seconds, idle_timeout or None, max_session or None)


@dataclass(frozen=True)
class LiveFacts:
    now: datetime
    started: datetime
    last_activity: datetime
    window_end: datetime | None
    revoked: str | None = None  # by whom, if the grant was revoked
    killed_by: str | None = None  # by whom, if a kill was asked for
    warned: frozenset[int] = frozenset()
    idle_timeout: int | None = None  # the grant's own limits override Limits
    max_session: int | None = None


@dataclass(frozen=True)
class Action:
    end_reason: str | None = None
    warned: tuple[int, ...] = ()  # warning thresholds this action fulfils
    message: str = ""


NOTHING = Action()


def next_action(facts: LiveFacts, limits: Limits) -> Action:
    """End (with a reason and a message for the vendor), warn, or leave alone."""
    if facts.killed_by is not None:
        return Action("killed", message=f"sallyport: session ended by {facts.killed_by}")
    if facts.revoked is not None:
        return Action("revoked", message="sallyport: your grant was revoked; session closed")
    if facts.window_end is not None and facts.now >= facts.window_end:
        return Action(
            "window-ended", message="sallyport: your access window has ended; closing the session"
        )
    max_session = facts.max_session if facts.max_session is not None else limits.max_session
    if max_session is not None and facts.now - facts.started >= timedelta(seconds=max_session):
        return Action(
            "max-session-length",
            message=f"sallyport: maximum session length ({_span(max_session)}) reached",
        )
    idle = facts.idle_timeout if facts.idle_timeout is not None else limits.idle_timeout
    if idle is not None and facts.now - facts.last_activity >= timedelta(seconds=idle):
        return Action("idle-timeout", message=f"sallyport: idle for {_span(idle)}; session closed")
    if facts.window_end is not None:
        left = (facts.window_end - facts.now).total_seconds()
        due = [w for w in limits.warnings if left <= w and w not in facts.warned]
        if due:  # one message, even if several thresholds passed since the last look
            return Action(
                warned=tuple(due),
                message=(
                    f"sallyport: your access window ends in {_span(int(left + 0.5))} "
                    f"(at {facts.window_end:%H:%M} UTC)"
                ),
            )
    return NOTHING


def _span(seconds: int) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds} s"
