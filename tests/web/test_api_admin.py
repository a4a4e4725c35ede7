"""The API's SSH keys and administration (web/api_keys.py, web/api_admin.py), end to end.

Every answer goes through ``CheckedApi`` (tests/web/test_api.py), which checks it against
the OpenAPI document's schema for that operation and status.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, inventory, tokens
from policy.models import Invite, Segment, StaffUser, Vendor, VendorKey
from tests.web.conftest import AuditEvents, MakeStaff, MakeVendorUser, WebApp
from tests.web.test_api import ROOT, CheckedApi
from tests.web.test_onboarding import dsa_line, ed25519_line, rsa_line
from web.openapi import OPENAPI

PEOPLE = {"bea": ["biomed"], "sam": ["security"], "ada": ["admin"]}
INFUSIA = "/api/v1/vendors/Infusia%20Medical/devices"


@dataclass
class Admin:
    api: CheckedApi
    web_app: WebApp
    db: async_sessionmaker[AsyncSession]

    async def codes(self, audit_events: AuditEvents, prefix: str) -> list[tuple[str, Any]]:
        return [(tag, d.get("code")) for tag, _a, d in await audit_events(prefix)]


@pytest.fixture
async def world(
    web_app: WebApp,
    client: TestClient[Any, Any],
    db: async_sessionmaker[AsyncSession],
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
) -> Admin:
    async with db() as s:
        await admin.add_segment(s, "icu", "intensive care", ["10.0.0.0/24"])
        for name in ("pump-12", "monitor-3", "xray-1"):
            await admin.add_device(
                s,
                web_app.ctx.vault,
                name=name,
                segment="icu",
                address="10.0.0.1",
                services=[admin.ServiceSpec.parse("ssh:22")],
                credential=None,
                host_key=None,
            )
    await make_vendor_user("vendor1", "Infusia Medical", display_name="Eve Engineer")
    await make_vendor_user("vendor2", "Radiant Imaging")
    for login, roles in PEOPLE.items():
        await make_staff(login, roles)
    app = web_app.server.app
    assert app is not None
    api = CheckedApi(app[OPENAPI], client)
    async with db() as s:
        await inventory.set_vendor_devices(
            s, web_app.ctx.audit, ROOT, "Infusia Medical", ["pump-12"]
        )
        for login in PEOPLE:
            _row, api.tokens[login] = await tokens.create_token(
                s, web_app.ctx.audit, ROOT, login, staff_login=login
            )
        for login in ("vendor1", "vendor2"):
            _row, api.tokens[login] = await tokens.create_token(
                s, web_app.ctx.audit, ROOT, login, vendor_login=login
            )
    return Admin(api, web_app, db)


# --- SSH keys -------------------------------------------------------------------------------


async def test_a_vendor_adds_lists_and_removes_its_own_keys(
    world: Admin, audit_events: AuditEvents
) -> None:
    api = world.api
    empty = await api.call("vendor1", "GET", "/api/v1/keys")
    assert (empty.status, empty.body) == (200, {"keys": []})
    line = ed25519_line("eng@laptop")
    added = await api.call("vendor1", "POST", "/api/v1/keys", json={"public_key": line})
    assert added.status == 201, added.body
    assert added.body["algorithm"] == "ssh-ed25519"
    assert added.body["comment"] == "eng@laptop"
    assert line.startswith(added.body["public_key"])
    assert added.body["fingerprint"].startswith("SHA256:")
    listed = await api.call("vendor1", "GET", "/api/v1/keys")
    assert listed.body["keys"] == [added.body]
    assert (await api.call("vendor2", "GET", "/api/v1/keys")).body == {"keys": []}

    again = await api.call("vendor2", "POST", "/api/v1/keys", json={"public_key": line})
    assert (again.status, again.code) == (409, "key-taken")
    other = await api.call("vendor2", "DELETE", f"/api/v1/keys/{added.body['id']}")
    assert (other.status, other.code) == (404, "key-unknown")
    staff = await api.call("ada", "GET", "/api/v1/keys")
    assert (staff.status, staff.code) == (403, "role-required")
    async with world.db() as s:
        assert len((await s.scalars(select(VendorKey))).all()) == 1

    removed = await api.call("vendor1", "DELETE", f"/api/v1/keys/{added.body['id']}")
    assert (removed.status, removed.body) == (200, added.body)
    gone = await api.call("vendor1", "DELETE", f"/api/v1/keys/{added.body['id']}")
    assert (gone.status, gone.code) == (404, "key-unknown")
    assert (await api.call("vendor1", "GET", "/api/v1/keys")).body == {"keys": []}

    changes = [(t, a, d["fingerprint"]) for t, a, d in await audit_events("web:key:")]
    fingerprint = added.body["fingerprint"]
    assert changes == [
        ("web:key:added", "vendor:vendor1", fingerprint),
        ("web:key:removed", "vendor:vendor1", fingerprint),
    ]
    refusals = [(a, d["code"]) for _t, a, d in await audit_events("web:api:refused")]
    assert refusals == [
        ("vendor:vendor2", "key-taken"),
        ("vendor:vendor2", "key-unknown"),
        ("vendor:vendor1", "key-unknown"),
    ]


async def test_weak_and_malformed_keys_are_refused_with_the_reason(
    world: Admin, audit_events: AuditEvents
) -> None:
    api = world.api
    cases = [
        (rsa_line(2048), "key-weak", "RSA key of 2048 bits is too weak; at least 3072 needed"),
        (dsa_line(), "key-weak", "DSA keys are not accepted; use ed25519 or RSA >= 3072"),
        ("ssh-ed25519 AAAA!!", "key-invalid", "the key cannot be read"),
        (ed25519_line() + "\n" + ed25519_line(), "key-invalid", "paste one key, on one line"),
    ]
    for line, code, message in cases:
        reply = await api.call("vendor1", "POST", "/api/v1/keys", json={"public_key": line})
        assert (reply.status, reply.code) == (400, code), reply.body
        assert reply.body["message"].startswith(message)
    strong = await api.call("vendor1", "POST", "/api/v1/keys", json={"public_key": rsa_line(3072)})
    assert (strong.status, strong.body["algorithm"]) == (201, "ssh-rsa")
    async with world.db() as s:
        assert len((await s.scalars(select(VendorKey))).all()) == 1
    refused = [d["code"] for _t, _a, d in await audit_events("web:api:refused")]
    assert refused == [code for _l, code, _m in cases]


# --- segments -------------------------------------------------------------------------------


async def test_admins_add_and_change_segments(world: Admin, audit_events: AuditEvents) -> None:
    api = world.api
    listed = await api.call("ada", "GET", "/api/v1/segments")
    assert [(s["name"], s["devices"], s["networks"]) for s in listed.body["segments"]] == [
        ("icu", 3, ["10.0.0.0/24"])
    ]
    body = {"name": "radiology", "description": "X-ray", "networks": ["10.20.0.0/16"]}
    made = await api.call("ada", "POST", "/api/v1/segments", json=body)
    assert made.status == 201, made.body
    assert {k: made.body[k] for k in body} == body
    assert made.body["devices"] == 0
    refusals = [
        ({**body, "description": "twice"}, 409, "segment-exists"),
        ({"name": "lab", "networks": ["10.0.0.1/24"]}, 400, "network-invalid"),
        ({"name": "10.1.1.1"}, 400, "segment-name-invalid"),
    ]
    for sent, status, code in refusals:
        reply = await api.call("ada", "POST", "/api/v1/segments", json=sent)
        assert (reply.status, reply.code) == (status, code), sent
    role = await api.call("bea", "POST", "/api/v1/segments", json={"name": "lab"})
    assert (role.status, role.code) == (403, "role-required")

    changed = await api.call(
        "ada", "PATCH", "/api/v1/segments/radiology", json={"networks": ["10.21.0.0/16"]}
    )
    assert (changed.body["description"], changed.body["networks"]) == ("X-ray", ["10.21.0.0/16"])
    bad = await api.call("ada", "PATCH", "/api/v1/segments/radiology", json={"networks": ["x"]})
    assert (bad.status, bad.code) == (400, "network-invalid")
    unknown = await api.call("ada", "PATCH", "/api/v1/segments/nowhere", json={})
    assert (unknown.status, unknown.code) == (404, "segment-unknown")
    async with world.db() as s:
        rows = {r.name: (r.description, r.networks) for r in await s.scalars(select(Segment))}
    assert rows == {
        "icu": ("intensive care", ["10.0.0.0/24"]),
        "radiology": ("X-ray", ["10.21.0.0/16"]),
    }
    assert await world.codes(audit_events, "web:segment:") == [("web:segment:created", None)]
    assert await world.codes(audit_events, "web:api:refused") == [
        ("web:api:refused", code) for _s, _st, code in refusals
    ]
    assert await world.codes(audit_events, "policy:segment:") == [
        ("policy:segment:updated", None),
        ("policy:segment:refused", "network-invalid"),
        ("policy:segment:refused", "segment-unknown"),
    ]


# --- vendor organizations -------------------------------------------------------------------


async def test_vendor_organizations_and_the_devices_they_service(
    world: Admin, audit_events: AuditEvents
) -> None:
    api = world.api
    listed = await api.call("bea", "GET", "/api/v1/vendors")
    infusia, radiant = listed.body["vendors"]
    assert (infusia["name"], infusia["devices"]) == ("Infusia Medical", ["pump-12"])
    assert [(u["login"], u["display_name"], u["disabled"]) for u in infusia["users"]] == [
        ("vendor1", "Eve Engineer", False)
    ]
    assert (radiant["devices"], [u["login"] for u in radiant["users"]]) == ([], ["vendor2"])

    made = await api.call("ada", "POST", "/api/v1/vendors", json={"name": "Acme Dialysis"})
    assert (made.status, made.body["devices"], made.body["users"]) == (201, [], [])
    twice = await api.call("ada", "POST", "/api/v1/vendors", json={"name": "Acme Dialysis"})
    assert (twice.status, twice.code) == (409, "vendor-exists")
    blank = await api.call("ada", "POST", "/api/v1/vendors", json={"name": "  "})
    assert (blank.status, blank.code) == (400, "vendor-name-invalid")
    biomed = await api.call("bea", "POST", "/api/v1/vendors", json={"name": "Other"})
    assert (biomed.status, biomed.code) == (403, "role-required")

    chosen = await api.call("bea", "PUT", INFUSIA, json={"devices": ["monitor-3", "pump-12"]})
    assert chosen.body["devices"] == ["monitor-3", "pump-12"]
    unknown = await api.call("bea", "PUT", INFUSIA, json={"devices": ["pump-12", "ghost"]})
    assert (unknown.status, unknown.code) == (404, "device-unknown")
    nobody = await api.call("ada", "PUT", "/api/v1/vendors/Nobody/devices", json={"devices": []})
    assert (nobody.status, nobody.code) == (404, "vendor-unknown")
    security = await api.call("sam", "GET", "/api/v1/vendors")
    assert (security.status, security.code) == (403, "role-required")

    devices = await api.call("vendor1", "GET", "/api/v1/devices")  # what the users may request
    assert [d["name"] for d in devices.body["devices"]] == ["monitor-3", "pump-12"]
    async with world.db() as s:
        names = sorted(await s.scalars(select(Vendor.name)))
    assert names == ["Acme Dialysis", "Infusia Medical", "Radiant Imaging"]
    assert await world.codes(audit_events, "web:vendor:") == [("web:vendor:created", None)]
    assert [c for _t, c in await world.codes(audit_events, "web:api:refused")] == [
        "vendor-exists",
        "vendor-name-invalid",
    ]
    assert await world.codes(audit_events, "policy:vendor:") == [
        ("policy:vendor:devices-changed", None),  # the fixture's
        ("policy:vendor:devices-changed", None),
        ("policy:vendor:refused", "device-unknown"),
        ("policy:vendor:refused", "vendor-unknown"),
    ]


# --- invites --------------------------------------------------------------------------------


async def test_invite_links_are_shown_once_and_open_the_registration_page(
    world: Admin, audit_events: AuditEvents
) -> None:
    api = world.api
    staff = await api.call(
        "ada", "POST", "/api/v1/invites", json={"kind": "staff", "roles": ["security"]}
    )
    assert staff.status == 201, staff.body
    assert (staff.body["kind"], staff.body["vendor"], staff.body["roles"]) == (
        "staff",
        None,
        ["security"],
    )
    url = urlsplit(staff.body["url"])
    assert f"{url.scheme}://{url.netloc}" == world.web_app.url
    assert url.path.startswith("/invite/")
    page = await world.web_app.browser().get(url.path)
    assert page.status == 200
    assert "security" in await page.text()

    vendor = await api.call(
        "bea",
        "POST",
        "/api/v1/invites",
        json={"kind": "vendor", "vendor": "Infusia Medical", "email": "eng@infusia.example"},
    )
    assert vendor.status == 201, vendor.body
    assert (vendor.body["vendor"], vendor.body["email"]) == (
        "Infusia Medical",
        "eng@infusia.example",
    )
    refusals = [
        ("bea", {"kind": "staff", "roles": ["admin"]}, 403, "role-required"),
        ("ada", {"kind": "vendor", "vendor": "Nobody"}, 404, "vendor-unknown"),
        ("ada", {"kind": "vendor", "vendor": "Infusia Medical", "roles": ["admin"]}, 400,
         "role-invalid"),
        ("ada", {"kind": "staff", "roles": ["biomed"], "email": "no address"}, 400,
         "email-invalid"),
    ]  # fmt: skip
    for who, sent, status, code in refusals:
        reply = await api.call(who, "POST", "/api/v1/invites", json=sent)
        assert (reply.status, reply.code) == (status, code), sent
    sam = await api.call("sam", "POST", "/api/v1/invites", json={"kind": "staff", "roles": []})
    assert (sam.status, sam.code) == (403, "role-required")

    async with world.db() as s:
        stored = list(await s.scalars(select(Invite).order_by(Invite.id)))
    tokens_sent = [urlsplit(r.body["url"]).path.removeprefix("/invite/") for r in (staff, vendor)]
    assert [i.token_hash for i in stored] == [
        hashlib.sha256(t.encode()).hexdigest() for t in tokens_sent
    ]
    assert await world.codes(audit_events, "policy:invite:") == [
        ("policy:invite:created", None),
        ("policy:invite:created", None),
        *[("policy:invite:refused", code) for _w, _s, _st, code in refusals],
    ]


# --- staff ----------------------------------------------------------------------------------


async def staff_rows(db: async_sessionmaker[AsyncSession]) -> dict[str, tuple[list[str], bool]]:
    async with db() as s:
        return {u.login: (list(u.roles), u.disabled) for u in await s.scalars(select(StaffUser))}


async def test_admins_change_staff_roles_and_accounts_but_keep_an_admin(
    world: Admin, audit_events: AuditEvents
) -> None:
    api = world.api
    listed = await api.call("ada", "GET", "/api/v1/staff")
    assert [(u["login"], u["roles"]) for u in listed.body["staff"]] == [
        ("ada", ["admin"]),
        ("bea", ["biomed"]),
        ("sam", ["security"]),
    ]
    before = await staff_rows(world.db)
    refusals = [
        ("ada", {"roles": ["biomed"]}, 409, "last-admin"),
        ("ada", {"disabled": True}, 403, "self-disable"),
        # a refused disable leaves the roles sent with it unapplied
        ("ada", {"roles": ["admin", "security"], "disabled": True}, 403, "self-disable"),
        ("nobody", {"roles": ["biomed"]}, 404, "login-unknown"),
    ]
    for login, sent, status, code in refusals:
        reply = await api.call("ada", "PATCH", f"/api/v1/staff/{login}", json=sent)
        assert (reply.status, reply.code) == (status, code), sent
    assert await staff_rows(world.db) == before
    bad = await api.call("ada", "PATCH", "/api/v1/staff/bea", json={"roles": ["root"]})
    assert (bad.status, bad.code, bad.body["field"]) == (400, "body-invalid", "roles[0]")
    nobody = await api.call("ada", "PATCH", "/api/v1/staff/nobody", json={})
    assert (nobody.status, nobody.code) == (404, "login-unknown")
    role = await api.call("bea", "PATCH", "/api/v1/staff/bea", json={"roles": ["admin"]})
    assert (role.status, role.code) == (403, "role-required")

    promoted = await api.call("ada", "PATCH", "/api/v1/staff/bea", json={"roles": ["admin"]})
    assert (promoted.body["roles"], promoted.body["disabled"]) == (["admin"], False)
    both = {"roles": ["biomed", "security"], "disabled": True}
    disabled = await api.call("ada", "PATCH", "/api/v1/staff/bea", json=both)
    assert (disabled.body["roles"], disabled.body["disabled"]) == (["biomed", "security"], True)
    locked_out = await api.call("bea", "GET", "/api/v1/requests")
    assert (locked_out.status, locked_out.code) == (401, "token-invalid")
    enabled = await api.call("ada", "PATCH", "/api/v1/staff/bea", json={"disabled": False})
    assert enabled.body["disabled"] is False
    assert (await api.call("bea", "GET", "/api/v1/requests")).status == 200

    events = await world.codes(audit_events, "policy:staff:")
    assert events == [
        ("policy:staff:refused", "last-admin"),
        ("policy:staff:refused", "self-disable"),
        ("policy:staff:refused", "self-disable"),
        ("policy:staff:refused", "login-unknown"),
        ("policy:staff:roles-changed", None),
        ("policy:staff:disabled", None),
        ("policy:staff:roles-changed", None),
        ("policy:staff:enabled", None),
    ]
    assert [c for _t, c in await world.codes(audit_events, "web:api:refused")] == [
        "body-invalid",
        "login-unknown",
    ]


# --- API tokens -----------------------------------------------------------------------------


async def test_admins_make_list_and_revoke_api_tokens(
    world: Admin, audit_events: AuditEvents
) -> None:
    api = world.api
    made = await api.call(
        "ada", "POST", "/api/v1/tokens", json={"name": "siem", "staff_login": "sam"}
    )
    assert made.status == 201, made.body
    assert (made.body["acts_as"], made.body["created_by"]) == ("staff:sam", "staff:ada")
    api.tokens["siem"] = made.body["token"]
    assert made.body["token"].startswith("spt_")
    assert (await api.call("siem", "GET", "/api/v1/sessions")).status == 200
    listed = await api.call("ada", "GET", "/api/v1/tokens")
    newest = listed.body["tokens"][0]
    assert {k: v for k, v in made.body.items() if k not in ("token", "last_used_at")} == {
        k: v for k, v in newest.items() if k != "last_used_at"
    }
    assert newest["last_used_at"] is not None
    assert all("token" not in t for t in listed.body["tokens"])

    refusals = [
        ({"name": "x", "staff_login": "sam", "vendor_login": "vendor1"}, 400, "token-owner"),
        ({"name": "x"}, 400, "token-owner"),
        ({"name": "x", "vendor_login": "ghost"}, 404, "login-unknown"),
        ({"name": " ", "vendor_login": "vendor1"}, 400, "token-name-invalid"),
    ]
    for sent, status, code in refusals:
        reply = await api.call("ada", "POST", "/api/v1/tokens", json=sent)
        assert (reply.status, reply.code) == (status, code), sent
    biomed = await api.call("bea", "GET", "/api/v1/tokens")
    assert (biomed.status, biomed.code) == (403, "role-required")

    revoked = await api.call("ada", "POST", f"/api/v1/tokens/{made.body['id']}/revoke")
    assert revoked.status == 200 and revoked.body["revoked_at"] is not None
    stopped = await api.call("siem", "GET", "/api/v1/sessions")
    assert (stopped.status, stopped.code) == (401, "token-invalid")
    twice = await api.call("ada", "POST", f"/api/v1/tokens/{made.body['id']}/revoke")
    assert (twice.status, twice.code) == (409, "token-revoked")
    unknown = await api.call("ada", "POST", "/api/v1/tokens/4242/revoke")
    assert (unknown.status, unknown.code) == (404, "token-unknown")

    events = await world.codes(audit_events, "policy:token:")
    assert events[-8:] == [
        ("policy:token:created", None),
        *[("policy:token:refused", code) for _s, _st, code in refusals],
        ("policy:token:revoked", None),
        ("policy:token:refused", "token-revoked"),
        ("policy:token:refused", "token-unknown"),
    ]


async def test_the_api_reads_and_writes_the_rule(world: Admin) -> None:
    api = world.api
    listed = await api.call("ada", "GET", "/api/v1/devices/pump-12")
    assert listed.status == 200 and listed.body["observer_required"] is None
    changed = await api.call(
        "bea", "PATCH", "/api/v1/devices/pump-12", json={"observer_required": True}
    )
    assert changed.status == 200 and changed.body["observer_required"] is True
    kept = await api.call("bea", "PATCH", "/api/v1/devices/pump-12", json={"location": "ICU 7"})
    assert kept.body["observer_required"] is True  # absent: as it was
    cleared = await api.call(
        "bea", "PATCH", "/api/v1/devices/pump-12", json={"observer_required": None}
    )
    assert cleared.body["observer_required"] is None  # null: by criticality
    bad = await api.call("bea", "PATCH", "/api/v1/devices/pump-12", json={"observer_required": 1})
    assert bad.status == 400
    created = await api.call(
        "ada",
        "POST",
        "/api/v1/devices",
        json={
            "name": "vent-9",
            "segment": "icu",
            "address": "10.0.0.9",
            "observer_required": False,
        },
    )
    assert created.status == 201 and created.body["observer_required"] is False
    as_vendor = await api.call("vendor1", "GET", "/api/v1/devices/pump-12")
    assert as_vendor.body["observer_required"] is None  # vendors see if sessions are moderated
