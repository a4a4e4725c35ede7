"""Admin pages for people: vendor organizations, staff users, invites and API tokens.

Vendors (``/admin/vendors``): organizations, and per organization the devices it
services (``policy.inventory.set_vendor_devices``: its users may request only these), its
users, its open invites, and "Create invite link". Admins and biomed use these pages, as
the policy allows them both to pick a vendor's devices and to invite vendor users; adding
an organization is for admins.

Staff (``/admin/staff``, admins): users with their roles, a role form per user
(``set_staff_roles``; the last enabled admin keeps the admin role), disable and enable
(``set_staff_disabled``), and a staff invite with the roles it gives.

Tokens (``/admin/tokens``, admins): API tokens acting as one staff or vendor user; made,
listed and revoked through ``policy.tokens``.

An invite link or a token is shown once, on the page that answers the POST, and is kept
nowhere but there (the database holds its hash; it never passes through the session
table as a flash message would). Invite links start with ``[web] public_url``, or with the
address of this request when that is not set.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin as policy_admin
from policy import inventory, invites, tokens
from policy.errors import InvalidInput, PolicyError
from policy.models import Device, Invite, StaffUser, Vendor, VendorUser, vendor_device
from web.admin import (
    STAFF_ROLES,
    checked,
    int_param,
    not_found,
    public_url,
    refused,
    status,
    text,
    when,
)
from web.auth import actor, principal, requires
from web.context import ctx
from web.render import flash, redirect, render

VENDOR_STAFF = ("admin", "biomed")  # policy.inventory.DEVICE_EDITORS, invites.INVITERS["vendor"]
MAX_VENDOR_NAME = 200  # vendor.name


async def _invite(
    request: web.Request, *, kind: str, vendor: str | None, roles: list[str], email: str
) -> tuple[Invite, str]:
    """A new invite (audited by ``create_invite``) and its full link."""
    context = ctx(request)
    async with context.sessions() as db:
        invite, token = await invites.create_invite(
            db,
            context.audit,
            actor(request),
            kind=kind,
            vendor=vendor,
            roles=roles,
            email=email,
            hours=context.settings.workflow_invite_hours,
            now=context.clock(),
        )
    return invite, public_url(request, f"/invite/{token}")


# --- vendor organizations -----------------------------------------------------------------


async def _counts(db: AsyncSession, column: Any) -> dict[int, int]:
    """How many rows there are per value of ``column`` (a vendor id)."""
    rows = await db.execute(select(column, func.count()).group_by(column))
    return {int(key): int(count) for key, count in rows}


async def _vendors_page(
    request: web.Request, *, name: str = "", error: str | None = None, code: int = 200
) -> web.Response:
    async with ctx(request).sessions() as db:
        vendors = list(await db.scalars(select(Vendor).order_by(Vendor.name)))
        users = await _counts(db, VendorUser.vendor_id)
        devices = await _counts(db, vendor_device.c.vendor_id)
    return render(
        request,
        "admin/vendors.html",
        status=code,
        error=error,
        vendors=vendors,
        users=users,
        devices=devices,
        name=name,
        may_add="admin" in principal(request).roles,
    )


@requires(*VENDOR_STAFF)
async def vendors_get(request: web.Request) -> web.StreamResponse:
    return await _vendors_page(request)


@requires("admin")
async def vendor_create(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    name = text(await request.post(), "name")
    try:
        if len(name) > MAX_VENDOR_NAME:
            raise InvalidInput(
                "vendor-name-invalid", f"the name is longer than {MAX_VENDOR_NAME} characters"
            )
        async with context.sessions() as db:
            vendor = await policy_admin.add_vendor(db, name)
    except PolicyError as exc:
        await refused(request, "web:vendor:refused", exc, action="create", vendor=name[:200])
        return await _vendors_page(request, name=name, error=exc.message, code=status(exc))
    await context.audit.record(
        "web:vendor:created", actor=principal(request).name, vendor=vendor.name
    )
    flash(request, f"Vendor organization {vendor.name} added.", "success")
    return redirect(f"/admin/vendors/{vendor.id}")


async def _vendor(db: AsyncSession, vendor_id: int) -> Vendor | None:
    return await db.scalar(
        select(Vendor)
        .where(Vendor.id == vendor_id)
        .options(selectinload(Vendor.devices), selectinload(Vendor.users))
    )


async def _load_vendor(request: web.Request) -> Vendor:
    vendor_id = int_param(request, "vendor_id")
    vendor = None
    if vendor_id is not None:
        async with ctx(request).sessions() as db:
            vendor = await _vendor(db, vendor_id)
    if vendor is None:
        raw = request.match_info["vendor_id"][:20]
        raise await not_found(request, "web:vendor:refused", "vendor organization", vendor_id=raw)
    return vendor


async def _vendor_page(
    request: web.Request,
    vendor: Vendor,
    *,
    chosen: list[str] | None = None,
    email: str = "",
    link: str | None = None,
    link_email: str = "",
    error: str | None = None,
    code: int = 200,
) -> web.Response:
    context = ctx(request)
    async with context.sessions() as db:
        devices = list(
            await db.scalars(
                select(Device).options(selectinload(Device.segment)).order_by(Device.name)
            )
        )
        open_invites = list(
            await db.scalars(
                select(Invite)
                .where(
                    Invite.vendor_id == vendor.id,
                    Invite.used_at.is_(None),
                    Invite.expires_at > context.clock(),
                )
                .order_by(Invite.id)
            )
        )
    return render(
        request,
        "admin/vendor.html",
        status=code,
        error=error,
        vendor=vendor,
        users=sorted(vendor.users, key=lambda u: u.login),
        devices=devices,
        chosen=set(chosen if chosen is not None else (d.name for d in vendor.devices)),
        invites=open_invites,
        email=email,
        link=link,
        link_email=link_email,
        hours=context.settings.workflow_invite_hours,
        when=when,
    )


@requires(*VENDOR_STAFF)
async def vendor_get(request: web.Request) -> web.StreamResponse:
    return await _vendor_page(request, await _load_vendor(request))


@requires(*VENDOR_STAFF)
async def vendor_devices(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    vendor = await _load_vendor(request)
    wanted = checked(await request.post(), "device")
    try:
        async with context.sessions() as db:
            await inventory.set_vendor_devices(
                db, context.audit, actor(request), vendor.name, wanted
            )
    except PolicyError as exc:  # audited by set_vendor_devices
        return await _vendor_page(
            request, vendor, chosen=wanted, error=exc.message, code=status(exc)
        )
    before = {d.name for d in vendor.devices}
    added, removed = sorted(set(wanted) - before), sorted(before - set(wanted))
    said = [f"added {', '.join(added)}"] if added else []
    said += [f"removed {', '.join(removed)}"] if removed else []
    flash(
        request,
        f"Devices of {vendor.name} saved: {'; '.join(said)}."
        if said
        else f"Devices of {vendor.name}: nothing changed.",
        "success" if said else "info",
    )
    return redirect(f"/admin/vendors/{vendor.id}")


@requires(*VENDOR_STAFF)
async def vendor_invite(request: web.Request) -> web.StreamResponse:
    vendor = await _load_vendor(request)
    email = text(await request.post(), "email")
    try:
        invite, link = await _invite(
            request, kind="vendor", vendor=vendor.name, roles=[], email=email
        )
    except PolicyError as exc:  # audited by create_invite
        return await _vendor_page(request, vendor, email=email, error=exc.message, code=status(exc))
    return await _vendor_page(request, vendor, link=link, link_email=invite.email)


# --- staff --------------------------------------------------------------------------------


async def _staff_page(
    request: web.Request,
    *,
    submitted: dict[str, list[str]] | None = None,
    invite_roles: list[str] | None = None,
    email: str = "",
    link: str | None = None,
    link_roles: list[str] | None = None,
    error: str | None = None,
    code: int = 200,
) -> web.Response:
    async with ctx(request).sessions() as db:
        users = list(await db.scalars(select(StaffUser).order_by(StaffUser.login)))
    roles_of = {u.login: list(u.roles) for u in users} | (submitted or {})
    return render(
        request,
        "admin/staff.html",
        status=code,
        error=error,
        users=users,
        roles_of=roles_of,
        all_roles=STAFF_ROLES,
        invite_roles=invite_roles or [],
        email=email,
        link=link,
        link_roles=link_roles or [],
        hours=ctx(request).settings.workflow_invite_hours,
        when=when,
    )


@requires("admin")
async def staff_get(request: web.Request) -> web.StreamResponse:
    return await _staff_page(request)


@requires("admin")
async def staff_roles(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    login = request.match_info["login"]
    roles = checked(await request.post(), "role")
    try:
        async with context.sessions() as db:
            before = await db.scalar(select(StaffUser.roles).where(StaffUser.login == login))
            user = await inventory.set_staff_roles(db, context.audit, actor(request), login, roles)
    except PolicyError as exc:  # audited by set_staff_roles
        return await _staff_page(
            request, submitted={login: roles}, error=exc.message, code=status(exc)
        )
    old, new = ", ".join(sorted(before or [])), ", ".join(user.roles)
    if old == new:
        flash(request, f"Roles of {user.login}: nothing changed.", "info")
    else:
        flash(request, f"Roles of {user.login} changed: {old or '(none)'} → {new}.", "success")
    return redirect("/admin/staff")


async def _set_disabled(request: web.Request, disabled: bool) -> web.StreamResponse:
    context = ctx(request)
    login = request.match_info["login"]
    try:
        async with context.sessions() as db:
            user = await inventory.set_staff_disabled(
                db, context.audit, actor(request), login, disabled
            )
    except PolicyError as exc:  # audited by set_staff_disabled
        return await _staff_page(request, error=exc.message, code=status(exc))
    if disabled:
        flash(request, f"{user.login} is disabled: signed out at the next click.", "success")
    else:
        flash(request, f"{user.login} is enabled again.", "success")
    return redirect("/admin/staff")


@requires("admin")
async def staff_disable(request: web.Request) -> web.StreamResponse:
    return await _set_disabled(request, True)


@requires("admin")
async def staff_enable(request: web.Request) -> web.StreamResponse:
    return await _set_disabled(request, False)


@requires("admin")
async def staff_invite(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    roles, email = checked(form, "role"), text(form, "email")
    try:
        invite, link = await _invite(request, kind="staff", vendor=None, roles=roles, email=email)
    except PolicyError as exc:  # audited by create_invite
        return await _staff_page(
            request, invite_roles=roles, email=email, error=exc.message, code=status(exc)
        )
    return await _staff_page(request, link=link, link_roles=list(invite.roles))


# --- API tokens ---------------------------------------------------------------------------


async def _owners(db: AsyncSession) -> tuple[dict[int, str], dict[int, str]]:
    """Staff and vendor user ids -> logins."""
    staff = dict((await db.execute(select(StaffUser.id, StaffUser.login))).all())
    vendors = dict((await db.execute(select(VendorUser.id, VendorUser.login))).all())
    return staff, vendors


async def _tokens_page(
    request: web.Request,
    *,
    form: dict[str, str] | None = None,
    secret: str | None = None,
    secret_name: str = "",
    error: str | None = None,
    code: int = 200,
) -> web.Response:
    async with ctx(request).sessions() as db:
        rows = await tokens.list_tokens(db)
        staff, vendors = await _owners(db)
        enabled_staff = list(
            await db.scalars(
                select(StaffUser.login)
                .where(StaffUser.disabled.is_(False))
                .order_by(StaffUser.login)
            )
        )
        enabled_vendors = list(
            await db.execute(
                select(VendorUser.login, Vendor.name)
                .join(Vendor, Vendor.id == VendorUser.vendor_id)
                .where(VendorUser.disabled.is_(False))
                .order_by(VendorUser.login)
            )
        )
    owners: dict[int, str] = defaultdict(str)
    for row in rows:
        if row.staff_user_id is not None:
            owners[row.id] = f"staff:{staff.get(row.staff_user_id, '?')}"
        elif row.vendor_user_id is not None:
            owners[row.id] = f"vendor:{vendors.get(row.vendor_user_id, '?')}"
    return render(
        request,
        "admin/tokens.html",
        status=code,
        error=error,
        tokens=rows,
        owners=owners,
        staff=enabled_staff,
        vendors=enabled_vendors,
        form=form or {"name": "", "owner": ""},
        secret=secret,
        secret_name=secret_name,
        when=when,
    )


@requires("admin")
async def tokens_get(request: web.Request) -> web.StreamResponse:
    return await _tokens_page(request)


def _owner_logins(owner: str) -> dict[str, Any]:
    """``staff:alice`` / ``vendor:eng1`` as ``create_token``'s keyword arguments; anything
    else names nobody, and ``create_token`` says so."""
    kind, _, login = owner.partition(":")
    if kind == "staff":
        return {"staff_login": login}
    if kind == "vendor":
        return {"vendor_login": login}
    return {}


@requires("admin")
async def token_create(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    form = await request.post()
    values = {"name": text(form, "name"), "owner": text(form, "owner")}
    try:
        async with context.sessions() as db:
            row, secret = await tokens.create_token(
                db,
                context.audit,
                actor(request),
                values["name"],
                now=context.clock(),
                **_owner_logins(values["owner"]),
            )
    except PolicyError as exc:  # audited by create_token
        return await _tokens_page(request, form=values, error=exc.message, code=status(exc))
    return await _tokens_page(request, secret=secret, secret_name=row.name)


@requires("admin")
async def token_revoke(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    token_id = int_param(request, "token_id")
    if token_id is None:
        raise await not_found(request, "web:token:refused", "API token")
    try:
        async with context.sessions() as db:
            row = await tokens.revoke_token(
                db, context.audit, actor(request), token_id, now=context.clock()
            )
    except PolicyError as exc:  # audited by revoke_token
        return await _tokens_page(request, error=exc.message, code=status(exc))
    flash(request, f"API token {row.name} revoked: it no longer works.", "success")
    return redirect("/admin/tokens")


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/vendors", vendors_get)
    app.router.add_post("/admin/vendors", vendor_create)
    app.router.add_get("/admin/vendors/{vendor_id}", vendor_get)
    app.router.add_post("/admin/vendors/{vendor_id}/devices", vendor_devices)
    app.router.add_post("/admin/vendors/{vendor_id}/invite", vendor_invite)
    app.router.add_get("/admin/staff", staff_get)
    app.router.add_post("/admin/staff/invite", staff_invite)
    app.router.add_post("/admin/staff/{login}/roles", staff_roles)
    app.router.add_post("/admin/staff/{login}/disable", staff_disable)
    app.router.add_post("/admin/staff/{login}/enable", staff_enable)
    app.router.add_get("/admin/tokens", tokens_get)
    app.router.add_post("/admin/tokens", token_create)
    app.router.add_post("/admin/tokens/{token_id}/revoke", token_revoke)
