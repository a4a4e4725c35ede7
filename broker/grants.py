"""The grant list a vendor sees on ``ssh vendor1@gateway``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from policy.decide import GrantView, live_grants


def render_grants(
    grants: Sequence[GrantView], now: datetime, pty: bool, connect_hint: str
) -> bytes:
    live = live_grants(grants, now)
    if not live:
        lines = ["sallyport: you have no live grants right now."]
    else:
        lines = [f"{'DEVICE':<20} {'SERVICES':<20} {'TICKET':<16} WINDOW ENDS (UTC)"]
        for grant in live:
            services = ",".join(sorted(grant.services))
            for device in sorted(grant.devices):
                lines.append(
                    f"{device:<20} {services:<20} {grant.ticket_ref:<16} "
                    f"{grant.window_end:%Y-%m-%d %H:%M}"
                )
        lines.append("")
        lines.append(f"connect with: {connect_hint}")
    end = "\r\n" if pty else "\n"
    return end.join(lines).encode() + end.encode()
