"""What the API modules share: how times and recurring windows are written, and telling
people about workflow events.

Times go out as RFC 3339 in UTC with ``Z`` and keep their microseconds: a client that
reads a request's window and sends it back (approving it unchanged) must send exactly
the window the approvals bind, or it would count as a narrowed window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from policy.models import VendorUser
from policy.windows import Weekly
from web.api_input import Schema, obj
from web.context import ctx

RECURRENCE: Schema = {
    **obj(
        {
            "days": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 6},
                "minItems": 1,
                "maxItems": 7,
                "description": "weekdays, 0 (Monday) to 6 (Sunday)",
            },
            "start": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"},
            "end": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"},
            "tz": {"type": "string", "description": "IANA time zone, e.g. Europe/Berlin"},
        }
    ),
    "description": (
        "a weekly window in local wall time: sessions may start only inside an occurrence;"
        " an end before the start runs past midnight"
    ),
}
SCHEMAS: dict[str, Schema] = {"Recurrence": RECURRENCE}


def stamp(value: datetime) -> str:
    """``2030-05-01T08:00:00.250000Z``: UTC, microseconds kept."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def maybe_stamp(value: datetime | None) -> str | None:
    return stamp(value) if value is not None else None


def recurrence(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored recurrence as the API shows it (normalized)."""
    return Weekly.parse(stored).to_json() if stored else None


def schedule(stored: Mapping[str, Any] | None) -> str:
    """``once``, or the weekly window described for people."""
    return Weekly.parse(stored).describe() if stored else "once"


async def vendor_email(db: AsyncSession, vendor_user_id: int) -> list[str]:
    """The vendor user's own address, for the events that concern them."""
    address = await db.scalar(select(VendorUser.email).where(VendorUser.id == vendor_user_id))
    return [address] if address else []


def notify(
    request: web.Request, event: str, payload: Mapping[str, Any], email_to: Sequence[str] = ()
) -> None:
    """Tell people (email, webhooks) when a notifier is configured; never fails the call."""
    notifier = ctx(request).notifier
    if notifier is not None:
        notifier.emit(event, payload, email_to=email_to)
