"""The notice every session starts with (NIST SP 800-53 AC-8, after login): the session
is recorded, under which ticket, and when the access window ends, in the vendor's time
zone where it is known (a recurring grant names one) and always in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def session_notice(ticket: str, window_end: datetime | None, tz: str | None, now: datetime) -> str:
    text = f"sallyport: this session is recorded and may be watched live. Ticket {ticket}."
    if window_end is None:
        return text
    end = window_end.astimezone(UTC)
    when = f"{end:%Y-%m-%d %H:%M} UTC"
    zone = _zone(tz)
    if zone is not None and tz != "UTC":
        local = window_end.astimezone(zone)
        when = f"{local:%Y-%m-%d %H:%M} {local.tzname() or tz} ({end:%H:%M} UTC)"
    return f"{text} Your access window ends {when}, in {_left(end - now.astimezone(UTC))}."


def _zone(tz: str | None) -> ZoneInfo | None:
    if not tz:
        return None
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _left(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"]
    return " ".join(parts)
