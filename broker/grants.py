"""The grant list a vendor sees on ``ssh vendor1@gateway``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from policy.decide import GrantView, live_grants


def render_grants(
    grants: Sequence[GrantView], now: datetime, pty: bool, connect_hint: str
) -> bytes:
    """Live grants with where the session must end (the current occurrence's end for a
    recurring grant), then recurring grants between occurrences with when they reopen, so
    the vendor sees both what works now and when the rest will."""
    live = live_grants(grants, now)
    waiting = _between_occurrences(grants, now)
    lines: list[str] = []
    if live:
        lines.append(_header("WINDOW ENDS (UTC)"))
        for grant in live:
            window = grant.window_at(now)
            assert window is not None  # live_grants keeps only grants open now
            lines.extend(_rows(grant, window[1]))
    else:
        lines.append("sallyport: you have no live grants right now.")
    if waiting:
        lines += ["", "recurring grants between occurrences:", _header("NEXT OPENS (UTC)")]
        for opens, grant in waiting:
            lines.extend(_rows(grant, opens))
    if live or waiting:
        lines += ["", f"connect with: {connect_hint}"]
    end = "\r\n" if pty else "\n"
    return end.join(lines).encode() + end.encode()


def _between_occurrences(
    grants: Sequence[GrantView], now: datetime
) -> list[tuple[datetime, GrantView]]:
    """Recurring grants inside their window but not open now, soonest reopening first."""
    waiting = []
    for grant in grants:
        if grant.recurrence is None or not grant.window_start <= now < grant.window_end:
            continue
        opens = grant.next_opening(now)
        if opens is not None and opens > now:
            waiting.append((opens, grant))
    return sorted(waiting, key=lambda pair: pair[0])


def _header(when: str) -> str:
    return f"{'DEVICE':<20} {'SERVICES':<20} {'TICKET':<16} {when:<18} RECURRING"


def _rows(grant: GrantView, when: datetime) -> list[str]:
    services = ",".join(sorted(grant.services))
    weekly = grant.recurrence.describe() if grant.recurrence is not None else "-"
    return [
        f"{device:<20} {services:<20} {grant.ticket_ref:<16} {when:%Y-%m-%d %H:%M}   {weekly}"
        for device in sorted(grant.devices)
    ]
