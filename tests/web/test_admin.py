"""The admin pages (web/admin_inventory.py, web/admin_people.py) against the real database."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from policy import admin
from policy.models import ApiToken, Device, Invite, Segment, StaffUser, Vendor
from policy.vault import DEVICE_CREDENTIAL, Vault
from tests.web.conftest import (
    AuditEvents,
    Login,
    MakeStaff,
    MakeVendorUser,
    WebApp,
    csrf_from,
)

Client = TestClient[Any, Any]
Browser = Client | aiohttp.ClientSession
HEADER = (
    "name,segment,address,criticality,manufacturer,model,firmware,location,asset_tag,"
    "services,maintenance"
)


def host_key() -> str:
    """A fresh device host key line (``ssh-ed25519 AAAA...``)."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


async def shown(resp: aiohttp.ClientResponse) -> str:
    """The page as a person reads it (entities decoded)."""
    return html.unescape(await resp.text())


async def signed_in(
    browser: Browser, make_staff: MakeStaff, login: Login, name: str, roles: list[str]
) -> str:
    """Sign ``name`` in with ``roles``; the session's CSRF token."""
    _user, password, secret = await make_staff(name, roles)
    home = await login(browser, name, password, secret)
    assert home.url.path == "/"
    return csrf_from(await home.text())


@pytest.fixture
async def csrf(client: Client, make_staff: MakeStaff, login: Login) -> str:
    """``client`` signed in as the admin ``alice``."""
    return await signed_in(client, make_staff, login, "alice", ["admin"])


async def load(db: async_sessionmaker[AsyncSession], name: str) -> Device | None:
    async with db() as s:
        return await s.scalar(
            select(Device)
            .where(Device.name == name)
            .options(selectinload(Device.services), selectinload(Device.segment))
        )


async def device_count(db: async_sessionmaker[AsyncSession]) -> int:
    async with db() as s:
        return int(await s.scalar(select(func.count()).select_from(Device)) or 0)


async def seed(db: async_sessionmaker[AsyncSession], vault: Vault) -> None:
    """Segments icu and radiology, and the device pump-1 in icu."""
    async with db() as s:
        await admin.add_segment(s, "icu", networks=["10.20.0.0/24"])
        await admin.add_segment(s, "radiology")
        await admin.add_device(
            s,
            vault,
            name="pump-1",
            segment="icu",
            address="10.20.0.11",
            services=[admin.ServiceSpec("ssh", 22)],
            credential=None,
            host_key=None,
        )


def device_form(csrf: str, **values: str) -> dict[str, str]:
    form = {
        "_csrf": csrf,
        "name": "pump-12",
        "segment": "icu",
        "address": "10.20.0.12",
        "criticality": "high",
        "manufacturer": "Infusia",
        "model": "Alaris 8015",
        "firmware": "12.1.2",
        "location": "ICU bed 4",
        "asset_tag": "BME-00412",
        "services": "ssh:22\nhttps:443",
        "maintenance": "mon-fri 06:00-18:00 America/Chicago\nsat 22:00-02:00 Europe/Berlin",
        "credential_username": "service",
        "credential_password": "device pass 1",
        "host_key": "",
    }
    return form | values


# --- who may ------------------------------------------------------------------------------


async def test_non_admins_are_refused_with_a_reason_and_audited(
    web_app: WebApp,
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    security = web_app.browser()
    token = await signed_in(security, make_staff, login, "sam", ["security"])
    for path in ("/admin/devices", "/admin/segments", "/admin/vendors", "/admin/staff"):
        resp = await security.get(path)
        assert resp.status == 403, path
        assert "this needs the admin" in await shown(resp)
    resp = await security.post("/admin/devices", data=device_form(token))
    assert resp.status == 403
    resp = await security.post("/admin/staff/sam/roles", data={"_csrf": token, "role": "admin"})
    assert resp.status == 403
    assert await device_count(db) == 1
    async with db() as s:
        sam = await s.scalar(select(StaffUser).where(StaffUser.login == "sam"))
        assert sam is not None and sam.roles == ["security"]

    # biomed keeps device records and vendors' device lists, but not staff or tokens
    biomed = web_app.browser()
    await signed_in(biomed, make_staff, login, "bea", ["biomed"])
    assert (await biomed.get("/admin/devices")).status == 200
    assert (await biomed.get("/admin/devices/pump-1/edit")).status == 200
    for path in ("/admin/devices/new", "/admin/devices/import", "/admin/staff", "/admin/tokens"):
        assert (await biomed.get(path)).status == 403, path

    vendor = web_app.browser()
    _v, password, secret = await make_vendor_user("vendor1")
    await login(vendor, "vendor1", password, secret, kind="vendor")
    resp = await vendor.get("/admin/vendors")
    assert resp.status == 403
    assert "this needs the admin or biomed role" in await shown(resp)

    refused = [(a, d["method"], d["path"]) for _t, a, d in await audit_events("web:access:refused")]
    assert ("staff:sam", "GET", "/admin/staff") in refused
    assert ("staff:sam", "POST", "/admin/devices") in refused
    assert ("staff:sam", "POST", "/admin/staff/sam/roles") in refused
    assert ("staff:bea", "GET", "/admin/tokens") in refused
    assert ("vendor:vendor1", "GET", "/admin/vendors") in refused


# --- devices ------------------------------------------------------------------------------


async def test_an_admin_adds_a_device_with_services_windows_and_credential(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    key = host_key()
    resp = await client.post("/admin/devices", data=device_form(csrf, host_key=key))
    assert resp.url.path == "/admin/devices"
    page = await shown(resp)
    assert "Device pump-12 added." in page
    assert "Mon-Fri 06:00-18:00 America/Chicago" in page
    assert "https:443, ssh:22" in page

    device = await load(db, "pump-12")
    assert device is not None
    assert device.segment.name == "icu"
    assert (device.address, str(device.criticality)) == ("10.20.0.12", "high")
    assert (device.manufacturer, device.model, device.location) == (
        "Infusia",
        "Alaris 8015",
        "ICU bed 4",
    )
    assert sorted((s.name, s.port) for s in device.services) == [("https", 443), ("ssh", 22)]
    assert device.maintenance_windows == [
        {"days": [0, 1, 2, 3, 4], "start": "06:00", "end": "18:00", "tz": "America/Chicago"},
        {"days": [5], "start": "22:00", "end": "02:00", "tz": "Europe/Berlin"},
    ]
    assert device.ssh_host_key == " ".join(key.split()[:2])
    assert device.credential_username == "service"
    assert device.credential_secret is not None
    assert vault.open_text(device.credential_secret, DEVICE_CREDENTIAL) == "device pass 1"

    # the edit form shows the record back, never the password
    form = await shown(await client.get("/admin/devices/pump-12/edit"))
    assert "ssh:22\nhttps:443" in form or "https:443\nssh:22" in form
    assert "Sat 22:00-02:00 Europe/Berlin" in form
    assert "device pass 1" not in form

    # a form that sends only some fields changes only those (the pinned key stays)
    resp = await client.post(
        "/admin/devices/pump-12/edit", data={"_csrf": csrf, "criticality": "life-sustaining"}
    )
    assert "Changed criticality: high → life-sustaining." in await shown(resp)
    device = await load(db, "pump-12")
    assert device is not None and str(device.criticality) == "life-sustaining"
    assert device.ssh_host_key == " ".join(key.split()[:2])
    assert len(device.services) == 2 and len(device.maintenance_windows) == 2

    created = await audit_events("policy:device:created")
    assert [(a, d["services"], d["credential"]) for _t, a, d in created] == [
        ("staff:alice", ["ssh:22", "https:443"], "service")
    ]
    assert "device pass 1" not in str(created)


async def test_an_edit_says_what_changed(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    await client.post("/admin/devices", data=device_form(csrf))
    edit = device_form(
        csrf,
        address="10.20.0.13",
        segment="radiology",
        services="ssh:2222\nhttps:443",
        maintenance="daily 00:00-06:00 UTC",
        credential_username="service",
        credential_password="",
    )
    del edit["name"]
    resp = await client.post("/admin/devices/pump-12/edit", data=edit)
    assert resp.url.path == "/admin/devices"
    page = await shown(resp)
    assert "Device pump-12 saved." in page
    assert "address: 10.20.0.12 → 10.20.0.13" in page
    assert "segment: icu → radiology" in page
    assert "services: https:443, ssh:22 → https:443, ssh:2222" in page
    assert "Mon-Sun 00:00-06:00 UTC" in page
    assert "password" not in page  # no new password given: the vaulted one stays

    device = await load(db, "pump-12")
    assert device is not None
    assert (device.address, device.segment.name) == ("10.20.0.13", "radiology")
    assert sorted((s.name, s.port) for s in device.services) == [("https", 443), ("ssh", 2222)]
    assert device.maintenance_windows == [
        {"days": [0, 1, 2, 3, 4, 5, 6], "start": "00:00", "end": "06:00", "tz": "UTC"}
    ]
    assert device.credential_secret is not None
    assert vault.open_text(device.credential_secret, DEVICE_CREDENTIAL) == "device pass 1"

    updated = await audit_events("policy:device:updated")
    assert len(updated) == 1
    _tag, who, detail = updated[0]
    assert who == "staff:alice"
    assert set(detail["changed"]) >= {"address", "segment", "services", "maintenance_windows"}

    # saving the form unchanged says so
    resp = await client.post("/admin/devices/pump-12/edit", data=edit)
    assert "Device pump-12: nothing changed." in await shown(resp)


async def test_a_bad_address_is_refused_with_the_reason_and_nothing_changes(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    resp = await client.post(
        "/admin/devices", data=device_form(csrf, address="pump12.hospital.example")
    )
    assert resp.status == 400
    page = await shown(resp)
    assert "'pump12.hospital.example' must be an IP address (no DNS)" in page
    assert 'value="pump-12"' in page and 'value="ICU bed 4"' in page  # the input is kept
    assert "mon-fri 06:00-18:00 America/Chicago" in page
    assert await load(db, "pump-12") is None

    resp = await client.post(
        "/admin/devices/pump-1/edit",
        data={"_csrf": csrf, "segment": "radiology", "address": "not-an-ip", "services": "ssh:23"},
    )
    assert resp.status == 400
    assert "must be an IP address" in await shown(resp)
    device = await load(db, "pump-1")
    assert device is not None
    assert (device.address, device.segment.name) == ("10.20.0.11", "icu")
    assert [(s.name, s.port) for s in device.services] == [("ssh", 22)]

    resp = await client.post(
        "/admin/devices", data=device_form(csrf, maintenance="weekdays 6-18 Chicago")
    )
    assert resp.status == 400
    assert "is not DAYS HH:MM-HH:MM ZONE" in await shown(resp)
    resp = await client.post(
        "/admin/devices", data=device_form(csrf, credential_username="", credential_password="x")
    )
    assert resp.status == 400
    assert "a device password needs the login it is for" in await shown(resp)
    assert await device_count(db) == 1

    refusals = [(d["action"], d["code"]) for _t, _a, d in await audit_events("policy:device:")]
    assert ("create", "address-invalid") in refusals
    assert ("update", "address-invalid") in refusals
    assert ("create", "recurrence-invalid") in refusals
    web_refusals = await audit_events("web:device:refused")
    assert [d["code"] for _t, _a, d in web_refusals] == ["credential-incomplete"]


async def test_an_unknown_device_is_not_found(client: Client, csrf: str) -> None:
    resp = await client.get("/admin/devices/nope/edit")
    assert resp.status == 404
    assert "there is no such device" in await shown(resp)


# --- CSV import ---------------------------------------------------------------------------


async def upload(
    client: Client, csrf: str, body: str, filename: str = "cmms.csv"
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("_csrf", csrf)
    form.add_field("file", body.encode(), filename=filename, content_type="text/csv")
    form.add_field("csv", "")
    return await client.post("/admin/devices/import", data=form)


async def test_the_sample_file_is_the_header_the_import_reads(client: Client, csrf: str) -> None:
    resp = await client.get("/admin/devices/import.csv")
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    assert (await resp.text()).strip() == HEADER + ",observer_required"


async def test_a_good_file_creates_and_updates_devices(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    body = "\r\n".join(
        [
            HEADER,
            "pump-1,icu,10.20.0.21,life-sustaining,Infusia,A1,2.0,ICU bed 1,T-1,ssh:22;https:443,",
            'mri-3,radiology,10.30.0.3,high,Magnetix,"Vista, 3T",9,Basement,T-3,ssh:22,'
            "sat 22:00-02:00 Europe/Berlin",
            "",
        ]
    )
    resp = await upload(client, csrf, body)
    assert resp.url.path == "/admin/devices"
    page = await shown(resp)
    assert "Import done: 1 created, 1 updated, 0 unchanged." in page
    assert "mri-3" in page and "Sat 22:00-02:00 Europe/Berlin" in page

    mri = await load(db, "mri-3")
    assert mri is not None and mri.model == "Vista, 3T" and mri.segment.name == "radiology"
    pump = await load(db, "pump-1")
    assert pump is not None
    assert (pump.address, str(pump.criticality)) == ("10.20.0.21", "life-sustaining")
    assert sorted(s.name for s in pump.services) == ["https", "ssh"]
    imported = await audit_events("policy:device:imported")
    assert [(d["created"], d["updated"]) for _t, _a, d in imported] == [(1, 1)]

    page = await shown(await client.get("/admin/devices", params={"q": "MAGNETIX"}))
    assert "1 device matching “MAGNETIX”" in page and "pump-1" not in page
    page = await shown(await client.get("/admin/devices", params={"q": "10.%"}))
    assert "No device matches “10.%”." in page  # % is a character, not a wildcard

    # the pasted-text fallback, with the same file: nothing differs any more
    resp = await client.post("/admin/devices/import", data={"_csrf": csrf, "csv": body})
    assert "Import done: 0 created, 0 updated, 2 unchanged." in await shown(resp)


async def test_a_file_with_bad_rows_reports_each_line_and_imports_nothing(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    body = "\n".join(
        [
            HEADER,
            "pump-1,icu,10.20.0.99,high,,,,,,ssh:22,",  # line 2: good (an update)
            "pump-2,icu,pump2.example,high,,,,,,ssh:22,",  # line 3: a host name
            "pump-3,icu,10.20.0.13,medium,,,,,,ssh:22,",  # line 4: good (new)
            "pump-4,nowhere,10.20.0.14,severe,,,,,,ssh,",  # line 5: three problems
        ]
    )
    resp = await upload(client, csrf, body, filename="cmms-export.csv")
    assert resp.status == 400
    page = await shown(resp)
    assert "Nothing was imported: the file cmms-export.csv has 4 problems." in page
    problems = re.findall(r"<li>Line (\d+): ([^<]*)</li>", page)
    assert sorted({int(line) for line, _m in problems}) == [3, 5]
    assert any("pump2.example" in m and "IP address" in m for line, m in problems if line == "3")
    assert any("segment 'nowhere' does not exist" in m for line, m in problems if line == "5")
    assert "No device was added or changed." in page

    assert await device_count(db) == 1
    pump = await load(db, "pump-1")
    assert pump is not None and pump.address == "10.20.0.11"
    refused = await audit_events("policy:device:refused")
    assert [d["code"] for _t, _a, d in refused] == ["csv-invalid"]
    assert any(e.startswith("line 3:") for e in refused[0][2]["errors"])


async def test_a_file_that_is_not_utf8_is_refused_with_the_fix(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    form = aiohttp.FormData()
    form.add_field("_csrf", csrf)
    latin1 = (HEADER + "\npump-9,icu,10.20.0.9,low,Böhm,,,,,ssh:22,\n").encode("latin-1")
    form.add_field("file", latin1, filename="old.csv", content_type="text/csv")
    resp = await client.post("/admin/devices/import", data=form)
    assert resp.status == 400
    assert "old.csv is not UTF-8 text" in await shown(resp)
    assert await device_count(db) == 1
    refused = await audit_events("web:device:refused")
    assert [(d["action"], d["code"]) for _t, _a, d in refused] == [("import", "csv-encoding")]


# --- segments -----------------------------------------------------------------------------


async def test_segments_are_added_and_edited(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    resp = await client.post(
        "/admin/segments",
        data={"_csrf": csrf, "name": "icu", "description": "ICU", "networks": "10.20.0.0/24"},
    )
    assert "Segment icu added." in await shown(resp)
    resp = await client.post(
        "/admin/segments",
        data={"_csrf": csrf, "name": "lab", "description": "Lab", "networks": "10.40.0.1/24"},
    )
    assert resp.status == 400
    page = await shown(resp)
    assert "has host bits set" in page and 'value="Lab"' in page
    resp = await client.post("/admin/segments", data={"_csrf": csrf, "name": "icu"})
    assert resp.status == 400
    assert "segment 'icu' already exists" in await shown(resp)

    resp = await client.post(
        "/admin/segments/icu/edit",
        data={
            "_csrf": csrf,
            "description": "Intensive care",
            "networks": "10.20.0.0/24\nfd00::/64",
        },
    )
    page = await shown(resp)
    assert "Segment icu saved." in page
    assert "networks: 10.20.0.0/24 → 10.20.0.0/24, fd00::/64" in page
    async with db() as s:
        names = list(await s.scalars(select(Segment.name).order_by(Segment.name)))
        icu = await s.scalar(select(Segment).where(Segment.name == "icu"))
    assert names == ["icu"]
    assert icu is not None and icu.networks == ["10.20.0.0/24", "fd00::/64"]
    assert [t for t, _a, _d in await audit_events("web:segment:")] == [
        "web:segment:created",
        "web:segment:refused",
        "web:segment:refused",
    ]
    assert [t for t, _a, _d in await audit_events("policy:segment:")] == ["policy:segment:updated"]


# --- vendors and invites ------------------------------------------------------------------


async def vendor_id(db: async_sessionmaker[AsyncSession], name: str) -> int:
    async with db() as s:
        found = await s.scalar(select(Vendor.id).where(Vendor.name == name))
    assert found is not None
    return found


async def test_a_vendor_is_added_and_its_devices_chosen(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    async with db() as s:
        await admin.add_device(
            s,
            vault,
            name="pump-2",
            segment="icu",
            address="10.20.0.12",
            services=[admin.ServiceSpec("ssh", 22)],
            credential=None,
            host_key=None,
        )
    resp = await client.post("/admin/vendors", data={"_csrf": csrf, "name": "Infusia Medical"})
    assert "Vendor organization Infusia Medical added." in await shown(resp)
    org = await vendor_id(db, "Infusia Medical")
    assert resp.url.path == f"/admin/vendors/{org}"

    resp = await client.post(
        f"/admin/vendors/{org}/devices",
        data=[("_csrf", csrf), ("device", "pump-1"), ("device", "pump-2")],
    )
    page = await shown(resp)
    assert "Devices of Infusia Medical saved: added pump-1, pump-2." in page
    resp = await client.post(
        f"/admin/vendors/{org}/devices", data=[("_csrf", csrf), ("device", "pump-2")]
    )
    assert "removed pump-1" in await shown(resp)
    resp = await client.post(
        f"/admin/vendors/{org}/devices",
        data=[("_csrf", csrf), ("device", "pump-1"), ("device", "ghost-9")],
    )
    assert resp.status == 404
    page = await shown(resp)
    assert "unknown device(s): ghost-9" in page
    assert re.search(r'value="pump-1" checked', page)  # the choice is kept for a retry

    async with db() as s:
        vendor = await s.scalar(
            select(Vendor).where(Vendor.id == org).options(selectinload(Vendor.devices))
        )
    assert vendor is not None and [d.name for d in vendor.devices] == ["pump-2"]
    changes = await audit_events("policy:vendor:")
    assert [(t, d.get("added"), d.get("removed")) for t, _a, d in changes] == [
        ("policy:vendor:devices-changed", ["pump-1", "pump-2"], []),
        ("policy:vendor:devices-changed", [], ["pump-1"]),
        ("policy:vendor:refused", None, None),
    ]
    assert [t for t, _a, _d in await audit_events("web:vendor:")] == ["web:vendor:created"]

    resp = await client.post("/admin/vendors", data={"_csrf": csrf, "name": "Infusia Medical"})
    assert resp.status == 400
    assert "already exists" in await shown(resp)
    assert (await client.get("/admin/vendors/999")).status == 404


async def test_an_invite_link_is_shown_once_and_opens_the_registration(
    web_app: WebApp,
    client: Client,
    csrf: str,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    async with db() as s:
        await admin.add_vendor(s, "Infusia Medical")
    org = await vendor_id(db, "Infusia Medical")
    resp = await client.post(
        f"/admin/vendors/{org}/invite", data={"_csrf": csrf, "email": "eng@infusia.example"}
    )
    assert resp.status == 200
    page = await shown(resp)
    link = re.search(r'id="invite-link" value="([^"]+)"', page)
    assert link is not None
    assert link.group(1).startswith(f"{web_app.url}/invite/")  # no public_url: this host
    assert "eng@infusia.example" in page
    path = link.group(1).removeprefix(web_app.url)
    assert path not in await shown(await client.get(f"/admin/vendors/{org}"))  # only once

    opened = await web_app.browser().get(path)
    assert opened.status == 200
    invite_page = await shown(opened)
    assert "vendor engineer of <strong>Infusia Medical</strong>" in invite_page
    assert 'value="eng@infusia.example"' in invite_page

    # biomed invites vendor engineers too; links use the public address once it is set
    web_app.ctx.settings = replace(web_app.ctx.settings, web_public_url="https://portal.example/")
    biomed = web_app.browser()
    token = await signed_in(biomed, make_staff, login, "bea", ["biomed"])
    resp = await biomed.post(f"/admin/vendors/{org}/invite", data={"_csrf": token})
    assert resp.status == 200
    link = re.search(r'id="invite-link" value="([^"]+)"', await shown(resp))
    assert link is not None and link.group(1).startswith("https://portal.example/invite/")

    resp = await biomed.post(f"/admin/vendors/{org}/invite", data={"_csrf": token, "email": "x y"})
    assert resp.status == 400
    page = await shown(resp)
    assert "'x y' is not an email address" in page and 'value="x y"' in page
    async with db() as s:
        assert await s.scalar(select(func.count()).select_from(Invite)) == 2
    events = [(t, a) for t, a, _d in await audit_events("policy:invite:")]
    assert events == [
        ("policy:invite:created", "staff:alice"),
        ("policy:invite:created", "staff:bea"),
        ("policy:invite:refused", "staff:bea"),
    ]


# --- staff --------------------------------------------------------------------------------


async def staff_roles(db: async_sessionmaker[AsyncSession], login: str) -> tuple[list[str], bool]:
    async with db() as s:
        user = await s.scalar(select(StaffUser).where(StaffUser.login == login))
    assert user is not None
    return list(user.roles), user.disabled


async def test_staff_roles_are_edited_but_the_last_admin_stays(
    web_app: WebApp,
    client: Client,
    csrf: str,
    make_staff: MakeStaff,
    login: Login,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    bob = web_app.browser()
    await signed_in(bob, make_staff, login, "bob", ["biomed"])
    resp = await client.post(
        "/admin/staff/bob/roles", data=[("_csrf", csrf), ("role", "biomed"), ("role", "security")]
    )
    assert "Roles of bob changed: biomed → biomed, security." in await shown(resp)
    assert await staff_roles(db, "bob") == (["biomed", "security"], False)

    resp = await client.post("/admin/staff/alice/roles", data=[("_csrf", csrf), ("role", "biomed")])
    assert resp.status == 409
    page = await shown(resp)
    assert "this is the last admin; make someone else admin first" in page
    assert await staff_roles(db, "alice") == (["admin"], False)
    resp = await client.post("/admin/staff/bob/roles", data=[("_csrf", csrf), ("role", "root")])
    assert resp.status == 400
    assert "roles must be among admin, biomed, security" in await shown(resp)

    resp = await client.post("/admin/staff/alice/disable", data={"_csrf": csrf})
    assert resp.status == 403
    assert "you cannot disable your own account" in await shown(resp)
    resp = await client.post("/admin/staff/bob/disable", data={"_csrf": csrf})
    assert "bob is disabled" in await shown(resp)
    assert await staff_roles(db, "bob") == (["biomed", "security"], True)
    resp = await bob.get("/", allow_redirects=False)  # signed out at the next click
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    resp = await client.post("/admin/staff/bob/enable", data={"_csrf": csrf})
    assert "bob is enabled again." in await shown(resp)
    assert await staff_roles(db, "bob") == (["biomed", "security"], False)

    tags = [(t, d.get("code")) for t, _a, d in await audit_events("policy:staff:")]
    assert tags == [
        ("policy:staff:roles-changed", None),
        ("policy:staff:refused", "last-admin"),
        ("policy:staff:refused", "role-invalid"),
        ("policy:staff:refused", "self-disable"),
        ("policy:staff:disabled", None),
        ("policy:staff:enabled", None),
    ]


async def test_a_staff_invite_gives_the_chosen_roles(
    web_app: WebApp, client: Client, csrf: str, db: async_sessionmaker[AsyncSession]
) -> None:
    resp = await client.post("/admin/staff/invite", data={"_csrf": csrf, "email": "x@h.example"})
    assert resp.status == 400  # no role chosen
    assert "roles must be among" in await shown(resp)
    resp = await client.post(
        "/admin/staff/invite",
        data=[("_csrf", csrf), ("role", "security"), ("role", "biomed")],
    )
    page = await shown(resp)
    assert "with the roles <strong>biomed, security</strong>" in page
    link = re.search(r'id="invite-link" value="([^"]+)"', page)
    assert link is not None
    opened = await web_app.browser().get(link.group(1).removeprefix(web_app.url))
    assert opened.status == 200
    assert "hospital staff with the roles <strong>biomed, security</strong>" in await shown(opened)


# --- API tokens ---------------------------------------------------------------------------


async def test_a_token_works_as_bearer_until_it_is_revoked(
    web_app: WebApp,
    client: Client,
    csrf: str,
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
    db: async_sessionmaker[AsyncSession],
    audit_events: AuditEvents,
) -> None:
    await make_staff("robot", ["admin"])
    await make_vendor_user("vendor1")
    page = await shown(await client.get("/admin/tokens"))
    assert '<option value="staff:robot">' in page
    assert '<option value="vendor:vendor1">vendor1 (Infusia Medical)' in page

    resp = await client.post(
        "/admin/tokens", data={"_csrf": csrf, "name": "", "owner": "staff:robot"}
    )
    assert resp.status == 400
    page = await shown(resp)
    assert "give the token a name" in page
    assert '<option value="staff:robot" selected>' in page

    resp = await client.post(
        "/admin/tokens", data={"_csrf": csrf, "name": "servicenow", "owner": "staff:robot"}
    )
    assert resp.status == 200
    page = await shown(resp)
    found = re.search(r'id="new-token" value="(spt_[^"]+)"', page)
    assert found is not None
    secret = found.group(1)
    assert "shown only this once" in page
    assert secret not in await shown(await client.get("/admin/tokens"))

    bearer = {"Authorization": f"Bearer {secret}"}
    api = web_app.browser()
    resp = await api.get("/admin/devices", headers=bearer)
    assert resp.status == 200  # acting as robot, an admin
    listing = await shown(await client.get("/admin/tokens"))
    assert "servicenow" in listing and "staff:robot" in listing and "never" not in listing

    async with db() as s:
        row = await s.scalar(select(ApiToken).where(ApiToken.name == "servicenow"))
    assert row is not None
    resp = await client.post(f"/admin/tokens/{row.id}/revoke", data={"_csrf": csrf})
    assert "API token servicenow revoked" in await shown(resp)
    resp = await api.get("/admin/devices", headers=bearer)
    assert resp.status == 401
    assert (await resp.json())["code"] == "token-invalid"
    resp = await client.post(f"/admin/tokens/{row.id}/revoke", data={"_csrf": csrf})
    assert resp.status == 409
    assert "was already revoked" in await shown(resp)

    tags = [(t, a) for t, a, _d in await audit_events("policy:token:")]
    assert tags == [
        ("policy:token:refused", "staff:alice"),
        ("policy:token:created", "staff:alice"),
        ("policy:token:revoked", "staff:alice"),
        ("policy:token:refused", "staff:alice"),
    ]
    assert [d["reason"] for _t, _a, d in await audit_events("web:token:refused")] == [
        "token-invalid"
    ]


# --- the staff-observer rule (device.observer_required) -----------------------------------


async def observer_of(db: async_sessionmaker[AsyncSession], name: str) -> bool | None:
    device = await load(db, name)
    assert device is not None
    return device.observer_required


async def test_the_device_form_sets_the_rule_three_ways(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    audit_events: AuditEvents,
) -> None:
    await seed(db, vault)
    form = await shown(await client.get("/admin/devices/new"))
    assert '<option value="criticality" selected>By criticality' in form
    resp = await client.post(
        "/admin/devices",
        data={
            "_csrf": csrf,
            "name": "vent-2",
            "segment": "icu",
            "address": "10.20.0.22",
            "criticality": "high",
            "observer": "always",
            "services": "ssh:22",
        },
    )
    assert resp.url.path == "/admin/devices"
    assert await observer_of(db, "vent-2") is True
    edit = await shown(await client.get("/admin/devices/vent-2/edit"))
    assert '<option value="always" selected>Always' in edit

    resp = await client.post(
        "/admin/devices/vent-2/edit", data={"_csrf": csrf, "observer": "never"}
    )
    assert "Changed staff observer: Always" in await shown(resp)
    assert await observer_of(db, "vent-2") is False
    await client.post("/admin/devices/vent-2/edit", data={"_csrf": csrf, "observer": "criticality"})
    assert await observer_of(db, "vent-2") is None
    # a form without the field leaves the rule alone
    await client.post("/admin/devices/vent-2/edit", data={"_csrf": csrf, "observer": "always"})
    await client.post("/admin/devices/vent-2/edit", data={"_csrf": csrf, "location": "ICU 2"})
    assert await observer_of(db, "vent-2") is True

    bad = await client.post("/admin/devices/vent-2/edit", data={"_csrf": csrf, "observer": "often"})
    assert bad.status == 400
    assert "observer rule 'often' is not one of criticality, always, never" in await shown(bad)
    created = await audit_events("policy:device:created")
    assert [d["observer"] for _t, _a, d in created] == ["always"]
    updated = await audit_events("policy:device:updated")
    assert "observer_required" in updated[0][2]["changed"]


@pytest.mark.parametrize(("cell", "expected"), [("", None), ("true", True), ("FALSE", False)])
async def test_the_csv_import_reads_the_optional_column(
    client: Client,
    csrf: str,
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    cell: str,
    expected: bool | None,
) -> None:
    await seed(db, vault)
    body = "\r\n".join(
        [
            HEADER + ",observer_required",
            f"vent-4,icu,10.20.0.24,life-sustaining,Acme,V,1,ICU,T-4,ssh:22,,{cell}",
            "",
        ]
    )
    assert "Import done: 1 created" in await shown(await upload(client, csrf, body))
    assert await observer_of(db, "vent-4") is expected


async def test_the_csv_import_keeps_the_rule_without_the_column_and_names_bad_cells(
    client: Client, csrf: str, db: async_sessionmaker[AsyncSession], vault: Vault
) -> None:
    await seed(db, vault)
    row = "pump-1,icu,10.20.0.11,high,Infusia,A1,2.0,ICU bed 1,T-1,ssh:22,"
    with_column = "\r\n".join([HEADER + ",observer_required", row + ",true", ""])
    assert "1 updated" in await shown(await upload(client, csrf, with_column))
    assert await observer_of(db, "pump-1") is True
    without = "\r\n".join([HEADER, row, ""])
    await upload(client, csrf, without)
    assert await observer_of(db, "pump-1") is True
    bad = "\r\n".join([HEADER + ",observer_required", row + ",sometimes", ""])
    page = await shown(await upload(client, csrf, bad))
    assert "line 2" in page.lower() and "observer_required: observer rule 'sometimes'" in page
    assert await observer_of(db, "pump-1") is True
