"""Admin pages for the inventory: devices and network segments.

Devices (``/admin/devices``): the list, a form to add one and a form to edit one. The
forms take services as ``name:port`` lines and maintenance windows as lines such as
``mon-fri 06:00-18:00 America/Chicago`` (``policy.inventory`` parses both), an optional
device login and password (vaulted; never shown again) and the device's pinned SSH host
key. After an edit the page says, field by field, what changed; a field the form did not
send stays as it is. Adding a device is for admins; viewing and editing also for biomed,
who owns the device records (criticality, maintenance windows), as
``policy.inventory.update_device`` allows. The CSV import is in ``web.admin_import``.

Segments (``/admin/segments``, admins): list, add, edit (description and networks).

Refusals come back as the same form with the input kept and the reason beside it. The
policy functions audit their own refusals; this module audits the ones it decides:
``web:device:refused`` for a form that cannot become a request at all (a device password
without its login), and ``web:segment:created`` / ``web:segment:refused`` around
``policy.admin.add_segment``, which predates the audited inventory functions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aiohttp import web
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin as policy_admin
from policy import inventory, requests_view
from policy.errors import InvalidInput, PolicyError
from policy.models import CredentialKind, Criticality, Device, Segment, Vendor, vendor_device
from policy.moderation import observer_rule
from policy.sshkeys import parse_public_key
from policy.windows import Weekly
from web.admin import describe_changes, lines, not_found, refused, secret, status, text, when
from web.auth import actor, principal, requires
from web.context import ctx
from web.render import flash, redirect, render

EDITORS = ("admin", "biomed")  # policy.inventory.DEVICE_EDITORS
CRITICALITIES = [c.value for c in Criticality]
OBSERVER_CHOICES = {  # policy.moderation.OBSERVER_RULES, said for people
    "criticality": "By criticality (life-sustaining devices, when the gateway's setting is on)",
    "always": "Always: every session waits for a staff observer",
    "never": "Never",
}
LIST_LIMIT = 500  # devices shown at once; the search narrows a bigger inventory
FIELDS = (
    "name",
    "segment",
    "address",
    "criticality",
    "observer",
    *inventory.RECORD_FIELDS,
    "services",
    "maintenance",
    "credential_username",
    "host_key",
)


# --- reading ------------------------------------------------------------------------------


def windows(device: Device) -> list[str]:
    """The device's maintenance windows as people write them (the form parses them back)."""
    return [Weekly.parse(w).describe() for w in device.maintenance_windows]


def services(device: Device) -> list[str]:
    return [f"{s.name}:{s.port}" for s in sorted(device.services, key=lambda s: s.name)]


async def _devices(db: AsyncSession, query: str) -> tuple[list[Device], int]:
    """Devices matching ``query`` (name, address, location, segment, maker, model), by name,
    at most ``LIST_LIMIT``; and how many match in all."""
    stmt = select(Device).join(Device.segment)
    if query:
        like = requests_view.like_pattern(query)
        stmt = stmt.where(
            or_(
                *(
                    column.ilike(like, escape="\\")
                    for column in (
                        Device.name,
                        Device.address,
                        Device.location,
                        Device.manufacturer,
                        Device.model,
                        Segment.name,
                    )
                )
            )
        )
    total = int(await db.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = await db.scalars(
        stmt.options(selectinload(Device.services), selectinload(Device.segment))
        .order_by(Device.name)
        .limit(LIST_LIMIT)
    )
    return list(rows), total


async def _serviced_by(db: AsyncSession, device_ids: list[int]) -> dict[int, list[str]]:
    """Device id -> the vendor organizations that service it."""
    found: dict[int, list[str]] = defaultdict(list)
    if not device_ids:
        return found
    rows = await db.execute(
        select(vendor_device.c.device_id, Vendor.name)
        .join(Vendor, Vendor.id == vendor_device.c.vendor_id)
        .where(vendor_device.c.device_id.in_(device_ids))
        .order_by(Vendor.name)
    )
    for device_id, name in rows:
        found[device_id].append(name)
    return found


async def _segment_names(db: AsyncSession) -> list[str]:
    return list(await db.scalars(select(Segment.name).order_by(Segment.name)))


# --- the device list ----------------------------------------------------------------------


@requires(*EDITORS)
async def devices_get(request: web.Request) -> web.StreamResponse:
    query = request.query.get("q", "").strip()[:100]
    async with ctx(request).sessions() as db:
        devices, total = await _devices(db, query)
        serviced = await _serviced_by(db, [d.id for d in devices])
    return render(
        request,
        "admin/devices.html",
        devices=devices,
        total=total,
        limit=LIST_LIMIT,
        query=query,
        serviced=serviced,
        windows=windows,
        services=services,
        may_add="admin" in principal(request).roles,
    )


# --- the device form ----------------------------------------------------------------------


def _values(device: Device) -> dict[str, str]:
    """The form filled in from a device (the password is never shown)."""
    return {
        "name": device.name,
        "segment": device.segment.name,
        "address": device.address,
        "criticality": str(device.criticality),
        "observer": observer_rule(device.observer_required),
        **{key: getattr(device, key) for key in inventory.RECORD_FIELDS},
        "services": "\n".join(services(device)),
        "maintenance": "\n".join(windows(device)),
        "credential_username": device.credential_username or "",
        "host_key": device.ssh_host_key or "",
    }


def _submitted(form: Any) -> dict[str, str]:
    return {name: text(form, name) for name in FIELDS}


def _credential(
    username: str, password: str, current: str | None
) -> policy_admin.Credential | None:
    """The device login to vault, from the two fields; None leaves it as it is.

    A password alone means nothing, and so does a changed login without its password;
    both would otherwise be dropped without a word.
    """
    if not password:
        if username and username != (current or ""):
            raise InvalidInput(
                "credential-incomplete", "to set the device login, enter its password too"
            )
        return None
    if not username:
        raise InvalidInput("credential-incomplete", "a device password needs the login it is for")
    if len(username) > 100 or any(ch.isspace() or not ch.isprintable() for ch in username):
        raise InvalidInput(
            "credential-invalid",
            "the device login must be at most 100 characters, without spaces",
        )
    return policy_admin.Credential(username, CredentialKind.PASSWORD, password)


def _lists(values: dict[str, str]) -> tuple[list[str], list[str]]:
    """Services (one per line, or separated by ',' or ';') and maintenance windows (one
    per line, or separated by ';' as in the CSV import)."""
    return (
        lines(values["services"], separators=",;"),
        lines(values["maintenance"], separators=";"),
    )


async def _form_page(
    request: web.Request,
    values: dict[str, str],
    *,
    editing: bool,
    error: str | None = None,
    code: int = 200,
) -> web.Response:
    async with ctx(request).sessions() as db:
        segments = await _segment_names(db)
    return render(
        request,
        "admin/device_form.html",
        status=code,
        error=error,
        form=values,
        editing=editing,
        segments=segments,
        criticalities=CRITICALITIES,
        observer_rules=OBSERVER_CHOICES,
        record_fields=inventory.RECORD_FIELDS,
    )


@requires("admin")
async def device_new(request: web.Request) -> web.StreamResponse:
    blank = {name: "" for name in FIELDS}
    blank["criticality"] = Criticality.MEDIUM.value
    blank["observer"] = "criticality"
    return await _form_page(request, blank, editing=False)


@requires("admin")
async def device_create(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    form = await request.post()
    values = _submitted(form)
    try:
        service_lines, window_lines = _lists(values)
        data = inventory.DeviceInput(
            name=values["name"],
            segment=values["segment"],
            address=values["address"],
            criticality=values["criticality"],
            observer=values["observer"] or "criticality",
            services=list(service_lines),
            maintenance=list(window_lines),
            record={key: values[key] for key in inventory.RECORD_FIELDS},
            host_key=values["host_key"] or None,
            credential=_credential(
                values["credential_username"], secret(form, "credential_password"), None
            ),
        )
    except PolicyError as exc:
        await refused(request, "web:device:refused", exc, action="create", device=values["name"])
        return await _form_page(request, values, editing=False, error=exc.message, code=400)
    try:
        async with context.sessions() as db:
            device = await inventory.create_device(
                db, context.audit, actor(request), context.vault, data, now=context.clock()
            )
    except PolicyError as exc:  # audited by create_device
        return await _form_page(request, values, editing=False, error=exc.message, code=status(exc))
    flash(request, f"Device {device.name} added.", "success")
    return redirect("/admin/devices")


async def _load(request: web.Request) -> Device:
    """The device the path names, with its services and segment; refused (audited) if none."""
    name = request.match_info["name"]
    async with ctx(request).sessions() as db:
        try:
            return await inventory.load_device(db, name)
        except PolicyError:
            missing = await not_found(request, "web:device:refused", "device", device=name[:100])
            raise missing from None


@requires(*EDITORS)
async def device_edit(request: web.Request) -> web.StreamResponse:
    device = await _load(request)
    return await _form_page(request, _values(device), editing=True)


def _facts(device: Device) -> dict[str, str]:
    """What a person compares before and after an edit (no secrets)."""
    host_key = parse_public_key(device.ssh_host_key).fingerprint if device.ssh_host_key else ""
    return {
        "segment": device.segment.name,
        "address": device.address,
        "criticality": str(device.criticality),
        "staff observer": OBSERVER_CHOICES[observer_rule(device.observer_required)],
        **{key.replace("_", " "): getattr(device, key) for key in inventory.RECORD_FIELDS},
        "services": ", ".join(services(device)),
        "maintenance windows": "; ".join(windows(device)),
        "host key": host_key,
        "device login": device.credential_username or "",
    }


def _changes(
    sent: dict[str, str], credential: policy_admin.Credential | None
) -> inventory.DeviceChanges:
    """The fields the form sent, as changes; a field it did not send stays as it is (an
    empty host key field is sent, and unpins the key)."""
    service_lines, window_lines = _lists({"services": "", "maintenance": "", **sent})
    return inventory.DeviceChanges(
        segment=sent.get("segment"),
        address=sent.get("address"),
        criticality=sent.get("criticality"),
        observer=sent.get("observer"),
        services=list(service_lines) if "services" in sent else None,
        maintenance=list(window_lines) if "maintenance" in sent else None,
        record={key: sent[key] for key in inventory.RECORD_FIELDS if key in sent},
        host_key=sent.get("host_key"),
        credential=credential,
    )


@requires(*EDITORS)
async def device_update(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    current = await _load(request)
    before = _facts(current)
    form = await request.post()
    sent = {name: text(form, name) for name in FIELDS if name in form and name != "name"}
    values = {**_values(current), **sent}
    password = secret(form, "credential_password")
    try:
        credential = _credential(
            values["credential_username"], password, current.credential_username
        )
        changes = _changes(sent, credential)
    except PolicyError as exc:
        await refused(request, "web:device:refused", exc, action="update", device=current.name)
        return await _form_page(request, values, editing=True, error=exc.message, code=400)
    try:
        async with context.sessions() as db:
            device = await inventory.update_device(
                db,
                context.audit,
                actor(request),
                context.vault,
                current.name,
                changes,
                now=context.clock(),
            )
    except PolicyError as exc:  # audited by update_device
        return await _form_page(request, values, editing=True, error=exc.message, code=status(exc))
    said = describe_changes(before, _facts(device))
    if credential is not None:
        said.append(f"password for {credential.username} replaced")
    if said:
        flash(request, f"Device {device.name} saved. Changed {'; '.join(said)}.", "success")
    else:
        flash(request, f"Device {device.name}: nothing changed.", "info")
    return redirect("/admin/devices")


# --- segments -----------------------------------------------------------------------------


async def _segments_page(
    request: web.Request,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    code: int = 200,
) -> web.Response:
    async with ctx(request).sessions() as db:
        segments = list(await db.scalars(select(Segment).order_by(Segment.name)))
        rows = await db.execute(select(Device.segment_id, func.count()).group_by(Device.segment_id))
        counts = {int(segment_id): int(count) for segment_id, count in rows}
    return render(
        request,
        "admin/segments.html",
        status=code,
        error=error,
        segments=segments,
        counts=counts,
        form=form or {"name": "", "description": "", "networks": ""},
        when=when,
    )


@requires("admin")
async def segments_get(request: web.Request) -> web.StreamResponse:
    return await _segments_page(request)


def _networks(value: str) -> list[str]:
    """One CIDR per line (or separated by commas or spaces)."""
    return lines(value, separators=", ")


@requires("admin")
async def segment_create(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    form = await request.post()
    values = {key: text(form, key) for key in ("name", "description", "networks")}
    try:
        async with context.sessions() as db:
            segment = await policy_admin.add_segment(
                db, values["name"], values["description"], _networks(values["networks"])
            )
    except PolicyError as exc:
        await refused(request, "web:segment:refused", exc, action="create", segment=values["name"])
        return await _segments_page(request, form=values, error=exc.message, code=status(exc))
    await context.audit.record(
        "web:segment:created",
        actor=principal(request).name,
        segment=segment.name,
        description=segment.description,
        networks=list(segment.networks),
    )
    flash(request, f"Segment {segment.name} added.", "success")
    return redirect("/admin/segments")


async def _segment(request: web.Request) -> Segment:
    name = request.match_info["name"]
    async with ctx(request).sessions() as db:
        segment = await db.scalar(select(Segment).where(Segment.name == name))
    if segment is None:
        raise await not_found(request, "web:segment:refused", "segment", segment=name[:100])
    return segment


def _segment_form(
    request: web.Request,
    name: str,
    values: dict[str, str],
    *,
    error: str | None = None,
    code: int = 200,
) -> web.Response:
    return render(
        request, "admin/segment_form.html", status=code, error=error, name=name, form=values
    )


@requires("admin")
async def segment_edit(request: web.Request) -> web.StreamResponse:
    segment = await _segment(request)
    values = {"description": segment.description, "networks": "\n".join(segment.networks)}
    return _segment_form(request, segment.name, values)


@requires("admin")
async def segment_update(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    current = await _segment(request)
    form = await request.post()
    values = {key: text(form, key) for key in ("description", "networks")}
    try:
        async with context.sessions() as db:
            segment = await inventory.update_segment(
                db,
                context.audit,
                actor(request),
                current.name,
                description=values["description"],
                networks=_networks(values["networks"]),
            )
    except PolicyError as exc:  # audited by update_segment
        return _segment_form(request, current.name, values, error=exc.message, code=status(exc))
    said = describe_changes(
        {"description": current.description, "networks": ", ".join(current.networks)},
        {"description": segment.description, "networks": ", ".join(segment.networks)},
    )
    if said:
        flash(request, f"Segment {segment.name} saved. Changed {'; '.join(said)}.", "success")
    else:
        flash(request, f"Segment {segment.name}: nothing changed.", "info")
    return redirect("/admin/segments")


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/devices", devices_get)
    app.router.add_post("/admin/devices", device_create)
    app.router.add_get("/admin/devices/new", device_new)
    app.router.add_get("/admin/devices/{name}/edit", device_edit)
    app.router.add_post("/admin/devices/{name}/edit", device_update)
    app.router.add_get("/admin/segments", segments_get)
    app.router.add_post("/admin/segments", segment_create)
    app.router.add_get("/admin/segments/{name}/edit", segment_edit)
    app.router.add_post("/admin/segments/{name}/edit", segment_update)
