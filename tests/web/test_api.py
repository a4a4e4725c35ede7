"""The JSON API (web/api*.py) end to end: real server, real database, real tokens.

Every answer these tests get goes through ``CheckedApi``, which validates its JSON body
against the schema the OpenAPI document gives for that operation and status (with
jsonschema, formats checked): a response that strays from the document fails the test
that provoked it. Only 5xx answers may fall back to the ``default`` response.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, inventory, tokens
from policy.actor import Actor
from policy.models import (
    AccessRequest,
    AuditEvent,
    Criticality,
    Device,
    RequestStatus,
    Session,
    VendorUser,
)
from policy.notify import Notifier
from tests.web.conftest import AuditEvents, Login, MakeStaff, MakeVendorUser, WebApp, csrf_from
from web.openapi import (
    OPENAPI,
)

try:
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
except ImportError as exc:  # pragma: no cover - a missing dev dependency must fail the run
    raise ImportError(
        "tests/web/test_api.py needs the dev dependency jsonschema>=4.18 (with the"
        " rfc3339-validator that openapi-spec-validator brings) to check every response"
    ) from exc

ROOT = Actor("staff", 0, "root", frozenset({"admin"}), via="cli")
DOC_URI = "urn:sallyport:openapi"
UNSET: Any = object()


# --- every response checked against the document -------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass
class CheckedApi:
    """Calls the API as a named token holder (or anonymously, or as a browser session)
    and validates every answer against the OpenAPI document."""

    doc: dict[str, Any]
    http: TestClient[Any, Any] | aiohttp.ClientSession
    tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.formats = jsonschema.FormatChecker()
        assert "date-time" in self.formats.checkers, "install rfc3339-validator"

    def template(self, method: str, path: str) -> str | None:
        """The documented path ``path`` is an instance of (literal segments first)."""
        found = []
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path) and method.lower() in item:
                found.append(template)
        return min(found, key=lambda t: t.count("{"), default=None)

    def schema_for(self, method: str, path: str, status: int) -> dict[str, Any]:
        template = self.template(method, path)
        if template is None:  # no such route or method: the router's JSON error
            assert status in (404, 405), (method, path, status)
            return {"$ref": f"{DOC_URI}#/components/schemas/Error"}
        responses = self.doc["paths"][template][method.lower()]["responses"]
        key = str(status)
        if key not in responses:
            assert status >= 500, f"{method} {template} answered {status}, not documented"
            key = "default"
        pointer = _pointer("paths", template, method.lower(), "responses", key, "content")
        return {"$ref": f"{DOC_URI}#/{pointer}/application~1json/schema"}

    async def call(
        self,
        who: str | None,
        method: str,
        path: str,
        *,
        json: Any = UNSET,
        data: str | bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.tokens[who]}"
        kwargs: dict[str, Any] = {"headers": sent, "params": params, "allow_redirects": False}
        if json is not UNSET:
            kwargs["json"] = json
        elif data is not None:
            kwargs["data"] = data
        resp = await self.http.request(method, path, **kwargs)
        assert resp.content_type == "application/json", (method, path, resp.status)
        body = await resp.json()
        schema = self.schema_for(method, resp.url.path, resp.status)
        validator = jsonschema.Draft202012Validator(
            schema, registry=self.registry, format_checker=self.formats
        )
        validator.validate(body)
        return Reply(resp.status, body)


async def test_the_checker_rejects_a_response_that_strays_from_the_document(
    web_app: WebApp,
) -> None:
    app = web_app.server.app
    assert app is not None
    api = CheckedApi(app[OPENAPI], web_app.browser())
    schema = api.schema_for("GET", "/api/v1/grants", 200)
    validator = jsonschema.Draft202012Validator(
        schema, registry=api.registry, format_checker=api.formats
    )
    grant = {
        "id": 1,
        "request_id": None,
        "vendor_login": "vendor1",
        "vendor_name": "Infusia Medical",
        "ticket": "CHG0001234",
        "devices": ["pump-12"],
        "services": ["ssh"],
        "start": "2030-05-01T08:00:00Z",
        "end": "2030-05-01T10:00:00Z",
        "recurrence": None,
        "schedule": "once",
        "approved_by": "biomed:bea",
        "transfers": "read-write",
        "observer_required": False,
        "created_at": "2030-04-30T08:00:00Z",
        "revoked_at": None,
        "revoked_by": None,
        "revoke_reason": None,
    }
    validator.validate({"grants": [grant]})
    for broken in (
        {**grant, "start": "2030-05-01 08:00"},  # not RFC 3339
        {**grant, "secret": "x"},  # not documented
        {k: v for k, v in grant.items() if k != "ticket"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({"grants": [broken]})
    with pytest.raises(AssertionError, match="not documented"):
        api.schema_for("GET", "/api/v1/grants", 418)


# --- the world: inventory, people, tokens -----------------------------------------------------


@dataclass
class World:
    api: CheckedApi
    web_app: WebApp
    db: async_sessionmaker[AsyncSession]

    def window(self, hours: float = 1, length: float = 2) -> tuple[str, str]:
        start = self.web_app.clock() + timedelta(hours=hours)
        return start.isoformat(), (start + timedelta(hours=length)).isoformat()

    def filing(self, devices: list[str], **extra: Any) -> dict[str, Any]:
        start, end = self.window()
        return {
            "ticket": "CHG0001234",
            "devices": devices,
            "services": ["ssh"],
            "start": start,
            "end": end,
            "reason": "firmware update",
            **extra,
        }

    async def file(self, who: str, devices: list[str], **extra: Any) -> dict[str, Any]:
        reply = await self.api.call(
            who, "POST", "/api/v1/requests", json=self.filing(devices, **extra)
        )
        assert reply.status == 201, reply.body
        body: dict[str, Any] = reply.body
        return body


STAFF = {
    "itsm": ["biomed"],  # the ticketing system's integration user
    "bea": ["biomed"],
    "sam": ["security"],
    "bob": ["biomed", "security"],
    "ada": ["admin"],
}


@pytest.fixture
async def world(
    web_app: WebApp,
    client: TestClient[Any, Any],
    db: async_sessionmaker[AsyncSession],
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
) -> World:
    audit = web_app.ctx.audit
    async with db() as s:
        await admin.add_segment(s, "icu")
        for name, level, services in (
            ("pump-12", Criticality.HIGH, ["ssh:22", "https:443"]),
            ("monitor-3", Criticality.MEDIUM, ["ssh:22", "https:443"]),
            ("xray-1", Criticality.LOW, ["ssh:22"]),
        ):
            await admin.add_device(
                s,
                web_app.ctx.vault,
                name=name,
                segment="icu",
                address="10.0.0.1",
                services=[admin.ServiceSpec.parse(x) for x in services],
                credential=None,
                host_key=None,
                criticality=level,
                location="ICU bed 4" if name == "pump-12" else "Radiology",
            )
    await make_vendor_user("vendor1", "Infusia Medical")
    await make_vendor_user("vendor2", "Radiant Imaging")
    for login, roles in STAFF.items():
        await make_staff(login, roles)
    async with db() as s:
        await inventory.set_vendor_devices(
            s, audit, ROOT, "Infusia Medical", ["pump-12", "monitor-3"]
        )
        await inventory.set_vendor_devices(s, audit, ROOT, "Radiant Imaging", ["xray-1"])
    app = web_app.server.app
    assert app is not None
    api = CheckedApi(app[OPENAPI], client)
    async with db() as s:
        for login in STAFF:
            _row, api.tokens[login] = await tokens.create_token(
                s, audit, ROOT, login, staff_login=login
            )
        for login in ("vendor1", "vendor2"):
            _row, api.tokens[login] = await tokens.create_token(
                s, audit, ROOT, login, vendor_login=login
            )
    return World(api, web_app, db)


async def request_row(db: async_sessionmaker[AsyncSession], request_id: int) -> AccessRequest:
    async with db() as s:
        row = await s.get(AccessRequest, request_id)
        assert row is not None
        return row


# --- the workflow -------------------------------------------------------------------------------


async def test_an_itsm_token_files_for_a_vendor_and_two_people_must_approve(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    req = await world.file("itsm", ["pump-12"], vendor_login="vendor1")
    rid = req["id"]
    assert (req["status"], req["vendor_login"], req["filed_by"]) == (
        "pending",
        "vendor1",
        "staff:itsm",
    )
    assert req["required_roles"] == req["missing_roles"] == ["biomed", "security"]
    mine = await api.call("vendor1", "GET", "/api/v1/requests")
    assert [r["id"] for r in mine.body["requests"]] == [rid]

    own = await api.call("itsm", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "biomed"})
    assert (own.status, own.code) == (403, "self-approval")

    first = await api.call(
        "bob", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "biomed"}
    )
    assert first.status == 200
    assert first.body["grant"] is None
    assert first.body["request"]["status"] == "pending"
    assert first.body["request"]["missing_roles"] == ["security"]

    # bob holds both roles, but the second approval must come from another person
    again = await api.call(
        "bob", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "security"}
    )
    assert (again.status, again.code) == (403, "already-approved")
    wrong = await api.call(
        "bea", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "security"}
    )
    assert (wrong.status, wrong.code) == (403, "role-missing")

    second = await api.call(
        "sam", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "security", "comment": "ok"}
    )
    assert second.status == 200
    grant = second.body["grant"]
    assert second.body["request"]["status"] == "approved"
    assert grant["devices"] == ["pump-12"] and grant["vendor_login"] == "vendor1"
    assert grant["approved_by"] == "biomed:bob,security:sam"
    assert grant["start"] == req["start"] and grant["end"] == req["end"]

    seen = await api.call("vendor1", "GET", "/api/v1/grants")
    assert [g["id"] for g in seen.body["grants"]] == [grant["id"]]
    other = await api.call("vendor2", "GET", "/api/v1/grants")
    assert other.body["grants"] == []
    staff = await api.call("sam", "GET", "/api/v1/grants")
    assert [g["id"] for g in staff.body["grants"]] == [grant["id"]]

    refused = [d["code"] for _t, _a, d in await audit_events("policy:request:refused")]
    assert refused == ["self-approval", "already-approved", "role-missing"]
    created = await audit_events("policy:grant:created")
    assert [(a, d["grant_id"]) for _t, a, d in created] == [("staff:sam", grant["id"])]
    filed = await audit_events("policy:request:filed")
    assert [(a, d["via"], d["vendor_user"]) for _t, a, d in filed] == [
        ("staff:itsm", "api", "vendor1")
    ]


async def test_a_vendor_sees_and_acts_on_its_own_requests_only(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    mine = await world.file("vendor1", ["monitor-3"])
    theirs = await world.file("vendor2", ["xray-1"])
    assert mine["filed_by"] == "vendor:vendor1"

    listed = await api.call("vendor1", "GET", "/api/v1/requests")
    assert [r["id"] for r in listed.body["requests"]] == [mine["id"]]
    peek = await api.call("vendor1", "GET", f"/api/v1/requests/{theirs['id']}")
    assert (peek.status, peek.code) == (404, "request-unknown")
    edit = await api.call(
        "vendor1", "PATCH", f"/api/v1/requests/{theirs['id']}", json={"reason": "mine now"}
    )
    assert (edit.status, edit.code) == (403, "not-yours")
    cancel = await api.call("vendor1", "POST", f"/api/v1/requests/{theirs['id']}/cancel")
    assert (cancel.status, cancel.code) == (403, "not-yours")
    row = await request_row(world.db, theirs["id"])
    assert (row.status, row.reason, row.revision) == (RequestStatus.PENDING, "firmware update", 1)

    for devices, extra, code in (
        (["xray-1"], {"vendor_login": "vendor2"}, "vendor-other"),
        (["xray-1"], {}, "device-not-serviced"),  # another organization's device
        (["nowhere-9"], {}, "device-not-serviced"),  # reads the same as an unknown one
    ):
        reply = await api.call(
            "vendor1", "POST", "/api/v1/requests", json=world.filing(devices, **extra)
        )
        assert (reply.status, reply.code) == (403, code)

    everyone = await api.call("bea", "GET", "/api/v1/requests")
    assert {r["id"] for r in everyone.body["requests"]} == {mine["id"], theirs["id"]}
    gone = await api.call("vendor1", "POST", f"/api/v1/requests/{mine['id']}/cancel", json={})
    assert gone.body["status"] == "cancelled"
    pending = await api.call("bea", "GET", "/api/v1/requests", params={"status": "pending"})
    assert [r["id"] for r in pending.body["requests"]] == [theirs["id"]]
    cancelled = await api.call("bea", "GET", "/api/v1/requests", params={"status": "cancelled"})
    assert [r["id"] for r in cancelled.body["requests"]] == [mine["id"]]
    detail = await api.call("bea", "GET", f"/api/v1/requests/{theirs['id']}")
    assert detail.body["context"][0]["name"] == "xray-1"

    peeks = await audit_events("web:api:refused")
    assert [(a, d["code"], d["path"]) for _t, a, d in peeks] == [
        ("vendor:vendor1", "request-unknown", f"/api/v1/requests/{theirs['id']}")
    ]
    refusals = [d["code"] for _t, _a, d in await audit_events("policy:request:refused")]
    assert refusals == [
        "not-yours",
        "not-yours",
        "vendor-other",
        "device-not-serviced",
        "device-not-serviced",
    ]


async def test_editing_a_request_clears_its_approvals(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    req = await world.file("vendor1", ["pump-12"])
    rid = req["id"]
    await api.call("bea", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "biomed"})
    before = await api.call("vendor1", "GET", f"/api/v1/requests/{rid}")
    assert [a["approver"] for a in before.body["approvals"]] == ["staff:bea"]
    assert before.body["approvals"][0]["current"] is True
    assert before.body["missing_roles"] == ["security"]
    assert before.body["context"][0]["criticality"] == "high"
    assert before.body["context"][0]["location"] == "ICU bed 4"

    edited = await api.call(
        "vendor1", "PATCH", f"/api/v1/requests/{rid}", json={"services": ["ssh", "https"]}
    )
    assert edited.status == 200
    body = edited.body
    assert (body["revision"], body["approvals"]) == (2, [])
    assert body["missing_roles"] == ["biomed", "security"]
    assert body["services"] == ["https", "ssh"]
    assert (body["ticket"], body["reason"], body["start"]) == (
        req["ticket"],
        req["reason"],
        req["start"],
    )

    start, end = world.window(hours=1, length=24 * 8)
    weekly = {"days": [0, 1, 2, 3, 4, 5, 6], "start": "22:00", "end": "02:00", "tz": "UTC"}
    recurring = await api.call(
        "vendor1",
        "PATCH",
        f"/api/v1/requests/{rid}",
        json={"start": start, "end": end, "recurrence": weekly},
    )
    assert recurring.status == 200, recurring.body
    assert recurring.body["recurrence"] == weekly
    assert recurring.body["schedule"] == "Mon-Sun 22:00-02:00 UTC"

    not_filer = await api.call("bea", "PATCH", f"/api/v1/requests/{rid}", json={"reason": "x"})
    assert (not_filer.status, not_filer.code) == (403, "not-yours")
    unknown = await api.call("vendor1", "PATCH", "/api/v1/requests/4242", json={"reason": "x"})
    assert (unknown.status, unknown.code) == (404, "request-unknown")
    naive = await api.call(
        "vendor1", "PATCH", f"/api/v1/requests/{rid}", json={"start": "2031-01-01T08:00:00"}
    )
    assert (naive.status, naive.code, naive.body["field"]) == (400, "time-invalid", "start")
    row = await request_row(world.db, rid)
    assert row.revision == 3 and row.recurrence == weekly

    # a decision (or edit) on the revision the caller reviewed, not on a newer one
    stale = await api.call(
        "bea", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "biomed", "revision": 2}
    )
    assert (stale.status, stale.code) == (409, "request-changed")
    stale_edit = await api.call(
        "vendor1", "PATCH", f"/api/v1/requests/{rid}", json={"reason": "y", "revision": 1}
    )
    assert (stale_edit.status, stale_edit.code) == (409, "request-changed")
    row = await request_row(world.db, rid)
    assert (row.revision, row.reason) == (3, "firmware update")
    current = await api.call(
        "bea", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "biomed", "revision": 3}
    )
    assert current.status == 200
    assert current.body["request"]["missing_roles"] == ["security"]
    web_refusals = [(d["code"], d["path"]) for _t, _a, d in await audit_events("web:api:")]
    assert web_refusals == [
        ("request-unknown", "/api/v1/requests/4242"),
        ("time-invalid", f"/api/v1/requests/{rid}"),
        ("request-changed", f"/api/v1/requests/{rid}/approve"),
        ("request-changed", f"/api/v1/requests/{rid}"),
    ]


async def test_deny_and_acting_on_a_decided_request(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    rid = (await world.file("vendor1", ["monitor-3"]))["id"]
    blank = await api.call("sam", "POST", f"/api/v1/requests/{rid}/deny", json={"reason": "  "})
    assert (blank.status, blank.code) == (400, "reason-missing")
    missing = await api.call("sam", "POST", f"/api/v1/requests/{rid}/deny", json={})
    assert (missing.status, missing.code, missing.body["field"]) == (400, "body-invalid", "reason")
    denied = await api.call(
        "sam", "POST", f"/api/v1/requests/{rid}/deny", json={"reason": "not during rounds"}
    )
    assert denied.status == 200
    assert (denied.body["status"], denied.body["decision_reason"]) == (
        "denied",
        "not during rounds",
    )
    for who, method, path, body in (
        ("bea", "POST", f"/api/v1/requests/{rid}/approve", {"role": "biomed"}),
        ("sam", "POST", f"/api/v1/requests/{rid}/deny", {"reason": "again"}),
        ("vendor1", "POST", f"/api/v1/requests/{rid}/cancel", {}),
        ("vendor1", "PATCH", f"/api/v1/requests/{rid}", {"reason": "please"}),
    ):
        reply = await api.call(who, method, path, json=body)
        assert (reply.status, reply.code) == (409, "request-not-pending"), path
    row = await request_row(world.db, rid)
    assert (row.status, row.decision_reason) == (RequestStatus.DENIED, "not during rounds")
    codes = [d["code"] for _t, _a, d in await audit_events("policy:request:refused")]
    assert codes == ["reason-missing", *["request-not-pending"] * 4]
    bad = await audit_events("web:api:refused")
    assert [(d["code"], d["message"]) for _t, _a, d in bad] == [
        ("body-invalid", "reason: is required")
    ]


async def test_an_approval_may_narrow_but_never_widen(world: World) -> None:
    api = world.api
    req = await world.file("vendor1", ["monitor-3"], services=["ssh", "https"])
    rid = req["id"]
    later = datetime.fromisoformat(req["end"]) + timedelta(minutes=5)
    wider = await api.call(
        "bea",
        "POST",
        f"/api/v1/requests/{rid}/approve",
        json={"role": "biomed", "end": later.isoformat()},
    )
    assert (wider.status, wider.code) == (400, "narrow-only")
    earlier = datetime.fromisoformat(req["end"]) - timedelta(minutes=30)
    ok = await api.call(
        "bea",
        "POST",
        f"/api/v1/requests/{rid}/approve",
        json={"role": "biomed", "end": earlier.isoformat(), "services": ["ssh"]},
    )
    assert ok.status == 200, ok.body
    grant = ok.body["grant"]
    assert grant["services"] == ["ssh"]
    assert datetime.fromisoformat(grant["end"]) == earlier
    assert ok.body["request"]["revision"] == 2


async def test_revoking_a_grant(world: World, audit_events: AuditEvents) -> None:
    api = world.api
    rid = (await world.file("vendor1", ["monitor-3"]))["id"]
    approved = await api.call(
        "bea", "POST", f"/api/v1/requests/{rid}/approve", json={"role": "biomed"}
    )
    gid = approved.body["grant"]["id"]
    by_vendor = await api.call(
        "vendor1", "POST", f"/api/v1/grants/{gid}/revoke", json={"reason": "x"}
    )
    assert (by_vendor.status, by_vendor.code) == (403, "role-required")
    revoked = await api.call(
        "sam", "POST", f"/api/v1/grants/{gid}/revoke", json={"reason": "work finished early"}
    )
    assert revoked.status == 200
    assert revoked.body["revoked_by"] == "staff:sam"
    assert revoked.body["revoke_reason"] == "work finished early"
    assert revoked.body["revoked_at"] is not None
    again = await api.call("sam", "POST", f"/api/v1/grants/{gid}/revoke", json={"reason": "x"})
    assert (again.status, again.code) == (409, "grant-revoked")
    unknown = await api.call("sam", "POST", "/api/v1/grants/9999/revoke", json={"reason": "x"})
    assert (unknown.status, unknown.code) == (404, "grant-unknown")
    active = await api.call("vendor1", "GET", "/api/v1/grants")
    assert active.body["grants"] == []
    events = await audit_events("policy:grant:")
    assert [(t, d.get("code")) for t, _a, d in events] == [
        ("policy:grant:created", None),
        ("policy:grant:revoked", None),
        ("policy:grant:refused", "grant-revoked"),
        ("policy:grant:refused", "grant-unknown"),
    ]
    access = await audit_events("web:access:refused")
    assert [(a, d["path"]) for _t, a, d in access] == [
        ("vendor:vendor1", f"/api/v1/grants/{gid}/revoke")
    ]


# --- sessions ----------------------------------------------------------------------------------


async def _sessions(world: World) -> tuple[str, str]:
    """A live and an ended gateway session of vendor1 on monitor-3."""
    now = world.web_app.clock()
    async with world.db() as s:
        grant = await admin.add_grant(
            s,
            login="vendor1",
            devices=["monitor-3"],
            services=["ssh"],
            ticket="CHG0004321",
            start=now - timedelta(hours=1),
            end=now + timedelta(hours=1),
            approved_by="biomed:bea",
        )
        device = await s.scalar(select(Device).where(Device.name == "monitor-3"))
        user = await s.scalar(select(VendorUser).where(VendorUser.login == "vendor1"))
        assert device is not None and user is not None
        rows = [
            Session(
                vendor_user_id=user.id,
                device_id=device.id,
                grant_id=grant.id,
                ticket_ref="CHG0004321",
                kind="shell",
                started_at=now - timedelta(minutes=minutes),
                ended_at=ended,
                end_reason="client-closed" if ended else None,
            )
            for minutes, ended in ((5, None), (50, now - timedelta(minutes=40)))
        ]
        s.add_all(rows)
        await s.commit()
        return rows[0].id, rows[1].id


async def test_listing_and_killing_sessions(world: World, audit_events: AuditEvents) -> None:
    api = world.api
    live, ended = await _sessions(world)
    everything = await api.call("bea", "GET", "/api/v1/sessions")
    assert [s["id"] for s in everything.body["sessions"]] == [live, ended]
    assert everything.body["sessions"][0]["live"] is True
    only_live = await api.call("sam", "GET", "/api/v1/sessions", params={"live": "true"})
    assert [s["id"] for s in only_live.body["sessions"]] == [live]
    since = (world.web_app.clock() - timedelta(minutes=10)).isoformat()
    recent = await api.call(
        "sam", "GET", "/api/v1/sessions", params={"since": since, "device": "monitor-3"}
    )
    assert [s["id"] for s in recent.body["sessions"]] == [live]
    for params, code in (
        ({"since": "2030-01-01T00:00:00"}, "time-invalid"),
        ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "time-range-invalid"),
        ({"live": "yes"}, "param-invalid"),
        ({"vendr": "vendor1"}, "param-invalid"),
    ):
        reply = await api.call("sam", "GET", "/api/v1/sessions", params=params)
        assert (reply.status, reply.code) == (400, code), params
    hidden = await api.call("vendor1", "GET", "/api/v1/sessions")
    assert (hidden.status, hidden.code) == (403, "role-required")

    not_biomed = await api.call("bea", "POST", f"/api/v1/sessions/{live}/kill")
    assert (not_biomed.status, not_biomed.code) == (403, "role-required")
    killed = await api.call(
        "sam", "POST", f"/api/v1/sessions/{live}/kill", json={"reason": "odd commands"}
    )
    assert killed.status == 202
    assert killed.body["kill_requested_by"] == "staff:sam"
    async with world.db() as s:
        row = await s.get(Session, live)
        assert row is not None and row.kill_requested_by == "staff:sam"
    over = await api.call("sam", "POST", f"/api/v1/sessions/{ended}/kill")
    assert (over.status, over.code) == (409, "session-ended")
    unknown = await api.call("sam", "POST", "/api/v1/sessions/feedface/kill")
    assert (unknown.status, unknown.code) == (404, "session-unknown")

    kills = await audit_events("web:session:kill")
    assert [(t, a, e.get("reason"), e.get("code")) for t, a, e in kills] == [
        ("web:session:kill", "staff:sam", "odd commands", None),
        ("web:session:kill-refused", "staff:sam", None, "session-ended"),
        ("web:session:kill-refused", "staff:sam", None, "session-unknown"),
    ]
    async with world.db() as s:
        event = await s.scalar(select(AuditEvent).where(AuditEvent.tag == "web:session:kill"))
        assert event is not None
        assert (event.device, event.session_id) == ("monitor-3", live)
        stored = await s.get(Session, ended)
        assert stored is not None and stored.kill_requested_at is None


# --- refusals ----------------------------------------------------------------------------------


async def test_authentication_and_routing_errors_are_json(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    anonymous = await api.call(None, "GET", "/api/v1/requests")
    assert (anonymous.status, anonymous.code) == (401, "authentication-required")
    forged = await api.call(
        None, "GET", "/api/v1/requests", headers={"Authorization": "Bearer spt_forged"}
    )
    assert (forged.status, forged.code) == (401, "token-invalid")
    nothing = await api.call("bea", "GET", "/api/v1/nothing-here")
    assert (nothing.status, nothing.code) == (404, "not-found")
    verb = await api.call("bea", "DELETE", "/api/v1/requests")
    assert (verb.status, verb.code) == (405, "method-not-allowed")
    unknown = await api.call("bea", "GET", "/api/v1/requests/4242")
    assert (unknown.status, unknown.code) == (404, "request-unknown")
    for bad_id in ("abc", "0", "99999999999"):  # ids are 32-bit in the database
        not_id = await api.call("bea", "GET", f"/api/v1/requests/{bad_id}")
        assert (not_id.status, not_id.code, not_id.body["field"]) == (400, "param-invalid", "id")
    nul = await api.call("bea", "GET", "/api/v1/devices", params={"q": "a\x00"})
    assert (nul.status, nul.code, nul.body["field"]) == (400, "param-invalid", "q")
    role = await api.call("vendor1", "POST", "/api/v1/devices", json={"name": "x"})
    assert (role.status, role.code) == (403, "role-required")
    tokens_refused = await audit_events("web:token:refused")
    assert [d["reason"] for _t, _a, d in tokens_refused] == ["token-invalid"]


async def test_bad_bodies_are_refused_naming_the_field(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    good = world.filing(["monitor-3"])
    cases: list[tuple[Any, str, str | None]] = [
        ("{not json", "body-invalid", None),
        ([good], "body-invalid", None),
        ({**good, "vendor": "vendor1"}, "body-invalid", "vendor"),
        ({**good, "devices": "monitor-3"}, "body-invalid", "devices"),
        ({**good, "devices": ["monitor-3", 7]}, "body-invalid", "devices[1]"),
        ({k: v for k, v in good.items() if k != "ticket"}, "body-invalid", "ticket"),
        ({**good, "start": "2031-01-01T08:00:00"}, "time-invalid", "start"),
        ({**good, "end": "next tuesday"}, "time-invalid", "end"),
        ({**good, "recurrence": {"days": [1]}}, "body-invalid", "recurrence.start"),
        ({**good, "reason": "nul\x00byte"}, "body-invalid", "reason"),
        ({**good, "devices": ["\ud800"]}, "body-invalid", "devices[0]"),
        ({**good, "end": "9999-12-31T23:59:59-12:00"}, "time-invalid", "end"),
        ("[" * 100_000, "body-invalid", None),
        (b'{"reason": "\xff"}', "body-invalid", None),
    ]
    for body, code, where in cases:
        if isinstance(body, str | bytes):
            reply = await api.call(
                "vendor1",
                "POST",
                "/api/v1/requests",
                data=body,
                headers={"Content-Type": "application/json"},
            )
        else:
            reply = await api.call("vendor1", "POST", "/api/v1/requests", json=body)
        assert (reply.status, reply.code, reply.body.get("field")) == (400, code, where), body
    empty = await api.call("vendor1", "POST", "/api/v1/requests")
    assert (empty.status, empty.code) == (400, "body-invalid")
    rules = await api.call("vendor1", "POST", "/api/v1/requests", json={**good, "ticket": "T-1"})
    assert (rules.status, rules.code) == (400, "ticket-invalid")
    async with world.db() as s:
        assert (await s.scalars(select(AccessRequest))).all() == []
    refused = await audit_events("web:api:refused")
    assert [d["code"] for _t, _a, d in refused] == [code for _b, code, _w in cases] + [
        "body-invalid"
    ]
    assert {a for _t, a, _d in refused} == {"vendor:vendor1"}


# --- devices -----------------------------------------------------------------------------------

NEW_DEVICE = {
    "name": "pump-13",
    "segment": "icu",
    "address": "10.0.0.13",
    "criticality": "high",
    "services": ["ssh:22", {"name": "https", "port": 443}],
    "maintenance": ["mon-fri 06:00-18:00 UTC"],
    "model": "Infusia P-2",
    "location": "ICU bed 9",
    "credential": {"username": "service", "kind": "password", "secret": "pump-s3cret"},
}
CSV_HEADER = (
    "name,segment,address,criticality,manufacturer,model,firmware,location,asset_tag,services"
)


async def test_admins_add_and_biomed_changes_devices(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    made = await api.call("ada", "POST", "/api/v1/devices", json=NEW_DEVICE)
    assert made.status == 201, made.body
    assert "pump-s3cret" not in json.dumps(made.body)
    assert made.body["services"] == [{"name": "ssh", "port": 22}, {"name": "https", "port": 443}]
    assert made.body["maintenance"] == ["Mon-Fri 06:00-18:00 UTC"]
    assert (made.body["credential_username"], made.body["credential_kind"]) == (
        "service",
        "password",
    )
    twice = await api.call("ada", "POST", "/api/v1/devices", json=NEW_DEVICE)
    assert (twice.status, twice.code) == (409, "device-exists")
    bad = await api.call(
        "ada",
        "POST",
        "/api/v1/devices",
        json={**NEW_DEVICE, "name": "pump-14", "address": "pump.local"},
    )
    assert (bad.status, bad.code) == (400, "address-invalid")
    by_biomed = await api.call("bea", "POST", "/api/v1/devices", json={**NEW_DEVICE, "name": "x"})
    assert (by_biomed.status, by_biomed.code) == (403, "role-required")

    changed = await api.call(
        "bea", "PATCH", "/api/v1/devices/pump-13", json={"criticality": "low", "location": "ICU 2"}
    )
    assert changed.status == 200
    assert (changed.body["criticality"], changed.body["location"]) == ("low", "ICU 2")
    assert changed.body["model"] == "Infusia P-2"
    refused = await api.call(
        "ada", "PATCH", "/api/v1/devices/pump-13", json={"maintenance": ["whenever"]}
    )
    assert (refused.status, refused.code) == (400, "recurrence-invalid")
    by_vendor = await api.call("vendor1", "PATCH", "/api/v1/devices/pump-13", json={"model": "x"})
    assert (by_vendor.status, by_vendor.code) == (403, "role-required")
    missing = await api.call("ada", "PATCH", "/api/v1/devices/pump-99", json={"model": "x"})
    assert (missing.status, missing.code) == (404, "device-unknown")
    async with world.db() as s:
        device = await s.scalar(select(Device).where(Device.name == "pump-13"))
        assert device is not None
        assert (device.criticality, device.location) == (Criticality.LOW, "ICU 2")
    events = [(t, d.get("code")) for t, _a, d in await audit_events("policy:device:")]
    assert events == [
        ("policy:device:created", None),
        ("policy:device:refused", "device-exists"),
        ("policy:device:refused", "address-invalid"),
        ("policy:device:updated", None),
        ("policy:device:refused", "recurrence-invalid"),
        ("policy:device:refused", "device-unknown"),
    ]


async def test_vendors_see_only_their_devices_without_addresses(world: World) -> None:
    api = world.api
    theirs = await api.call("vendor1", "GET", "/api/v1/devices")
    assert [d["name"] for d in theirs.body["devices"]] == ["monitor-3", "pump-12"]
    assert all("address" not in d for d in theirs.body["devices"])
    searched = await api.call("vendor1", "GET", "/api/v1/devices", params={"q": "ICU"})
    assert [d["name"] for d in searched.body["devices"]] == ["pump-12"]
    other = await api.call("vendor1", "GET", "/api/v1/devices/xray-1")
    assert (other.status, other.code) == (404, "device-unknown")
    one = await api.call("vendor1", "GET", "/api/v1/devices/pump-12")
    assert one.body["criticality"] == "high" and "address" not in one.body
    staff = await api.call("bea", "GET", "/api/v1/devices", params={"q": "radiology"})
    assert [d["name"] for d in staff.body["devices"]] == ["monitor-3", "xray-1"]
    assert staff.body["devices"][0]["address"] == "10.0.0.1"
    limited = await api.call("bea", "GET", "/api/v1/devices", params={"limit": "1"})
    assert len(limited.body["devices"]) == 1


async def test_csv_import_is_all_or_nothing_with_line_numbers(
    world: World, audit_events: AuditEvents
) -> None:
    api = world.api
    csv = "\n".join(
        [
            CSV_HEADER,
            "vent-1,icu,10.0.1.1,life-sustaining,Acme,V1,1.0,ICU bed 1,A-1,ssh:22",
            "pump-12,icu,10.0.0.1,high,Infusia,P-1,2.0,ICU bed 4,A-2,ssh:22;https:443",
        ]
    )
    bad = csv + "\nvent-2,nowhere,10.0.1.2,extreme,Acme,V1,1.0,ICU,A-3,ssh:22\n"
    headers = {"Content-Type": "text/csv"}
    refused = await api.call("ada", "POST", "/api/v1/devices/import", data=bad, headers=headers)
    assert (refused.status, refused.code) == (400, "csv-invalid")
    assert [e["line"] for e in refused.body["errors"]] == [4, 4]
    messages = " ".join(e["message"] for e in refused.body["errors"])
    assert "segment 'nowhere' does not exist" in messages and "extreme" in messages
    async with world.db() as s:
        assert await s.scalar(select(Device).where(Device.name == "vent-1")) is None
    done = await api.call("ada", "POST", "/api/v1/devices/import", data=csv, headers=headers)
    assert done.body == {"created": 1, "updated": 1, "unchanged": 0}
    as_json = await api.call("ada", "POST", "/api/v1/devices/import", json={"csv": csv})
    assert (as_json.status, as_json.code) == (415, "media-type-unsupported")
    by_biomed = await api.call("bea", "POST", "/api/v1/devices/import", data=csv, headers=headers)
    assert (by_biomed.status, by_biomed.code) == (403, "role-required")
    imports = [(t, d.get("code")) for t, _a, d in await audit_events("policy:device:")]
    assert imports == [("policy:device:refused", "csv-invalid"), ("policy:device:imported", None)]


# --- notifications and browser sessions ------------------------------------------------------


@dataclass
class Hooks:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.events.append((body["event"], body["data"]))
        return web.Response()


async def test_changes_are_notified(world: World) -> None:
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    notifier = Notifier(webhooks=[url], audit=world.web_app.ctx.audit)
    notifier.start()
    world.web_app.ctx.notifier = notifier
    api = world.api
    try:
        first = await world.file("itsm", ["monitor-3"], vendor_login="vendor1")
        approved = await api.call(
            "bea", "POST", f"/api/v1/requests/{first['id']}/approve", json={"role": "biomed"}
        )
        gid = approved.body["grant"]["id"]
        await api.call("sam", "POST", f"/api/v1/grants/{gid}/revoke", json={"reason": "done"})
        second = await world.file("vendor1", ["monitor-3"])
        await api.call(
            "bea", "POST", f"/api/v1/requests/{second['id']}/deny", json={"reason": "no"}
        )
        third = await world.file("vendor1", ["pump-12"])
        await api.call(
            "bob", "POST", f"/api/v1/requests/{third['id']}/approve", json={"role": "biomed"}
        )
        await api.call("vendor1", "POST", f"/api/v1/requests/{third['id']}/cancel")
    finally:
        await notifier.close()  # delivers what is queued first
        await runner.cleanup()
    assert [(e, d.get("request_id")) for e, d in hooks.events] == [
        ("request.filed", first["id"]),
        ("request.approved", first["id"]),
        ("grant.revoked", first["id"]),
        ("request.filed", second["id"]),
        ("request.denied", second["id"]),
        ("request.filed", third["id"]),  # a partial approval is no news for the vendor
        ("request.cancelled", third["id"]),
    ]
    filed = hooks.events[0][1]
    assert (filed["vendor"], filed["actor"], filed["devices"]) == (
        "vendor1",
        "staff:itsm",
        ["monitor-3"],
    )
    assert hooks.events[2][1]["revoke_reason"] == "done"


async def test_a_browser_session_uses_the_api_with_its_csrf_token(
    world: World, login: Login, make_staff: MakeStaff, audit_events: AuditEvents
) -> None:
    browser = world.web_app.browser()
    _user, password, secret = await make_staff("carl", ["biomed"])
    start_page = await login(browser, "carl", password, secret)
    token = csrf_from(await start_page.text())
    api = CheckedApi(world.api.doc, browser)
    listed = await api.call(None, "GET", "/api/v1/requests")
    assert listed.status == 200
    rid = (await world.file("vendor1", ["monitor-3"]))["id"]
    path = f"/api/v1/requests/{rid}/deny"
    forged = await api.call(None, "POST", path, json={"reason": "forged"})
    assert (forged.status, forged.code) == (403, "csrf-refused")
    row = await request_row(world.db, rid)
    assert row.status is RequestStatus.PENDING
    denied = await api.call(
        None, "POST", path, json={"reason": "no"}, headers={"X-CSRF-Token": token}
    )
    assert (denied.status, denied.body["status"]) == (200, "denied")
    csrf = await audit_events("web:csrf:refused")
    assert [(a, d["path"]) for _t, a, d in csrf] == [("staff:carl", path)]
