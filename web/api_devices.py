"""The API's devices: search and read them; add, change and import them (CSV).

Vendor users see only the devices their organization services (what they may request),
and not their addresses, host keys or credentials: those are for the hospital. Another
organization's device reads as unknown, as when filing a request. Staff see all of the
inventory. Adding and importing are the admin's, changing is the admin's or biomed's
(``policy.inventory``, ``policy.csvimport``: the rules and the audit are theirs). No
answer ever holds a device credential's secret.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin, csvimport, inventory, requests_view, workflow
from policy.errors import InvalidInput, NotFound
from policy.models import CredentialKind, Criticality, Device
from policy.moderation import observer_rule
from policy.windows import Weekly
from web.api_base import maybe_stamp, stamp
from web.api_input import (
    TIME,
    Body,
    Call,
    CsvBody,
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
from web.openapi import ALL_ROLES, API, Operation, json_reply

MAX_LIST = 1000
CRITICALITIES = [c.value for c in Criticality]
_STAFF_FIELDS = ("address", "host_key", "credential_username", "credential_kind", "updated_at")

SERVICE_NAME = "^[a-z][a-z0-9-]{0,30}$"  # as policy.admin.SERVICE
SERVICE: Schema = obj(
    {
        "name": {"type": "string", "pattern": SERVICE_NAME},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    }
)
OBSERVER: Schema = nullable(
    {
        "type": "boolean",
        "description": "sessions need a staff observer before input reaches the device: "
        "true always, false never, null by criticality (life-sustaining devices, when the "
        "gateway's setting observer_for_life_sustaining is on)",
    }
)
DEVICE: Schema = obj(
    {
        "name": text(),
        "segment": text(),
        "criticality": {"type": "string", "enum": CRITICALITIES},
        "observer_required": OBSERVER,
        "manufacturer": text(),
        "model": text(),
        "firmware": text(),
        "location": text(),
        "asset_tag": text(),
        "services": {"type": "array", "items": ref("Service")},
        "maintenance": strings("maintenance windows, e.g. Mon-Fri 06:00-18:00 America/Chicago"),
        "created_at": TIME,
        "address": text("staff only: the IP address the gateway connects to"),
        "host_key": nullable(text("staff only: the pinned SSH host key")),
        "credential_username": nullable(text("staff only; the secret is never shown")),
        "credential_kind": nullable({"type": "string", "enum": [k.value for k in CredentialKind]}),
        "updated_at": nullable(TIME),
    },
    optional=_STAFF_FIELDS,
)
CREDENTIAL: Schema = obj(
    {
        "username": {"type": "string", "minLength": 1, "maxLength": 100},
        "kind": {"type": "string", "enum": [k.value for k in CredentialKind]},
        "secret": {"type": "string", "minLength": 1, "description": "stored sealed"},
    }
)
SCHEMAS: dict[str, Schema] = {
    "Service": SERVICE,
    "Device": DEVICE,
    "DeviceList": obj({"devices": {"type": "array", "items": ref("Device")}}),
    "Credential": CREDENTIAL,
    "ImportResult": obj(
        {
            "created": {"type": "integer"},
            "updated": {"type": "integer"},
            "unchanged": {"type": "integer"},
        }
    ),
}


def device_json(device: Device, *, staff: bool) -> dict[str, Any]:
    """``device.segment`` and ``device.services`` must be loaded."""
    out: dict[str, Any] = {
        "name": device.name,
        "segment": device.segment.name,
        "criticality": str(device.criticality),
        "observer_required": device.observer_required,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "firmware": device.firmware,
        "location": device.location,
        "asset_tag": device.asset_tag,
        "services": [{"name": s.name, "port": s.port} for s in device.services],
        "maintenance": [Weekly.parse(w).describe() for w in device.maintenance_windows or []],
        "created_at": stamp(device.created_at),
    }
    if staff:
        out |= {
            "address": device.address,
            "host_key": device.ssh_host_key,
            "credential_username": device.credential_username,
            "credential_kind": str(device.credential_kind) if device.credential_kind else None,
            "updated_at": maybe_stamp(device.updated_at),
        }
    return out


async def _all_devices(db: AsyncSession, search: str, limit: int) -> list[Device]:
    """The whole inventory by name; ``search`` as for vendors (name, model or location)."""
    query = (
        select(Device)
        .options(selectinload(Device.services), selectinload(Device.segment))
        .order_by(Device.name)
        .limit(limit)
    )
    return list(await db.scalars(requests_view.search_devices(query, search)))


async def list_devices(request: web.Request, call: Call) -> web.StreamResponse:
    who = principal(request)
    search, limit = call.params.get("q", ""), call.params.get("limit", 200)
    async with ctx(request).sessions() as db:
        if who.kind == "vendor":
            found = await requests_view.devices_for_vendor_user(db, who.id, search, limit=limit)
        else:
            found = await _all_devices(db, search, limit)
    staff = who.kind == "staff"
    return json_reply({"devices": [device_json(d, staff=staff) for d in found]})


async def _visible_device(db: AsyncSession, request: web.Request, name: str) -> Device:
    who = principal(request)
    device = await inventory.load_device(db, name)
    if who.kind == "vendor" and who.vendor_id is not None:
        if device.id not in await workflow.serviced_device_ids(db, who.vendor_id):
            raise NotFound("device-unknown", f"device {name!r} does not exist")
    return device


async def get_device(request: web.Request, call: Call) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        device = await _visible_device(db, request, call.params["name"])
    return json_reply(device_json(device, staff=principal(request).kind == "staff"))


def _services(items: list[Any]) -> list[str | admin.ServiceSpec]:
    """``"ssh:22"`` or ``{"name": "ssh", "port": 22}``: both checked by the same parser."""
    return [
        admin.ServiceSpec.parse(f"{i['name']}:{i['port']}") if isinstance(i, dict) else i
        for i in items
    ]


def _credential(value: dict[str, Any] | None) -> admin.Credential | None:
    if value is None:
        return None
    return admin.Credential(value["username"], CredentialKind(value["kind"]), value["secret"])


def _record(body: dict[str, Any]) -> dict[str, str]:
    return {k: body[k] for k in inventory.RECORD_FIELDS if k in body}


async def _reloaded(request: web.Request, name: str) -> web.Response:
    async with ctx(request).sessions() as db:
        device = await inventory.load_device(db, name)
    return json_reply(device_json(device, staff=True))


async def create_device(request: web.Request, call: Call) -> web.StreamResponse:
    context, body = ctx(request), call.body
    data = inventory.DeviceInput(
        name=body["name"],
        segment=body["segment"],
        address=body["address"],
        criticality=body.get("criticality", Criticality.MEDIUM),
        observer=body.get("observer_required"),
        services=_services(body.get("services", [])),
        maintenance=body.get("maintenance", []),
        record=_record(body),
        host_key=body.get("host_key"),
        credential=_credential(body.get("credential")),
    )
    async with context.sessions() as db:
        device = await inventory.create_device(
            db, context.audit, actor(request), context.vault, data, now=context.clock()
        )
    response = await _reloaded(request, device.name)
    response.set_status(201)
    return response


async def update_device(request: web.Request, call: Call) -> web.StreamResponse:
    context, body = ctx(request), call.body
    # absent: keep the pinned key; null or "": remove it
    host_key = (body["host_key"] or "") if "host_key" in body else None
    changes = inventory.DeviceChanges(
        segment=body.get("segment"),
        address=body.get("address"),
        criticality=body.get("criticality"),
        # absent: keep the rule; null: by criticality
        observer=observer_rule(body["observer_required"]) if "observer_required" in body else None,
        services=_services(body["services"]) if "services" in body else None,
        maintenance=body.get("maintenance"),
        record=_record(body) or None,
        host_key=host_key,
        credential=_credential(body.get("credential")),
    )
    name = call.params["name"]
    async with context.sessions() as db:
        await inventory.update_device(
            db, context.audit, actor(request), context.vault, name, changes, now=context.clock()
        )
    return await _reloaded(request, name)


async def import_devices(request: web.Request, call: Call) -> web.StreamResponse:
    context = ctx(request)
    try:
        async with context.sessions() as db:
            result = await csvimport.import_devices(
                db, context.audit, actor(request), context.vault, call.text, now=context.clock()
            )
    except InvalidInput as exc:
        if not exc.errors:
            raise
        lines = [{"line": line, "message": message} for line, message in exc.errors]
        body = {"code": exc.code, "message": exc.message, "errors": lines}
        return json_reply(body, status=400)
    return json_reply(
        {"created": result.created, "updated": result.updated, "unchanged": result.unchanged}
    )


# --- the operations ----------------------------------------------------------------------------

_SERVICES = {
    "type": "array",
    "items": {
        "anyOf": [
            text("NAME:PORT, e.g. ssh:22", pattern="^[a-z][a-z0-9-]{0,30}:[0-9]{1,5}$"),
            ref("Service"),
        ]
    },
    "maxItems": 50,
}
_MAINTENANCE = {
    "type": "array",
    "items": {
        "anyOf": [text("DAYS HH:MM-HH:MM ZONE, e.g. mon-fri 06:00-18:00 UTC"), ref("Recurrence")]
    },
    "maxItems": 50,
}
_RECORD = tuple(
    Field(name, text(maxLength=width)) for name, width in inventory.RECORD_FIELDS.items()
)
_DEVICE_FIELDS = (
    Field("segment", text(minLength=1, maxLength=100)),
    Field("address", text("an IP address (never a DNS name)", maxLength=64)),
    Field("criticality", {"type": "string", "enum": CRITICALITIES}),
    Field("observer_required", OBSERVER),
    Field("services", _SERVICES),
    Field("maintenance", _MAINTENANCE),
    *_RECORD,
    Field("host_key", nullable(text("the device's SSH host key, to pin"))),
    Field("credential", nullable(ref("Credential"))),
)
DEVICE_NAME = Param("name", "path", {"type": "string", "maxLength": 100}, "the device's name")


def _create_fields() -> tuple[Field, ...]:
    required = {"segment", "address"}
    named = Field(
        "name", text("letters, digits, . _ -; at most 64", pattern=admin.NAME.pattern), True
    )
    rest = tuple(Field(f.name, f.schema, f.name in required) for f in _DEVICE_FIELDS)
    return (named, *rest)


OPERATIONS = (
    Operation(
        "GET",
        f"{API}/devices",
        list_devices,
        "Search devices",
        ALL_ROLES,
        "DeviceList",
        "devices",
        params=(
            Param("q", "query", text("matches name, model or location", maxLength=200)),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}),
        ),
        description="By name. Vendor users get the devices their organization services.",
        reply_description="the devices",
    ),
    Operation(
        "POST",
        f"{API}/devices",
        create_device,
        "Add a device",
        frozenset({"admin"}),
        "Device",
        "devices",
        status=201,
        body=Body(_create_fields()),
        conflicts=True,
        names=True,
        reply_description="the new device",
    ),
    Operation(
        "POST",
        f"{API}/devices/import",
        import_devices,
        "Import devices from a CMMS export (CSV)",
        frozenset({"admin"}),
        "ImportResult",
        "devices",
        body=CsvBody(
            "Columns: name, segment, address, criticality, manufacturer, model, firmware,"
            " location, asset_tag, services (ssh:22;https:443), optionally maintenance."
            " All or nothing: a file with any bad row imports nothing, and the answer (400)"
            " lists every problem by line."
        ),
        conflicts=True,
        reply_description="how many devices were created, updated and left as they were",
    ),
    Operation(
        "GET",
        f"{API}/devices/{{name}}",
        get_device,
        "One device",
        ALL_ROLES,
        "Device",
        "devices",
        params=(DEVICE_NAME,),
        reply_description="the device",
    ),
    Operation(
        "PATCH",
        f"{API}/devices/{{name}}",
        update_device,
        "Change a device",
        frozenset({"admin", "biomed"}),
        "Device",
        "devices",
        params=(DEVICE_NAME,),
        body=Body(
            _DEVICE_FIELDS,
            "The fields to change; the others keep their values. services and maintenance"
            " replace the lists; host_key null or empty removes the pinned key.",
        ),
        reply_description="the device as changed",
    ),
)
