"""What the admin pages share: reading forms, auditing the refusals a page decides itself,
the status of a refusal, and the public address of a one-time link.

The pages themselves are in ``web.admin_inventory`` (devices, segments),
``web.admin_import`` (device import from a CSV file) and ``web.admin_people`` (vendor
organizations, staff, invites, API tokens). They call the domain layer
(``policy.inventory``, ``policy.csvimport``, ``policy.invites``, ``policy.tokens``), which
checks roles again, validates, audits its own refusals and records every change; a
handler only turns a form into arguments and an answer into a page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from policy.errors import NotFound, PolicyError
from web.auth import principal
from web.context import ctx
from web.errors import status_for

STAFF_ROLES = ("biomed", "security", "admin")  # in the order the pages show them
_SPLIT = re.compile(r"[\r\n]+")


def text(form: Mapping[str, Any], name: str) -> str:
    """A form field as text, stripped ("" when absent or a file)."""
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def secret(form: Mapping[str, Any], name: str) -> str:
    """A password field exactly as typed ("" when absent or a file)."""
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def lines(value: str, *, separators: str = "") -> list[str]:
    """The non-blank lines of a textarea (also split at ``separators``), each stripped."""
    parts = _SPLIT.split(value)
    for sep in separators:
        parts = [piece for part in parts for piece in part.split(sep)]
    return [p.strip() for p in parts if p.strip()]


def checked(form: Any, name: str) -> list[str]:
    """Every value of a checkbox group (``form`` is aiohttp's MultiDict)."""
    return [v.strip() for v in form.getall(name, []) if isinstance(v, str) and v.strip()]


def status(exc: PolicyError) -> int:
    """The status a page answers a refusal with (400, 403, 404, 409)."""
    return status_for(exc)


async def refused(request: web.Request, tag: str, exc: PolicyError, **detail: Any) -> None:
    """Audit a refusal this page decided itself (the policy functions audit theirs)."""
    await ctx(request).audit.record(
        tag, actor=principal(request).name, code=exc.code, message=exc.message, **detail
    )


async def not_found(request: web.Request, tag: str, what: str, **detail: Any) -> NotFound:
    """A ``NotFound`` for a link to something that is not there, audited."""
    exc = NotFound(f"{tag.split(':')[1]}-unknown", f"there is no such {what}")
    await refused(request, tag, exc, path=request.path, **detail)
    return exc


def int_param(request: web.Request, name: str) -> int | None:
    raw = request.match_info[name]
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 12 else None


def public_url(request: web.Request, path: str) -> str:
    """``path`` as a full link for someone elsewhere: ``web_public_url`` if it is set,
    else the scheme and host this request came in on (right for a direct connection,
    wrong behind a proxy that rewrites Host: set ``[web] public_url`` there)."""
    base = ctx(request).settings.web_public_url.rstrip("/")
    if not base:
        base = f"{request.scheme}://{request.host}"
    return f"{base}{path}"


def when(moment: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM`` (UTC, as the database holds it), or "—"."""
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "—"


def describe_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``address: 10.0.0.5 → 10.0.0.6`` for each field that differs."""
    return [
        f"{key}: {before[key] or '(none)'} → {after[key] or '(none)'}"
        for key in before
        if before[key] != after[key]
    ]
