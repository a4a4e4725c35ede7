"""The access workflow (policy/workflow.py) on a real database: file, edit, cancel,
approve (one or two people, narrowing, maintenance windows), deny, revoke, and the read
helpers the portal shows. Every refusal must be an audit event and leave rows as they were.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, requests_view, workflow
from policy.actor import Actor
from policy.errors import Conflict, Forbidden, InvalidInput, NotFound, PolicyError
from policy.models import (
    AccessRequest,
    Approval,
    AuditEvent,
    Criticality,
    Device,
    DeviceService,
    Grant,
    RequestStatus,
    Session,
    StaffUser,
    Vendor,
    VendorUser,
    request_device,
    vendor_device,
)
from policy.vault import Vault
from policy.workflow import RequestInput
from recorder.audit import AuditLog

Sessions = async_sessionmaker[AsyncSession]
PATTERN = r"^(CHG|INC)[0-9]{4,10}$"
# Monday 23 November 2026, 09:00 in Chicago (UTC-6)
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
CHICAGO_DAYTIME = {
    "days": [0, 1, 2, 3, 4],
    "start": "06:00",
    "end": "18:00",
    "tz": "America/Chicago",
}


@dataclass
class World:
    db: Sessions
    audit: AuditLog
    vendor1: Actor
    vendor2: Actor  # same organization as vendor1
    outsider: Actor  # another organization
    bea: Actor  # biomed
    sol: Actor  # security
    max: Actor  # biomed and security
    ada: Actor  # admin

    async def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        async with self.db() as s:
            return await fn(s, self.audit, *args, **kw)

    async def file(self, actor: Actor | None = None, **changes: Any) -> AccessRequest:
        data = replace(request_input(), **changes)
        return await self.run(  # type: ignore[no-any-return]
            workflow.file_request, actor or self.vendor1, data, ticket_pattern=PATTERN, now=NOW
        )

    async def approve(self, actor: Actor, request_id: int, role: str, **kw: Any) -> Any:
        kw.setdefault("now", NOW)
        return await self.run(workflow.approve, actor, request_id, role=role, **kw)


def request_input(**changes: Any) -> RequestInput:
    base = RequestInput(
        ticket_ref="CHG0001234",
        devices=["monitor-2"],
        services=["ssh"],
        window_start=NOW + HOUR,
        window_end=NOW + 3 * HOUR,
        recurrence=None,
        reason="firmware 4.2 upgrade",
    )
    return replace(base, **changes)


async def _device(
    s: AsyncSession, vault: Vault, name: str, criticality: Criticality, **record: str
) -> Device:
    return await admin.add_device(
        s,
        vault,
        name=name,
        segment="icu",
        address=f"10.0.0.{len(name)}",
        services=[admin.ServiceSpec("ssh", 22), admin.ServiceSpec("https", 443)],
        credential=None,
        host_key=None,
        criticality=criticality,
        **record,
    )


@pytest.fixture
async def world(db: Sessions, vault: Vault) -> World:
    async with db() as s:
        await admin.add_segment(s, "icu")
        pump = await _device(
            s, vault, "pump-1", Criticality.HIGH, location="ICU bed 4", model="Alaris 8015"
        )
        monitor = await _device(
            s, vault, "monitor-2", Criticality.MEDIUM, location="Ward 7", model="IntelliVue_MX"
        )
        vent = await _device(s, vault, "vent-3", Criticality.LIFE_SUSTAINING, location="ICU")
        infusia, other = Vendor(name="Infusia"), Vendor(name="Other Med")
        users = [
            VendorUser(vendor=infusia, login="vendor1"),
            VendorUser(vendor=infusia, login="vendor2"),
            VendorUser(vendor=other, login="outsider"),
        ]
        staff = [
            StaffUser(login="bea", roles=["biomed"]),
            StaffUser(login="sol", roles=["security"]),
            StaffUser(login="max", roles=["biomed", "security"]),
            StaffUser(login="ada", roles=["admin"]),
        ]
        s.add_all([*users, *staff])
        await s.flush()
        await s.execute(
            insert(vendor_device),
            [
                {"vendor_id": infusia.id, "device_id": pump.id},
                {"vendor_id": infusia.id, "device_id": monitor.id},
                {"vendor_id": other.id, "device_id": vent.id},
            ],
        )
        await s.commit()
        v = [Actor("vendor", u.id, u.login) for u in users]
        st = [Actor("staff", u.id, u.login, frozenset(u.roles)) for u in staff]
    return World(db, AuditLog(db), *v, *st)


async def events(db: Sessions, tag: str | None = None) -> list[AuditEvent]:
    async with db() as s:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if tag is not None:
            query = query.where(AuditEvent.tag == tag)
        return list(await s.scalars(query))


async def rows(db: Sessions) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the workflow writes, to compare before and after a refusal."""
    async with db() as s:
        requests = await s.scalars(select(AccessRequest).order_by(AccessRequest.id))
        approvals = await s.scalars(select(Approval).order_by(Approval.id))
        grants = await s.scalars(select(Grant).order_by(Grant.id))
        links = await s.execute(select(request_device))
        return {
            "requests": [
                (
                    r.id,
                    r.status,
                    r.revision,
                    r.ticket_ref,
                    r.services,
                    r.window_start,
                    r.window_end,
                    r.recurrence,
                    r.reason,
                    r.override_reason,
                    r.decision_reason,
                )
                for r in requests
            ],
            "approvals": [(a.id, a.approver, a.role, a.decision, a.binding) for a in approvals],
            "grants": [(g.id, g.window_start, g.window_end, g.revoked_at) for g in grants],
            "links": sorted(tuple(r) for r in links),
        }


async def refused(world: World, code: str, action: Any) -> PolicyError:
    """Run ``action``; it must fail with ``code``, be audited, and change no row."""
    before = await rows(world.db)
    count = len(await events(world.db))
    with pytest.raises(PolicyError) as info:
        await action
    assert info.value.code == code, info.value.message
    assert info.value.message
    assert await rows(world.db) == before
    new = (await events(world.db))[count:]
    assert [e.tag.rsplit(":", 1)[1] for e in new] == ["refused"]
    assert new[0].detail["code"] == code
    assert new[0].detail["message"] == info.value.message
    return info.value


# --- filing -------------------------------------------------------------------------------


async def test_a_vendor_files_a_pending_request_for_themself(world: World) -> None:
    req = await world.file(devices=["monitor-2", "pump-1"], services=["https", "ssh", "ssh"])
    assert req.status is RequestStatus.PENDING and req.revision == 1
    assert req.filed_by == "vendor:vendor1" and req.vendor_user_id == world.vendor1.id
    assert sorted(d.name for d in req.devices) == ["monitor-2", "pump-1"]
    assert req.services == ["https", "ssh"]
    assert req.window_start == NOW + HOUR and req.approvals == []
    [event] = await events(world.db, "policy:request:filed")
    assert event.request_id == req.id and event.actor == "vendor:vendor1"
    assert event.detail["devices"] == ["monitor-2", "pump-1"]
    assert event.detail["window_start"] == "2026-11-23T16:00:00Z"


async def test_staff_file_on_behalf_of_a_named_vendor_user(world: World) -> None:
    req = await world.file(world.bea, vendor_login="vendor2")
    assert req.vendor_user_id == world.vendor2.id and req.filed_by == "staff:bea"
    await refused(world, "vendor-login-missing", world.file(world.bea))
    await refused(world, "login-unknown", world.file(world.bea, vendor_login="nobody"))


async def test_a_vendor_cannot_file_for_someone_else(world: World) -> None:
    await refused(world, "vendor-other", world.file(vendor_login="vendor2"))


async def test_a_bad_ticket_is_refused_showing_the_expected_format(world: World) -> None:
    exc = await refused(world, "ticket-invalid", world.file(ticket_ref="RITM0001"))
    assert isinstance(exc, InvalidInput) and PATTERN in exc.message
    await refused(world, "ticket-invalid", world.file(ticket_ref="CHG0001234x"))
    await refused(world, "ticket-invalid", world.file(ticket_ref="xCHG0001234"))


async def test_unknown_devices_read_as_not_serviced_to_a_vendor(world: World) -> None:
    """A vendor learns nothing about the rest of the inventory; staff get the truth."""
    exc = await refused(world, "device-not-serviced", world.file(devices=["vent-3"]))
    assert isinstance(exc, Forbidden) and "vent-3" in exc.message and "Infusia" in exc.message
    ghost = await refused(world, "device-not-serviced", world.file(devices=["ghost"]))
    assert ghost.message.replace("ghost", "vent-3") == exc.message
    on_behalf = world.file(world.bea, vendor_login="vendor1", devices=["ghost"])
    exc = await refused(world, "device-unknown", on_behalf)
    assert isinstance(exc, NotFound)
    await refused(
        world,
        "device-not-serviced",
        world.file(world.bea, vendor_login="vendor1", devices=["vent-3"]),
    )


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"devices": []}, "devices-missing"),
        ({"devices": [" "]}, "devices-missing"),
        ({"services": []}, "services-missing"),
        ({"services": ["telnet"]}, "service-unknown"),
        ({"window_end": NOW + HOUR}, "window-invalid"),
        ({"window_start": (NOW + HOUR).replace(tzinfo=None)}, "window-invalid"),
        ({"window_start": NOW - timedelta(minutes=6)}, "window-past"),
        ({"reason": "  "}, "reason-missing"),
        (
            {"recurrence": {"days": [0], "start": "25:00", "end": "06:00", "tz": "UTC"}},
            "recurrence-invalid",
        ),
        (
            {"recurrence": {"days": [5], "start": "06:00", "end": "18:00", "tz": "UTC"}},
            "recurrence-empty",
        ),
    ],
)
async def test_bad_requests_are_refused_and_audited(
    world: World, changes: dict[str, Any], code: str
) -> None:
    exc = await refused(world, code, world.file(**changes))
    assert isinstance(exc, InvalidInput)


async def test_a_service_missing_on_one_device_names_it(world: World) -> None:
    async with world.db() as s:
        monitor = await s.scalar(select(Device).where(Device.name == "monitor-2"))
        assert monitor is not None
        await s.execute(
            delete(DeviceService).where(
                DeviceService.device_id == monitor.id, DeviceService.name == "https"
            )
        )
        await s.commit()
    exc = await refused(
        world, "service-unknown", world.file(devices=["pump-1", "monitor-2"], services=["https"])
    )
    assert "monitor-2" in exc.message and "it offers ssh" in exc.message


async def test_a_window_may_start_a_little_in_the_past(world: World) -> None:
    req = await world.file(window_start=NOW - timedelta(minutes=4))
    assert req.window_start == NOW - timedelta(minutes=4)


async def test_a_recurring_request_is_stored_normalized(world: World) -> None:
    weekly = {"tz": "America/Chicago", "days": [4, 0], "start": "7:00", "end": "09:00"}
    req = await world.file(window_end=NOW + timedelta(days=14), recurrence=weekly)
    assert req.recurrence == dict(weekly, days=[0, 4], start="07:00")
    [event] = await events(world.db, "policy:request:filed")
    assert event.detail["recurrence"] == "Mon,Fri 07:00-09:00 America/Chicago"


async def test_a_disabled_vendor_cannot_file(world: World) -> None:
    async with world.db() as s:
        user = await s.get(VendorUser, world.vendor1.id)
        assert user is not None
        user.disabled = True
        await s.commit()
    await refused(world, "account-disabled", world.file())
    await refused(world, "vendor-disabled", world.file(world.bea, vendor_login="vendor1"))


# --- editing and cancelling ---------------------------------------------------------------


async def test_an_edit_makes_a_new_revision_and_clears_approvals(world: World) -> None:
    req = await world.file(devices=["pump-1"])
    await world.approve(world.bea, req.id, "biomed")
    data = request_input(devices=["pump-1"], services=["https"], reason="new plan")
    edited = await world.run(workflow.edit_request, world.vendor1, req.id, data, now=NOW)
    assert edited.revision == 2 and edited.services == ["https"] and edited.approvals == []
    assert edited.reason == "new plan"
    async with world.db() as s:
        assert list(await s.scalars(select(Approval))) == []
    [event] = await events(world.db, "policy:request:edited")
    assert event.detail["approvals_cleared"] == 1
    assert event.detail["changed"] == ["reason", "services"] and event.detail["revision"] == 2


async def test_only_the_filer_or_the_vendor_user_may_edit(world: World) -> None:
    mine = await world.file()
    theirs = await world.file(world.bea, vendor_login="vendor1")
    data = request_input(reason="changed")

    def edit(actor: Actor, request_id: int) -> Any:
        return world.run(workflow.edit_request, actor, request_id, data, now=NOW)

    await refused(world, "not-yours", edit(world.vendor2, mine.id))
    await refused(world, "not-yours", edit(world.sol, mine.id))
    await refused(world, "not-yours", edit(world.max, theirs.id))
    assert (await edit(world.bea, theirs.id)).revision == 2
    assert (await edit(world.vendor1, theirs.id)).revision == 3
    await refused(world, "request-unknown", edit(world.vendor1, 999))


async def test_an_edit_is_checked_like_a_filing(world: World) -> None:
    req = await world.file()
    bad = request_input(ticket_ref="nope")
    await refused(
        world,
        "ticket-invalid",
        world.run(
            workflow.edit_request, world.vendor1, req.id, bad, now=NOW, ticket_pattern=PATTERN
        ),
    )
    moved = request_input(vendor_login="vendor2")
    await refused(
        world,
        "vendor-change",
        world.run(workflow.edit_request, world.vendor1, req.id, moved, now=NOW),
    )


async def test_cancel_withdraws_a_pending_request_once(world: World) -> None:
    req = await world.file()
    await refused(
        world, "not-yours", world.run(workflow.cancel_request, world.vendor2, req.id, now=NOW)
    )
    done = await world.run(
        workflow.cancel_request, world.vendor1, req.id, reason="done remotely", now=NOW
    )
    assert done.status is RequestStatus.CANCELLED and done.decision_reason == "done remotely"
    [event] = await events(world.db, "policy:request:cancelled")
    assert event.request_id == req.id and event.detail["reason"] == "done remotely"
    exc = await refused(
        world,
        "request-not-pending",
        world.run(workflow.cancel_request, world.vendor1, req.id, now=NOW),
    )
    assert isinstance(exc, Conflict)
    await refused(
        world,
        "request-not-pending",
        world.run(workflow.edit_request, world.vendor1, req.id, request_input(), now=NOW),
    )


# --- approving ----------------------------------------------------------------------------


async def test_one_biomed_approval_grants_a_medium_device(world: World) -> None:
    req = await world.file(window_start=NOW + HOUR, window_end=NOW + 3 * HOUR)
    out = await world.approve(world.bea, req.id, "biomed", comment="ok", now=NOW + HOUR / 2)
    assert out.missing_roles == frozenset()
    grant = out.grant
    assert grant is not None and grant.request_id == req.id
    assert grant.vendor_user_id == world.vendor1.id and grant.ticket_ref == "CHG0001234"
    assert [d.name for d in grant.devices] == ["monitor-2"] and grant.services == ["ssh"]
    assert (grant.window_start, grant.window_end) == (NOW + HOUR, NOW + 3 * HOUR)
    assert grant.approved_by == "biomed:bea" and grant.recurrence is None
    assert out.request.status is RequestStatus.APPROVED
    tags = [e.tag for e in await events(world.db)]
    assert tags[-2:] == ["policy:request:approved", "policy:grant:created"]
    created = (await events(world.db, "policy:grant:created"))[0]
    assert created.request_id == req.id and created.detail["grant_id"] == grant.id


async def test_critical_devices_need_biomed_and_security_from_two_people(world: World) -> None:
    req = await world.file(devices=["pump-1", "monitor-2"])
    first = await world.approve(world.max, req.id, "biomed")
    assert first.grant is None and first.missing_roles == {"security"}
    assert first.request.status is RequestStatus.PENDING
    exc = await refused(world, "already-approved", world.approve(world.max, req.id, "security"))
    assert isinstance(exc, Forbidden)
    await refused(world, "role-satisfied", world.approve(world.bea, req.id, "biomed"))
    await refused(world, "role-missing", world.approve(world.bea, req.id, "security"))
    second = await world.approve(world.sol, req.id, "security")
    assert second.grant is not None and second.missing_roles == frozenset()
    assert second.grant.approved_by == "biomed:max,security:sol"
    async with world.db() as s:
        assert len(list(await s.scalars(select(Grant)))) == 1


async def test_a_medium_request_refuses_a_security_approval(world: World) -> None:
    req = await world.file()
    await refused(world, "role-not-required", world.approve(world.sol, req.id, "security"))


async def test_nobody_approves_their_own_filing(world: World) -> None:
    req = await world.file(world.bea, vendor_login="vendor1")
    await refused(world, "self-approval", world.approve(world.bea, req.id, "biomed"))


async def test_vendors_and_admins_cannot_approve(world: World) -> None:
    req = await world.file()
    exc = await refused(world, "role-required", world.approve(world.vendor1, req.id, "biomed"))
    assert isinstance(exc, Forbidden) and "biomed or security" in exc.message
    await refused(world, "role-required", world.approve(world.ada, req.id, "biomed"))


async def test_roles_are_read_from_the_database_not_the_actor(world: World) -> None:
    req = await world.file()
    async with world.db() as s:
        bea = await s.get(StaffUser, world.bea.id)
        assert bea is not None
        bea.disabled = True
        await s.commit()
    await refused(world, "role-required", world.approve(world.bea, req.id, "biomed"))
    forged = Actor("staff", world.ada.id, "ada", frozenset({"biomed"}))
    await refused(world, "role-required", world.approve(forged, req.id, "biomed"))


async def test_approval_may_shorten_the_window_and_the_grant_starts_there(world: World) -> None:
    req = await world.file(services=["ssh", "https"])
    start, end = NOW + 2 * HOUR, NOW + 150 * timedelta(minutes=1)
    out = await world.approve(world.bea, req.id, "biomed", start=start, end=end, services=["ssh"])
    assert out.request.revision == 2
    assert (out.request.window_start, out.request.window_end) == (start, end)
    assert out.grant is not None and (out.grant.window_start, out.grant.window_end) == (
        start,
        end,
    )
    assert out.grant.services == ["ssh"]
    [edited] = await events(world.db, "policy:request:edited")
    assert edited.detail["by_approval"] is True
    assert edited.detail["changed"] == ["services", "window_end", "window_start"]


async def test_narrowing_by_the_second_approver_voids_the_first(world: World) -> None:
    req = await world.file(devices=["pump-1"])
    await world.approve(world.bea, req.id, "biomed")
    out = await world.approve(world.sol, req.id, "security", end=NOW + 2 * HOUR)
    assert out.grant is None and out.missing_roles == {"biomed"}
    assert [a.approver for a in out.request.approvals] == ["staff:sol"]
    [edited] = await events(world.db, "policy:request:edited")
    assert edited.detail["approvals_cleared"] == 1
    again = await world.approve(world.bea, req.id, "biomed")
    assert again.grant is not None and again.grant.window_end == NOW + 2 * HOUR


@pytest.mark.parametrize(
    "kw",
    [
        {"start": NOW + HOUR / 2},
        {"end": NOW + 4 * HOUR},
        {"services": ["https"]},
    ],
)
async def test_approval_never_widens(world: World, kw: dict[str, Any]) -> None:
    req = await world.file()
    await refused(world, "narrow-only", world.approve(world.bea, req.id, "biomed", **kw))


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"start": NOW + 2 * HOUR, "end": NOW + 2 * HOUR}, "window-invalid"),
        ({"services": []}, "services-missing"),
        ({"start": (NOW + 2 * HOUR).replace(tzinfo=None)}, "window-invalid"),
        ({"now": NOW + 3 * HOUR}, "window-over"),
    ],
)
async def test_bad_approvals_are_refused(world: World, kw: dict[str, Any], code: str) -> None:
    req = await world.file()
    await refused(world, code, world.approve(world.bea, req.id, "biomed", **kw))


async def test_unknown_and_decided_requests_cannot_be_approved(world: World) -> None:
    await refused(world, "request-unknown", world.approve(world.bea, 4242, "biomed"))
    req = await world.file()
    await world.approve(world.bea, req.id, "biomed")
    exc = await refused(world, "request-not-pending", world.approve(world.max, req.id, "biomed"))
    assert isinstance(exc, Conflict)


async def test_approval_rechecks_that_the_vendor_still_services_the_device(world: World) -> None:
    req = await world.file()
    async with world.db() as s:
        await s.execute(vendor_device.delete())
        await s.commit()
    await refused(world, "device-not-serviced", world.approve(world.bea, req.id, "biomed"))


async def set_maintenance(world: World, device: str, windows: list[dict[str, Any]]) -> None:
    async with world.db() as s:
        found = await s.scalar(select(Device).where(Device.name == device))
        assert found is not None
        found.maintenance_windows = windows
        await s.commit()


async def test_work_outside_maintenance_windows_needs_an_override(world: World) -> None:
    await set_maintenance(world, "monitor-2", [CHICAGO_DAYTIME])
    # Monday 17:00-19:00 in Chicago: the last hour is outside 06:00-18:00
    req = await world.file(window_start=NOW + 8 * HOUR, window_end=NOW + 10 * HOUR)
    approval = world.approve(world.bea, req.id, "biomed")
    exc = await refused(world, "outside-maintenance-window", approval)
    assert "monitor-2" in exc.message and "Mon-Fri 06:00-18:00 America/Chicago" in exc.message
    assert "2026-11-24T00:00:00Z to 2026-11-24T01:00:00Z" in exc.message
    out = await world.approve(world.bea, req.id, "biomed", override_reason="ward closed today")
    assert out.grant is not None and out.request.override_reason == "ward closed today"
    [approved] = await events(world.db, "policy:request:approved")
    assert approved.detail["override_reason"] == "ward closed today"
    assert "monitor-2" in approved.detail["maintenance_gap"]


async def test_an_override_stands_for_the_second_approver_until_the_content_changes(
    world: World,
) -> None:
    await set_maintenance(world, "pump-1", [CHICAGO_DAYTIME])
    late = {"window_start": NOW + 8 * HOUR, "window_end": NOW + 10 * HOUR}
    req = await world.file(devices=["pump-1"], **late)
    await world.approve(world.bea, req.id, "biomed", override_reason="only slot the ward has")
    out = await world.approve(world.sol, req.id, "security")
    assert out.grant is not None and out.request.override_reason == "only slot the ward has"
    other = await world.file(devices=["pump-1"], ticket_ref="CHG0009999", **late)
    await world.approve(world.bea, other.id, "biomed", override_reason="ok")
    narrowed = world.approve(world.sol, other.id, "security", start=NOW + 8.5 * HOUR)
    await refused(world, "outside-maintenance-window", narrowed)


async def test_work_inside_maintenance_windows_needs_no_override(world: World) -> None:
    await set_maintenance(world, "monitor-2", [CHICAGO_DAYTIME])
    req = await world.file()  # 10:00-12:00 in Chicago
    out = await world.approve(world.bea, req.id, "biomed", override_reason="not needed")
    assert out.grant is not None and out.request.override_reason is None


async def test_a_narrowed_approval_can_move_inside_the_maintenance_window(world: World) -> None:
    await set_maintenance(world, "monitor-2", [CHICAGO_DAYTIME])
    req = await world.file(window_start=NOW + 8 * HOUR, window_end=NOW + 10 * HOUR)
    out = await world.approve(world.bea, req.id, "biomed", end=NOW + 9 * HOUR)
    assert out.grant is not None and out.grant.window_end == NOW + 9 * HOUR


async def test_a_recurring_request_is_checked_occurrence_by_occurrence(world: World) -> None:
    await set_maintenance(world, "monitor-2", [CHICAGO_DAYTIME])
    weekday_mornings = dict(CHICAGO_DAYTIME, start="07:00", end="09:00")
    req = await world.file(window_end=NOW + timedelta(days=10), recurrence=weekday_mornings)
    out = await world.approve(world.bea, req.id, "biomed")
    assert out.grant is not None and out.grant.recurrence == req.recurrence
    every_day = dict(weekday_mornings, days=[0, 1, 2, 3, 4, 5, 6])
    other = await world.file(window_end=NOW + timedelta(days=10), recurrence=every_day)
    approval = world.approve(world.bea, other.id, "biomed")
    exc = await refused(world, "outside-maintenance-window", approval)
    assert "2026-11-28T13:00:00Z" in exc.message  # Saturday 07:00 in Chicago


async def test_concurrent_approvals_make_exactly_one_grant(world: World) -> None:
    req = await world.file(devices=["pump-1"])
    outcomes = await asyncio.gather(
        world.approve(world.bea, req.id, "biomed"),
        world.approve(world.sol, req.id, "security"),
    )
    grants = [o.grant for o in outcomes if o.grant is not None]
    assert len(grants) == 1 and grants[0].approved_by == "biomed:bea,security:sol"
    async with world.db() as s:
        assert len(list(await s.scalars(select(Grant)))) == 1
        assert len(list(await s.scalars(select(Approval)))) == 2


# --- denying and revoking -----------------------------------------------------------------


async def test_deny_needs_a_reason_and_an_approver_role(world: World) -> None:
    req = await world.file()

    def deny(actor: Actor, reason: str, **kw: Any) -> Any:
        return world.run(workflow.deny, actor, req.id, reason=reason, now=NOW, **kw)

    await refused(world, "reason-missing", deny(world.bea, " "))
    await refused(world, "role-required", deny(world.vendor1, "no"))
    await refused(world, "role-missing", deny(world.bea, "no", role="security"))
    done = await deny(world.sol, "no change ticket approval")
    assert (
        done.status is RequestStatus.DENIED and done.decision_reason == "no change ticket approval"
    )
    [row] = done.approvals
    assert (row.approver, row.role, row.decision) == ("staff:sol", "security", "deny")
    [event] = await events(world.db, "policy:request:denied")
    assert event.detail["reason"] == "no change ticket approval" and event.request_id == req.id
    await refused(world, "request-not-pending", deny(world.bea, "again"))
    await refused(world, "request-not-pending", world.approve(world.bea, req.id, "biomed"))


async def test_revoke_a_grant(world: World) -> None:
    req = await world.file()
    out = await world.approve(world.bea, req.id, "biomed")
    assert out.grant is not None
    gid = out.grant.id

    def revoke(actor: Actor, grant_id: int = gid, reason: str = "vendor left") -> Any:
        return world.run(workflow.revoke_grant, actor, grant_id, reason=reason, now=NOW)

    await refused(world, "role-required", revoke(world.vendor1))
    await refused(world, "reason-missing", revoke(world.sol, reason=""))
    await refused(world, "grant-unknown", revoke(world.sol, grant_id=9999))
    grant = await revoke(world.ada)
    assert grant.revoked_at is not None and grant.revoked_by == "staff:ada"
    [event] = await events(world.db, "policy:grant:revoked")
    assert event.request_id == req.id and event.detail["reason"] == "vendor left"
    exc = await refused(world, "grant-revoked", revoke(world.sol))
    assert isinstance(exc, Conflict)


# --- reading ------------------------------------------------------------------------------


async def test_pending_and_vendor_request_lists(world: World) -> None:
    first = await world.file(devices=["pump-1"], window_start=NOW + 2 * HOUR)
    second = await world.file(world.bea, vendor_login="vendor2")
    approved = await world.file()
    await world.approve(world.max, approved.id, "biomed")
    await world.approve(world.bea, first.id, "biomed")
    async with world.db() as s:
        pending = await requests_view.pending_requests(s)
        assert [p.request.id for p in pending] == [second.id, first.id]
        assert pending[1].vendor_login == "vendor1" and pending[1].vendor_name == "Infusia"
        assert pending[1].required_roles == {"biomed", "security"}
        assert pending[1].missing_roles == {"security"}
        mine = await requests_view.requests_for_vendor_user(s, world.vendor1.id)
        assert {m.request.id for m in mine} == {first.id, approved.id}
        assert [m.request.status for m in mine if m.request.id == approved.id] == ["approved"]


async def test_request_detail_shows_the_device_context(world: World) -> None:
    await set_maintenance(world, "pump-1", [CHICAGO_DAYTIME])
    old = await world.file(devices=["pump-1"], ticket_ref="INC00042")
    await world.approve(world.bea, old.id, "biomed")
    past = await world.approve(world.sol, old.id, "security")
    assert past.grant is not None
    async with world.db() as s:
        pump = await s.scalar(select(Device).where(Device.name == "pump-1"))
        assert pump is not None
        for i in range(12):
            started = NOW - timedelta(days=i)
            s.add(
                Session(
                    vendor_user_id=world.vendor1.id,
                    device_id=pump.id,
                    grant_id=past.grant.id,
                    ticket_ref="INC00042",
                    kind="shell",
                    started_at=started,
                    ended_at=started + HOUR,
                    end_reason="window-ended" if i == 0 else "client-closed",
                )
            )
        await s.commit()
    req = await world.file(devices=["pump-1", "monitor-2"], window_end=NOW + 12 * HOUR)
    await world.approve(world.bea, req.id, "biomed", override_reason="night shift only")
    async with world.db() as s:
        detail = await requests_view.request_detail(s, req.id)
    assert detail.vendor_login == "vendor1" and detail.schedule == "once"
    assert detail.required_roles == {"biomed", "security"} and detail.missing_roles == {"security"}
    assert [a.approver for a in detail.approvals] == ["staff:bea"] and detail.grants == []
    monitor, pump_ctx = detail.devices
    assert (monitor.name, monitor.criticality, monitor.segment) == ("monitor-2", "medium", "icu")
    assert monitor.coverage.covered and monitor.maintenance == [] and monitor.past_sessions == []
    assert pump_ctx.model == "Alaris 8015" and pump_ctx.location == "ICU bed 4"
    assert pump_ctx.services == ["ssh:22", "https:443"]
    assert pump_ctx.maintenance == ["Mon-Fri 06:00-18:00 America/Chicago"]
    assert not pump_ctx.coverage.covered and pump_ctx.coverage.gap is not None
    assert pump_ctx.coverage.gap[0] == NOW + 9 * HOUR  # 18:00 in Chicago
    assert len(pump_ctx.past_sessions) == 10
    assert pump_ctx.past_sessions[0].started_at == NOW
    assert pump_ctx.past_sessions[0].end_reason == "window-ended"
    async with world.db() as s:
        with pytest.raises(NotFound):
            await requests_view.request_detail(s, req.id, viewer=world.vendor2)
        assert (
            await requests_view.request_detail(s, req.id, viewer=world.vendor1)
        ).request.id == req.id
        assert (await requests_view.request_detail(s, old.id)).grants[0].id == past.grant.id
        with pytest.raises(NotFound):
            await requests_view.request_detail(s, 999)


async def test_grant_lists_and_the_device_picker(world: World) -> None:
    live = await world.file()
    out = await world.approve(world.bea, live.id, "biomed")
    other = await world.file(world.bea, vendor_login="vendor2")
    out2 = await world.approve(world.max, other.id, "biomed")
    assert out.grant is not None and out2.grant is not None
    await world.run(workflow.revoke_grant, world.sol, out2.grant.id, "x", now=NOW)
    async with world.db() as s:
        active = await requests_view.active_grants(s, NOW)
        assert [g.id for g in active] == [out.grant.id]
        assert active[0].user.login == "vendor1" and active[0].user.vendor.name == "Infusia"
        assert await requests_view.active_grants(s, NOW + 3 * HOUR) == []
        mine = await requests_view.grants_for_vendor_user(s, world.vendor1.id, NOW)
        assert [g.id for g in mine] == [out.grant.id]
        assert await requests_view.grants_for_vendor_user(s, world.vendor2.id, NOW) == []

        def names(devices: list[Device]) -> list[str]:
            return [d.name for d in devices]

        pick = requests_view.devices_for_vendor_user
        assert names(await pick(s, world.vendor1.id)) == ["monitor-2", "pump-1"]
        assert names(await pick(s, world.outsider.id)) == ["vent-3"]
        assert names(await pick(s, world.vendor1.id, "alaris")) == ["pump-1"]
        assert names(await pick(s, world.vendor1.id, "WARD")) == ["monitor-2"]
        assert names(await pick(s, world.vendor1.id, "vent")) == []
        assert names(await pick(s, world.vendor1.id, "_")) == ["monitor-2"]  # literal _
        assert names(await pick(s, world.vendor1.id, "%")) == []
        assert names(await pick(s, world.vendor1.id, limit=1)) == ["monitor-2"]
        assert await pick(s, 999) == []


async def test_an_approver_asking_for_an_observer_makes_the_grant_moderated(
    world: World,
) -> None:
    req = await world.file(devices=["pump-1", "monitor-2"])
    await world.approve(world.max, req.id, "biomed", observer_required=True)
    second = await world.approve(world.sol, req.id, "security")  # did not tick it
    assert second.grant is not None and second.grant.observer_required is True
    [created] = await events(world.db, "policy:grant:created")
    assert created.detail["observer_required"] is True
    approved = await events(world.db, "policy:request:approved")
    assert [e.detail["observer_required"] for e in approved] == [True, False]
    plain = await world.file()
    out = await world.approve(world.bea, plain.id, "biomed")
    assert out.grant is not None and out.grant.observer_required is False
