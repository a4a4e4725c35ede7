"""The API's grants: the active ones, and revoking one (``policy.workflow.revoke_grant``).

A grant is what an approved request became: one vendor user, one ticket, named devices
and services, a window. "Active" means not revoked and not yet over (running now or
still to come). A vendor user sees their own; biomed, security and admin see all and may
revoke any, saying why; the gateways end its live sessions within a second.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from policy import requests_view, workflow
from policy.errors import NotFound
from policy.models import Grant, VendorUser
from policy.notify import grant_payload
from web.api_base import maybe_stamp, notify, recurrence, schedule, stamp, vendor_email
from web.api_input import (
    ID,
    TIME,
    Body,
    Call,
    Field,
    Param,
    Schema,
    nullable,
    obj,
    ref,
    strings,
    text,
)
from web.auth import actor, principal
from web.context import ctx
from web.openapi import ALL_ROLES, API, STAFF, Operation, json_reply

GRANT: Schema = obj(
    {
        "id": {"type": "integer"},
        "request_id": nullable({"type": "integer"}),
        "vendor_login": text(),
        "vendor_name": text(),
        "ticket": text(),
        "devices": strings(),
        "services": strings(),
        "start": TIME,
        "end": TIME,
        "recurrence": nullable(ref("Recurrence")),
        "schedule": text("once, or the weekly window sessions may start in"),
        "approved_by": text("ROLE:LOGIN,... of the approvals that made it"),
        "transfers": text("the file transfer rule: read-write, download-only, ..."),
        "observer_required": {
            "type": "boolean",
            "description": "the approvers asked for a staff observer (moderated sessions); "
            "a device may require one too",
        },
        "created_at": TIME,
        "revoked_at": nullable(TIME),
        "revoked_by": nullable(text()),
        "revoke_reason": nullable(text()),
    }
)
SCHEMAS: dict[str, Schema] = {
    "Grant": GRANT,
    "GrantList": obj({"grants": {"type": "array", "items": ref("Grant")}}),
}


def grant_json(grant: Grant) -> dict[str, Any]:
    """``grant.devices`` and ``grant.user.vendor`` must be loaded."""
    return {
        "id": grant.id,
        "request_id": grant.request_id,
        "vendor_login": grant.user.login,
        "vendor_name": grant.user.vendor.name,
        "ticket": grant.ticket_ref,
        "devices": sorted(d.name for d in grant.devices),
        "services": list(grant.services),
        "start": stamp(grant.window_start),
        "end": stamp(grant.window_end),
        "recurrence": recurrence(grant.recurrence),
        "schedule": schedule(grant.recurrence),
        "approved_by": grant.approved_by,
        "transfers": grant.transfers,
        "observer_required": grant.observer_required,
        "created_at": stamp(grant.created_at),
        "revoked_at": maybe_stamp(grant.revoked_at),
        "revoked_by": grant.revoked_by,
        "revoke_reason": grant.revoke_reason,
    }


async def load_grant(request: web.Request, grant_id: int) -> Grant:
    """The grant as it is now, with what ``grant_json`` needs, in a fresh session."""
    async with ctx(request).sessions() as db:
        grant = await db.scalar(
            select(Grant)
            .where(Grant.id == grant_id)
            .options(
                selectinload(Grant.devices),
                selectinload(Grant.user).selectinload(VendorUser.vendor),
            )
        )
    if grant is None:
        raise NotFound("grant-unknown", f"grant {grant_id} does not exist")
    return grant


async def list_grants(request: web.Request, call: Call) -> web.StreamResponse:
    who, context = principal(request), ctx(request)
    now = context.clock()
    async with context.sessions() as db:
        if who.kind == "vendor":
            grants = await requests_view.grants_for_vendor_user(db, who.id, now)
        else:
            grants = await requests_view.active_grants(db, now)
    return json_reply({"grants": [grant_json(g) for g in grants]})


async def revoke_grant(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), actor(request)
    async with context.sessions() as db:
        revoked = await workflow.revoke_grant(
            db, context.audit, who, call.params["id"], call.body["reason"], now=context.clock()
        )
        email = await vendor_email(db, revoked.vendor_user_id)
    grant = await load_grant(request, revoked.id)
    notify(request, "grant.revoked", grant_payload(grant, grant.user.login), email)
    return json_reply(grant_json(grant))


OPERATIONS = (
    Operation(
        "GET",
        f"{API}/grants",
        list_grants,
        "List active grants (not revoked, not over)",
        ALL_ROLES,
        "GrantList",
        "grants",
        description="A vendor user gets their own; staff get all. Soonest window first.",
        reply_description="the grants",
    ),
    Operation(
        "POST",
        f"{API}/grants/{{id}}/revoke",
        revoke_grant,
        "Revoke a grant now; its live sessions end",
        STAFF,
        "Grant",
        "grants",
        params=(Param("id", "path", ID, "the grant's id"),),
        body=Body((Field("reason", text("recorded and sent with the notice", minLength=1), True),)),
        conflicts=True,
        reply_description="the revoked grant",
    ),
)
