"""The API's administration: segments, vendor organizations, invites, staff, API tokens.

The same flows as the admin pages (``web.admin_inventory``, ``web.admin_people``), through
the same domain functions, which check the caller's roles again, validate, audit their
own refusals and record each change: ``policy.inventory`` (segment changes, a vendor's
devices, staff roles and accounts), ``policy.invites``, ``policy.tokens``. Two older
writes, ``policy.admin.add_segment`` and ``add_vendor``, audit nothing themselves, so
they are audited here as the pages do (``web:segment:created``, ``web:vendor:created``);
their "already exists" becomes a 409 (``segment-exists``, ``vendor-exists``). Refusals
decided here are ``web:api:refused``.

Who may do what is the pages' rule: everything is the admin's, except that biomed also
reads the vendor organizations, picks the devices each services and invites vendor
users. An invite link and a new token are in the answer to the POST and nowhere else:
the database keeps only their hashes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin as policy_admin
from policy import inventory, invites, tokens
from policy.actor import Actor, AuditSink
from policy.errors import Conflict, NotFound, PolicyError
from policy.models import ApiToken, Device, Segment, StaffUser, Vendor, VendorUser
from web.admin import STAFF_ROLES, public_url
from web.api_base import maybe_stamp, stamp
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
from web.openapi import API, Operation, json_reply, refused

ADMIN = frozenset({"admin"})
VENDOR_STAFF = frozenset({"admin", "biomed"})  # inventory.DEVICE_EDITORS, INVITERS["vendor"]
ROLE: Schema = {"type": "string", "enum": list(STAFF_ROLES)}
ROLES: Schema = {"type": "array", "items": ROLE, "minItems": 1, "maxItems": len(STAFF_ROLES)}

SEGMENT: Schema = obj(
    {
        "name": text(),
        "description": text(),
        "networks": strings("the segment's networks as CIDRs"),
        "devices": {"type": "integer", "description": "how many devices are in it"},
        "created_at": TIME,
    }
)
VENDOR_USER: Schema = obj(
    {"login": text(), "display_name": text(), "email": text(), "disabled": {"type": "boolean"}}
)
VENDOR: Schema = obj(
    {
        "name": text(),
        "devices": strings("the devices it services: its users may request only these"),
        "users": {"type": "array", "items": ref("VendorOrgUser")},
        "created_at": TIME,
    }
)
STAFF: Schema = obj(
    {
        "login": text(),
        "display_name": text(),
        "email": text(),
        "roles": {"type": "array", "items": ROLE},
        "disabled": {"type": "boolean"},
        "created_at": TIME,
    }
)
TOKEN_FIELDS: dict[str, Schema] = {
    "id": {"type": "integer"},
    "name": text(),
    "acts_as": text("staff:LOGIN or vendor:LOGIN"),
    "created_by": text(),
    "created_at": TIME,
    "last_used_at": nullable({**TIME, "description": "a hint, updated at most each minute"}),
    "revoked_at": nullable(TIME),
}
SCHEMAS: dict[str, Schema] = {
    "Segment": SEGMENT,
    "SegmentList": obj({"segments": {"type": "array", "items": ref("Segment")}}),
    "VendorOrgUser": VENDOR_USER,
    "VendorOrg": VENDOR,
    "VendorOrgList": obj({"vendors": {"type": "array", "items": ref("VendorOrg")}}),
    "InviteLink": obj(
        {
            "url": text("the one-time link to send; shown only now"),
            "expires_at": TIME,
            "kind": {"type": "string", "enum": ["vendor", "staff"]},
            "vendor": nullable(text()),
            "roles": {"type": "array", "items": ROLE},
            "email": text(),
        }
    ),
    "StaffUser": STAFF,
    "StaffList": obj({"staff": {"type": "array", "items": ref("StaffUser")}}),
    "ApiToken": obj(TOKEN_FIELDS),
    "ApiTokenList": obj({"tokens": {"type": "array", "items": ref("ApiToken")}}),
    "NewApiToken": obj(
        {**TOKEN_FIELDS, "token": text("the bearer token (spt_...); shown only now")}
    ),
}


def _as_conflict(exc: PolicyError, code: str) -> PolicyError:
    """``policy.admin``'s duplicate-name refusal ("conflict", a 400) as the 409 it is."""
    return Conflict(code, exc.message) if exc.code == "conflict" else exc


# --- segments -------------------------------------------------------------------------------


async def _segments(db: AsyncSession, name: str | None = None) -> list[dict[str, Any]]:
    query = select(Segment).order_by(Segment.name)
    if name is not None:
        query = query.where(Segment.name == name)
    rows = await db.execute(select(Device.segment_id, func.count()).group_by(Device.segment_id))
    counts = {int(segment_id): int(count) for segment_id, count in rows}
    return [
        {
            "name": s.name,
            "description": s.description,
            "networks": list(s.networks),
            "devices": counts.get(s.id, 0),
            "created_at": stamp(s.created_at),
        }
        for s in await db.scalars(query)
    ]


async def _segment_reply(request: web.Request, name: str, status: int = 200) -> web.Response:
    async with ctx(request).sessions() as db:
        found = await _segments(db, name)
    return json_reply(found[0], status=status)


async def list_segments(request: web.Request, call: Call) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        return json_reply({"segments": await _segments(db)})


async def create_segment(request: web.Request, call: Call) -> web.StreamResponse:
    context, body = ctx(request), call.body
    name = body["name"]
    try:
        async with context.sessions() as db:
            segment = await policy_admin.add_segment(
                db, name, body.get("description", "").strip(), body.get("networks", [])
            )
    except PolicyError as exc:
        refusal = _as_conflict(exc, "segment-exists")
        await refused(request, refusal, action="segment-create", segment=name[:100])
        raise refusal from None
    await context.audit.record(
        "web:segment:created",
        actor=principal(request).name,
        segment=segment.name,
        description=segment.description,
        networks=list(segment.networks),
    )
    return await _segment_reply(request, segment.name, status=201)


async def update_segment(request: web.Request, call: Call) -> web.StreamResponse:
    context, body = ctx(request), call.body
    async with context.sessions() as db:
        segment = await inventory.update_segment(
            db,
            context.audit,
            actor(request),
            call.params["name"],
            description=body.get("description"),
            networks=body.get("networks"),
        )
    return await _segment_reply(request, segment.name)


# --- vendor organizations -------------------------------------------------------------------


def vendor_json(vendor: Vendor) -> dict[str, Any]:
    """``vendor.devices`` and ``vendor.users`` must be loaded."""
    return {
        "name": vendor.name,
        "devices": sorted(d.name for d in vendor.devices),
        "users": [
            {
                "login": u.login,
                "display_name": u.display_name,
                "email": u.email,
                "disabled": u.disabled,
            }
            for u in sorted(vendor.users, key=lambda u: u.login)
        ],
        "created_at": stamp(vendor.created_at),
    }


async def _vendors(db: AsyncSession, name: str | None = None) -> list[Vendor]:
    query = (
        select(Vendor)
        .options(selectinload(Vendor.devices), selectinload(Vendor.users))
        .order_by(Vendor.name)
    )
    if name is not None:
        query = query.where(Vendor.name == name)
    return list(await db.scalars(query))


async def _vendor_reply(request: web.Request, name: str, status: int = 200) -> web.Response:
    async with ctx(request).sessions() as db:
        found = await _vendors(db, name)
    return json_reply(vendor_json(found[0]), status=status)


async def list_vendors(request: web.Request, call: Call) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        return json_reply({"vendors": [vendor_json(v) for v in await _vendors(db)]})


async def create_vendor(request: web.Request, call: Call) -> web.StreamResponse:
    context, name = ctx(request), call.body["name"]
    try:
        async with context.sessions() as db:
            vendor = await policy_admin.add_vendor(db, name)
    except PolicyError as exc:
        refusal = _as_conflict(exc, "vendor-exists")
        await refused(request, refusal, action="vendor-create", vendor=name[:200])
        raise refusal from None
    await context.audit.record(
        "web:vendor:created", actor=principal(request).name, vendor=vendor.name
    )
    return await _vendor_reply(request, vendor.name, status=201)


async def set_vendor_devices(request: web.Request, call: Call) -> web.StreamResponse:
    context, name = ctx(request), call.params["name"]
    async with context.sessions() as db:
        await inventory.set_vendor_devices(
            db, context.audit, actor(request), name, call.body["devices"]
        )
    return await _vendor_reply(request, name)


# --- invites --------------------------------------------------------------------------------


async def create_invite(request: web.Request, call: Call) -> web.StreamResponse:
    context, body = ctx(request), call.body
    async with context.sessions() as db:
        invite, token = await invites.create_invite(
            db,
            context.audit,
            actor(request),
            kind=body["kind"],
            vendor=body.get("vendor"),
            roles=body.get("roles", []),
            email=body.get("email", ""),
            hours=context.settings.workflow_invite_hours,
            now=context.clock(),
        )
    reply = {
        "url": public_url(request, f"/invite/{token}"),
        "expires_at": stamp(invite.expires_at),
        "kind": invite.kind,
        "vendor": invite.vendor.name if invite.vendor is not None else None,
        "roles": list(invite.roles),
        "email": invite.email,
    }
    return json_reply(reply, status=201)


# --- staff ----------------------------------------------------------------------------------


def staff_json(user: StaffUser) -> dict[str, Any]:
    return {
        "login": user.login,
        "display_name": user.display_name,
        "email": user.email,
        "roles": sorted(user.roles),
        "disabled": user.disabled,
        "created_at": stamp(user.created_at),
    }


async def list_staff(request: web.Request, call: Call) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        users = await db.scalars(select(StaffUser).order_by(StaffUser.login))
        return json_reply({"staff": [staff_json(u) for u in users]})


async def _staff_user(request: web.Request, login: str) -> StaffUser:
    async with ctx(request).sessions() as db:
        user = await db.scalar(select(StaffUser).where(StaffUser.login == login))
    if user is None:
        raise NotFound("login-unknown", f"staff user {login!r} does not exist")
    return user


async def update_staff(request: web.Request, call: Call) -> web.StreamResponse:
    """Roles and account state, each by its domain function (which audits it).

    The order keeps a refusal from leaving half a change: a disable goes first (after
    it, the user's roles may change freely: the last-admin rule counts enabled admins),
    and roles go before an enable (which cannot be refused). Roles are checked against
    the schema before either runs, so ``set_staff_roles`` has no input left to refuse.
    """
    context, who, body = ctx(request), actor(request), call.body
    login = call.params["login"]
    steps: list[Callable[[AsyncSession], Awaitable[StaffUser]]] = []
    if "roles" in body:
        steps.append(partial(_set_roles, context.audit, who, login, body["roles"]))
    if "disabled" in body:
        disable = body["disabled"]
        step = partial(_set_disabled, context.audit, who, login, disable)
        steps.insert(0 if disable else len(steps), step)
    for run in steps:
        async with context.sessions() as db:
            await run(db)
    try:
        user = await _staff_user(request, login)
    except NotFound as exc:  # only when nothing was asked to change
        await refused(request, exc, action="staff-update", login=login)
        raise
    return json_reply(staff_json(user))


async def _set_roles(
    audit: AuditSink, who: Actor, login: str, roles: list[str], db: AsyncSession
) -> StaffUser:
    return await inventory.set_staff_roles(db, audit, who, login, roles)


async def _set_disabled(
    audit: AuditSink, who: Actor, login: str, disabled: bool, db: AsyncSession
) -> StaffUser:
    return await inventory.set_staff_disabled(db, audit, who, login, disabled)


# --- API tokens -----------------------------------------------------------------------------


async def _acts_as(db: AsyncSession) -> dict[tuple[str, int], str]:
    staff = (await db.execute(select(StaffUser.id, StaffUser.login))).all()
    vendors = (await db.execute(select(VendorUser.id, VendorUser.login))).all()
    return {("staff", i): f"staff:{login}" for i, login in staff} | {
        ("vendor", i): f"vendor:{login}" for i, login in vendors
    }


def token_json(row: ApiToken, owners: dict[tuple[str, int], str]) -> dict[str, Any]:
    if row.staff_user_id is not None:
        owner = owners.get(("staff", row.staff_user_id), "staff:?")
    else:
        owner = owners.get(("vendor", row.vendor_user_id or 0), "vendor:?")
    return {
        "id": row.id,
        "name": row.name,
        "acts_as": owner,
        "created_by": row.created_by,
        "created_at": stamp(row.created_at),
        "last_used_at": maybe_stamp(row.last_used_at),
        "revoked_at": maybe_stamp(row.revoked_at),
    }


async def list_tokens(request: web.Request, call: Call) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        rows, owners = await tokens.list_tokens(db), await _acts_as(db)
    return json_reply({"tokens": [token_json(r, owners) for r in rows]})


async def create_token(request: web.Request, call: Call) -> web.StreamResponse:
    context, body = ctx(request), call.body
    async with context.sessions() as db:
        row, secret = await tokens.create_token(
            db,
            context.audit,
            actor(request),
            body["name"],
            staff_login=body.get("staff_login"),
            vendor_login=body.get("vendor_login"),
            now=context.clock(),
        )
        owners = await _acts_as(db)
    return json_reply({**token_json(row, owners), "token": secret}, status=201)


async def revoke_token(request: web.Request, call: Call) -> web.StreamResponse:
    context = ctx(request)
    async with context.sessions() as db:
        row = await tokens.revoke_token(
            db, context.audit, actor(request), call.params["id"], now=context.clock()
        )
        owners = await _acts_as(db)
    return json_reply(token_json(row, owners))


# --- the operations -------------------------------------------------------------------------

_NETWORKS = strings("CIDRs with the host bits zero, e.g. 10.20.0.0/16", maxItems=100)
_DESCRIPTION = text(maxLength=4000)
SEGMENT_NAME = Param("name", "path", text(maxLength=100), "the segment's name")
VENDOR_NAME = Param("name", "path", text(maxLength=200), "the organization's name")
LOGIN = nullable(text(maxLength=64))

OPERATIONS = (
    Operation(
        "GET",
        f"{API}/segments",
        list_segments,
        "List network segments",
        ADMIN,
        "SegmentList",
        "segments",
        description="By name, with how many devices each holds.",
        reply_description="the segments",
    ),
    Operation(
        "POST",
        f"{API}/segments",
        create_segment,
        "Add a network segment",
        ADMIN,
        "Segment",
        "segments",
        status=201,
        body=Body(
            (
                Field("name", text("letters, digits, . _ -; at most 64", maxLength=100), True),
                Field("description", _DESCRIPTION),
                Field("networks", _NETWORKS),
            )
        ),
        conflicts=True,
        reply_description="the new segment",
    ),
    Operation(
        "PATCH",
        f"{API}/segments/{{name}}",
        update_segment,
        "Change a segment's description or networks",
        ADMIN,
        "Segment",
        "segments",
        params=(SEGMENT_NAME,),
        body=Body(
            (Field("description", _DESCRIPTION), Field("networks", _NETWORKS)),
            "The fields to change; networks replaces the list.",
        ),
        reply_description="the segment as changed",
    ),
    Operation(
        "GET",
        f"{API}/vendors",
        list_vendors,
        "List vendor organizations, the devices each services and their users",
        VENDOR_STAFF,
        "VendorOrgList",
        "vendors",
        reply_description="the organizations",
    ),
    Operation(
        "POST",
        f"{API}/vendors",
        create_vendor,
        "Add a vendor organization",
        ADMIN,
        "VendorOrg",
        "vendors",
        status=201,
        body=Body((Field("name", text(maxLength=200), True),)),
        conflicts=True,
        reply_description="the new organization",
    ),
    Operation(
        "PUT",
        f"{API}/vendors/{{name}}/devices",
        set_vendor_devices,
        "Set the devices an organization services",
        VENDOR_STAFF,
        "VendorOrg",
        "vendors",
        params=(VENDOR_NAME,),
        body=Body(
            (Field("devices", strings("device names", maxItems=10000), True),),
            "The whole list: devices left out are no longer serviced, and the"
            " organization's users may request only the devices named here.",
        ),
        reply_description="the organization as changed",
    ),
    Operation(
        "POST",
        f"{API}/invites",
        create_invite,
        "Create a one-time invite link",
        VENDOR_STAFF,
        "InviteLink",
        "invites",
        status=201,
        body=Body(
            (
                Field("kind", {"type": "string", "enum": ["vendor", "staff"]}, True),
                Field("vendor", nullable(text("the organization (vendor invites)", maxLength=200))),
                Field("roles", {**ROLES, "description": "the roles it gives (staff invites)"}),
                Field("email", text("filled in on the registration page", maxLength=254)),
            )
        ),
        names=True,
        description=(
            "The link is in this answer only: the database keeps its hash. Admins invite"
            " staff and vendor users; biomed invites vendor users."
        ),
        reply_description="the link and when it expires",
    ),
    Operation(
        "GET",
        f"{API}/staff",
        list_staff,
        "List staff users",
        ADMIN,
        "StaffList",
        "staff",
        reply_description="the staff users",
    ),
    Operation(
        "PATCH",
        f"{API}/staff/{{login}}",
        update_staff,
        "Change a staff user's roles, or disable or enable the account",
        ADMIN,
        "StaffUser",
        "staff",
        params=(Param("login", "path", text(maxLength=64), "the staff user's login"),),
        body=Body(
            (
                Field("roles", {**ROLES, "description": "the user's roles from now on"}),
                Field("disabled", {"type": "boolean"}),
            ),
            "The last enabled admin keeps the admin role and stays enabled; nobody"
            " disables their own account.",
        ),
        conflicts=True,
        reply_description="the staff user as changed",
    ),
    Operation(
        "GET",
        f"{API}/tokens",
        list_tokens,
        "List API tokens",
        ADMIN,
        "ApiTokenList",
        "tokens",
        description="Newest first; the secrets are not kept, so not shown.",
        reply_description="the tokens",
    ),
    Operation(
        "POST",
        f"{API}/tokens",
        create_token,
        "Create an API token acting as one staff or vendor user",
        ADMIN,
        "NewApiToken",
        "tokens",
        status=201,
        body=Body(
            (
                Field("name", text("what it is for, 1-100 characters", maxLength=100), True),
                Field("staff_login", LOGIN),
                Field("vendor_login", LOGIN),
            ),
            "Name exactly one of staff_login and vendor_login.",
        ),
        conflicts=True,
        names=True,
        description="The token is in this answer only: the database keeps its hash.",
        reply_description="the token, with its secret",
    ),
    Operation(
        "POST",
        f"{API}/tokens/{{id}}/revoke",
        revoke_token,
        "Revoke an API token now",
        ADMIN,
        "ApiToken",
        "tokens",
        params=(Param("id", "path", ID, "the token's id"),),
        conflicts=True,
        reply_description="the revoked token",
    ),
)
