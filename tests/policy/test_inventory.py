"""Inventory edits for the web (policy/inventory.py): devices with services and maintenance
windows, segments, the devices a vendor services, staff roles; refusals change nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from policy import admin, inventory
from policy.actor import Actor
from policy.errors import InvalidInput, PolicyError
from policy.inventory import DeviceChanges, DeviceInput, parse_window_text
from policy.models import (
    AuditEvent,
    CredentialKind,
    Criticality,
    Device,
    Segment,
    StaffUser,
    Vendor,
)
from policy.vault import DEVICE_CREDENTIAL, Vault
from policy.windows import Weekly
from recorder.audit import AuditLog

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
ZONES = ["UTC", "America/Chicago", "Europe/Berlin", "Asia/Kolkata"]


# --- parsing maintenance windows ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "start", "end", "tz"),
    [
        ("Mon-Fri 06:00-18:00 America/Chicago", range(5), "06:00", "18:00", "America/Chicago"),
        ("sat,sun 22:00-02:00 Europe/Berlin", [5, 6], "22:00", "02:00", "Europe/Berlin"),
        ("fri-mon 8:00 - 9:30 UTC", [4, 5, 6, 0], "08:00", "09:30", "UTC"),
        ("daily 00:00-00:00 (24 h) UTC", range(7), "00:00", "00:00", "UTC"),
        ("Monday,wed 01:00-02:00 UTC", [0, 2], "01:00", "02:00", "UTC"),
    ],
)
def test_maintenance_windows_as_people_write_them(
    text: str, days: Any, start: str, end: str, tz: str
) -> None:
    weekly = parse_window_text(text)
    assert weekly.to_json() == {"days": sorted(days), "start": start, "end": end, "tz": tz}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "mon-fri 06:00-18:00",
        "someday 06:00-18:00 UTC",
        "mon-fri 6-18 UTC",
        "mon-fri 06:00-24:00 UTC",
        "mon-fri 06:00-18:00 Mars/Olympus",
        "mon-fri 06:00-18:00 UTC extra",
    ],
)
def test_bad_maintenance_windows_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_window_text(text)
    assert info.value.code == "recurrence-invalid"


@given(
    st.frozensets(st.integers(0, 6), min_size=1),
    st.times().map(lambda t: time(t.hour, t.minute)),
    st.times().map(lambda t: time(t.hour, t.minute)),
    st.sampled_from(ZONES),
)
def test_what_describe_prints_parses_back(
    days: frozenset[int], start: time, end: time, tz: str
) -> None:
    weekly = Weekly(days, start, end, tz)
    assert parse_window_text(weekly.describe()) == weekly


def test_parse_windows_takes_text_json_and_weekly_and_drops_repeats() -> None:
    weekly = parse_window_text("mon 06:00-07:00 UTC")
    stored = inventory.parse_windows(["Mon 06:00-07:00 UTC", weekly.to_json(), weekly])
    assert stored == [weekly.to_json()]


# --- a database with some inventory -------------------------------------------------------


@dataclass
class Setup:
    db: Sessions
    audit: AuditLog
    vault: Vault
    ada: Actor  # admin
    bea: Actor  # biomed
    sol: Actor  # security

    async def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        async with self.db() as s:
            return await fn(s, self.audit, *args, **kw)


@pytest.fixture
async def setup(db: Sessions, vault: Vault) -> Setup:
    async with db() as s:
        await admin.add_segment(s, "icu", networks=["10.1.0.0/16"])
        await admin.add_segment(s, "lab")
        await admin.add_device(
            s,
            vault,
            name="pump-1",
            segment="icu",
            address="10.1.0.5",
            services=[admin.ServiceSpec("ssh", 22), admin.ServiceSpec("https", 443)],
            credential=None,
            host_key=None,
            model="Alaris",
        )
        staff = [
            StaffUser(login="ada", roles=["admin"]),
            StaffUser(login="bea", roles=["biomed"]),
            StaffUser(login="sol", roles=["security"]),
        ]
        s.add_all([*staff, Vendor(name="Infusia")])
        await s.commit()
        actors = [Actor("staff", u.id, u.login, frozenset(u.roles)) for u in staff]
    return Setup(db, AuditLog(db), vault, *actors)


async def state(db: Sessions) -> list[Any]:
    async with db() as s:
        devices = await s.scalars(
            select(Device).options(selectinload(Device.services)).order_by(Device.name)
        )
        segments = await s.scalars(select(Segment).order_by(Segment.name))
        vendors = await s.scalars(select(Vendor).options(selectinload(Vendor.devices)))
        staff = await s.scalars(select(StaffUser).order_by(StaffUser.login))
        return [
            [
                (d.name, d.segment_id, d.address, d.criticality, d.maintenance_windows,
                 d.model, d.ssh_host_key, d.credential_username,
                 [(x.id, x.name, x.port) for x in d.services])
                for d in devices
            ],
            [(g.name, g.description, g.networks) for g in segments],
            [(v.name, sorted(d.name for d in v.devices)) for v in vendors],
            [(u.login, u.roles, u.disabled) for u in staff],
        ]  # fmt: skip


async def tail(db: Sessions, since: int) -> list[AuditEvent]:
    async with db() as s:
        return list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))[since:]


async def refused(setup: Setup, code: str, action: Any, tag: str) -> PolicyError:
    before = await state(setup.db)
    count = len(await tail(setup.db, 0))
    with pytest.raises(PolicyError) as info:
        await action
    assert info.value.code == code, info.value.message
    assert await state(setup.db) == before
    events = await tail(setup.db, count)
    assert [e.tag for e in events] == [tag] and events[0].detail["code"] == code
    return info.value


def new_device(**kw: Any) -> DeviceInput:
    base: dict[str, Any] = {
        "name": "monitor-7",
        "segment": "icu",
        "address": "10.1.0.7",
        "criticality": "high",
        "services": ["ssh:22", "https:8443"],
        "maintenance": ["mon-fri 06:00-18:00 America/Chicago"],
        "record": {"manufacturer": "Philips", "model": "MX800", "location": "Ward 7"},
    }
    base.update(kw)
    return DeviceInput(**base)


# --- devices ------------------------------------------------------------------------------


async def test_an_admin_adds_a_device_with_windows_and_a_sealed_credential(setup: Setup) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    data = new_device(
        credential=admin.Credential("svc", CredentialKind.PASSWORD, "s3cret"), host_key=key
    )
    device = await setup.run(inventory.create_device, setup.ada, setup.vault, data, now=NOW)
    assert device.criticality is Criticality.HIGH and device.model == "MX800"
    assert [(s.name, s.port) for s in device.services] == [("ssh", 22), ("https", 8443)]
    assert device.maintenance_windows == [
        {"days": [0, 1, 2, 3, 4], "start": "06:00", "end": "18:00", "tz": "America/Chicago"}
    ]
    assert device.ssh_host_key and device.ssh_host_key.split()[:2] == key.split()[:2]
    secret = device.credential_secret
    assert setup.vault.open_text(secret, DEVICE_CREDENTIAL) == "s3cret"
    [event] = await tail(setup.db, 0)
    assert event.tag == "policy:device:created" and event.device == "monitor-7"
    assert event.detail["maintenance"] == ["Mon-Fri 06:00-18:00 America/Chicago"]
    assert "s3cret" not in str(event.detail)


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"name": "pump-1"}, "device-exists"),
        ({"name": "bad name"}, "device-name-invalid"),
        ({"segment": "nowhere"}, "segment-unknown"),
        ({"address": "pump.example.org"}, "address-invalid"),
        ({"criticality": "critical"}, "criticality-invalid"),
        ({"services": ["ssh"]}, "service-invalid"),
        ({"services": ["ssh:22", "ssh:2222"]}, "service-duplicate"),
        ({"maintenance": ["weekdays 06:00-18:00 UTC"]}, "recurrence-invalid"),
        ({"record": {"model": "x" * 201}}, "field-too-long"),
        ({"record": {"colour": "red"}}, "field-unknown"),
        ({"host_key": "ssh-ed25519 AAAA"}, "key-invalid"),
    ],
)
async def test_bad_devices_are_refused(setup: Setup, kw: dict[str, Any], code: str) -> None:
    action = setup.run(inventory.create_device, setup.ada, setup.vault, new_device(**kw), now=NOW)
    await refused(setup, code, action, "policy:device:refused")


async def test_only_admins_add_devices(setup: Setup) -> None:
    action = setup.run(inventory.create_device, setup.bea, setup.vault, new_device(), now=NOW)
    await refused(setup, "role-required", action, "policy:device:refused")


async def test_biomed_updates_a_device_and_services_keep_their_rows(setup: Setup) -> None:
    async with setup.db() as s:
        before = await inventory.load_device(s, "pump-1")
        ids = {x.name: x.id for x in before.services}
    changes = DeviceChanges(
        criticality="life-sustaining",
        maintenance=["sat 22:00-02:00 America/Chicago"],
        services=["ssh:2222", "vnc:5900"],
        record={"location": "ICU bed 9", "model": "Alaris"},
        segment="lab",
    )
    device = await setup.run(
        inventory.update_device, setup.bea, setup.vault, "pump-1", changes, now=NOW
    )
    assert device.criticality is Criticality.LIFE_SUSTAINING and device.location == "ICU bed 9"
    assert device.updated_at == NOW and device.segment.name == "lab"
    async with setup.db() as s:
        after = await inventory.load_device(s, "pump-1")
        assert {(x.name, x.port) for x in after.services} == {("ssh", 2222), ("vnc", 5900)}
        assert next(x.id for x in after.services if x.name == "ssh") == ids["ssh"]
    [event] = await tail(setup.db, 0)
    assert event.tag == "policy:device:updated"
    assert event.detail["changed"] == [
        "segment", "criticality", "maintenance_windows", "location", "services"
    ]  # fmt: skip
    assert sorted(event.detail["services"]) == ["+vnc:5900", "-https", "ssh:22->2222"]


async def test_a_credential_change_is_sealed_and_not_audited_in_clear(setup: Setup) -> None:
    changes = DeviceChanges(credential=admin.Credential("root", CredentialKind.PASSWORD, "pw-9"))
    device = await setup.run(
        inventory.update_device, setup.ada, setup.vault, "pump-1", changes, now=NOW
    )
    assert setup.vault.open_text(device.credential_secret, DEVICE_CREDENTIAL) == "pw-9"
    [event] = await tail(setup.db, 0)
    assert event.detail["changed"] == ["credential"] and "pw-9" not in str(event.detail)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        (DeviceChanges(criticality="high", maintenance=["nope"]), "recurrence-invalid"),
        (DeviceChanges(criticality="high", address="not-an-ip"), "address-invalid"),
        (DeviceChanges(criticality="high", segment="nowhere"), "segment-unknown"),
        (DeviceChanges(criticality="high", services=["ssh:0"]), "service-invalid"),
        (DeviceChanges(record={"firmware": "x" * 101}), "field-too-long"),
    ],
)
async def test_a_bad_update_changes_nothing(
    setup: Setup, changes: DeviceChanges, code: str
) -> None:
    action = setup.run(inventory.update_device, setup.bea, setup.vault, "pump-1", changes, now=NOW)
    await refused(setup, code, action, "policy:device:refused")


async def test_device_updates_need_admin_or_biomed_and_a_known_device(setup: Setup) -> None:
    changes = DeviceChanges(criticality="low")
    action = setup.run(inventory.update_device, setup.sol, setup.vault, "pump-1", changes, now=NOW)
    await refused(setup, "role-required", action, "policy:device:refused")
    action = setup.run(inventory.update_device, setup.bea, setup.vault, "ghost", changes, now=NOW)
    await refused(setup, "device-unknown", action, "policy:device:refused")


# --- segments, vendors, staff -------------------------------------------------------------


async def test_segments_are_changed_by_admins(setup: Setup) -> None:
    seg = await setup.run(
        inventory.update_segment, setup.ada, "icu", description="ICU", networks=["10.2.0.0/16"]
    )
    assert (seg.description, seg.networks) == ("ICU", ["10.2.0.0/16"])
    bad = setup.run(inventory.update_segment, setup.ada, "icu", networks=["10.2.0.1/16"])
    await refused(setup, "network-invalid", bad, "policy:segment:refused")
    other = setup.run(inventory.update_segment, setup.bea, "icu", description="x")
    await refused(setup, "role-required", other, "policy:segment:refused")
    gone = setup.run(inventory.update_segment, setup.ada, "nowhere", description="x")
    await refused(setup, "segment-unknown", gone, "policy:segment:refused")


async def test_which_devices_a_vendor_services(setup: Setup) -> None:
    await setup.run(inventory.create_device, setup.ada, setup.vault, new_device(), now=NOW)
    org = await setup.run(inventory.set_vendor_devices, setup.bea, "Infusia", ["pump-1"])
    assert [d.name for d in org.devices] == ["pump-1"]
    org = await setup.run(
        inventory.set_vendor_devices, setup.bea, "Infusia", ["monitor-7", " ", "monitor-7"]
    )
    assert [d.name for d in org.devices] == ["monitor-7"]
    event = (await tail(setup.db, 0))[-1]
    assert event.tag == "policy:vendor:devices-changed"
    assert (event.detail["added"], event.detail["removed"]) == (["monitor-7"], ["pump-1"])
    bad = setup.run(inventory.set_vendor_devices, setup.bea, "Infusia", ["pump-1", "ghost"])
    await refused(setup, "device-unknown", bad, "policy:vendor:refused")
    nobody = setup.run(inventory.set_vendor_devices, setup.bea, "Nobody", [])
    await refused(setup, "vendor-unknown", nobody, "policy:vendor:refused")
    sec = setup.run(inventory.set_vendor_devices, setup.sol, "Infusia", [])
    await refused(setup, "role-required", sec, "policy:vendor:refused")


async def test_staff_roles_and_the_last_admin(setup: Setup) -> None:
    user = await setup.run(inventory.set_staff_roles, setup.ada, "bea", ["biomed", "security"])
    assert user.roles == ["biomed", "security"]
    last = setup.run(inventory.set_staff_roles, setup.ada, "ada", ["biomed"])
    await refused(setup, "last-admin", last, "policy:staff:refused")
    bad = setup.run(inventory.set_staff_roles, setup.ada, "bea", ["root"])
    await refused(setup, "role-invalid", bad, "policy:staff:refused")
    empty = setup.run(inventory.set_staff_roles, setup.ada, "bea", [])
    await refused(setup, "role-invalid", empty, "policy:staff:refused")
    nobody = setup.run(inventory.set_staff_roles, setup.ada, "zed", ["biomed"])
    await refused(setup, "login-unknown", nobody, "policy:staff:refused")
    not_admin = setup.run(inventory.set_staff_roles, setup.bea, "sol", ["biomed"])
    await refused(setup, "role-required", not_admin, "policy:staff:refused")
    await setup.run(inventory.set_staff_roles, setup.ada, "sol", ["security", "admin"])
    demoted = await setup.run(inventory.set_staff_roles, setup.ada, "ada", ["biomed"])
    assert demoted.roles == ["biomed"]
    event = (await tail(setup.db, 0))[-1]
    assert event.tag == "policy:staff:roles-changed" and event.detail["before"] == ["admin"]


async def test_disabling_staff(setup: Setup) -> None:
    own = setup.run(inventory.set_staff_disabled, setup.ada, "ada", True)
    await refused(setup, "self-disable", own, "policy:staff:refused")
    user = await setup.run(inventory.set_staff_disabled, setup.ada, "bea", True)
    assert user.disabled
    # bea's roles no longer count, whatever her actor says
    back = setup.run(inventory.set_staff_disabled, setup.bea, "bea", False)
    await refused(setup, "role-required", back, "policy:staff:refused")
    assert not (await setup.run(inventory.set_staff_disabled, setup.ada, "bea", False)).disabled
    tags = [e.tag for e in await tail(setup.db, 0)]
    assert "policy:staff:disabled" in tags and tags[-1] == "policy:staff:enabled"


async def test_the_last_admin_cannot_be_disabled_by_a_cli_admin(setup: Setup) -> None:
    cli = Actor("staff", 0, "root", frozenset({"admin"}), via="cli")
    last = setup.run(inventory.set_staff_disabled, cli, "ada", True)
    await refused(setup, "last-admin", last, "policy:staff:refused")
