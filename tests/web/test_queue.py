"""The approvers' pages (web/queue.py): the queue, the review page, approving, denying,
revoking, and every refusal shown on the page and audited with the data left intact."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin, workflow
from policy.actor import Actor
from policy.models import (
    AccessRequest,
    Approval,
    Criticality,
    Device,
    Grant,
    RequestStatus,
    Session,
    Vendor,
    VendorUser,
    vendor_device,
)
from policy.vault import Vault
from policy.windows import Weekly
from tests.web.conftest import AuditEvents, Login, MakeStaff, MakeVendorUser, WebApp
from web.queue import _default_zone

Sessions = async_sessionmaker[AsyncSession]
PATTERN = r"^(CHG|INC)[0-9]{4,10}$"
HOUR = timedelta(hours=1)
ALWAYS_BERLIN = {"days": list(range(7)), "start": "00:00", "end": "00:00", "tz": "Europe/Berlin"}
SUNDAY_HALF_HOUR = {"days": [6], "start": "03:00", "end": "03:30", "tz": "UTC"}


class FakeNotifier:
    """Records what the pages emit (the real notifier's delivery is tested in policy)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], tuple[str, ...]]] = []

    def emit(self, event: str, payload: dict[str, Any], *, email_to: Any = ()) -> None:
        self.events.append((event, dict(payload), tuple(email_to)))


@dataclass
class World:
    web_app: WebApp
    login: Login
    vendor1: Actor
    notifier: FakeNotifier
    people: dict[str, tuple[str, str]] = field(default_factory=dict)  # login -> password, secret
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def db(self) -> Sessions:
        return self.web_app.ctx.sessions

    async def browser(self, login: str, kind: str = "staff") -> aiohttp.ClientSession:
        """A browser signed in as ``login``."""
        session = self.web_app.browser()
        password, secret = self.people[login]
        resp = await self.login(session, login, password, secret, kind=kind)
        assert resp.status == 200, await resp.text()
        return session

    async def file(
        self,
        devices: list[str],
        *,
        services: list[str] | None = None,
        by: Actor | None = None,
        reason: str = "firmware 4.2 upgrade",
        ticket: str = "CHG0001234",
        start: datetime | None = None,
    ) -> AccessRequest:
        now = self.web_app.clock()
        begin = start or now + HOUR
        data = workflow.RequestInput(
            ticket_ref=ticket,
            devices=devices,
            services=services or ["ssh"],
            window_start=begin,
            window_end=begin + 2 * HOUR,
            recurrence=None,
            reason=reason,
            vendor_login="vendor1" if by is not None and by.kind == "staff" else None,
        )
        async with self.db() as s:
            return await workflow.file_request(
                s, self.web_app.ctx.audit, by or self.vendor1, data, ticket_pattern=PATTERN, now=now
            )

    async def edit(
        self, req: AccessRequest, devices: list[str], *, ticket: str, reason: str
    ) -> None:
        """The vendor changes a filed request (a new revision), its window left as filed."""
        data = workflow.RequestInput(
            ticket_ref=ticket,
            devices=devices,
            services=["ssh"],
            window_start=req.window_start,
            window_end=req.window_end,
            recurrence=None,
            reason=reason,
        )
        async with self.db() as s:
            await workflow.edit_request(
                s,
                self.web_app.ctx.audit,
                self.vendor1,
                req.id,
                data,
                now=self.web_app.clock(),
                ticket_pattern=PATTERN,
            )

    async def request_row(self, request_id: int) -> AccessRequest:
        async with self.db() as s:
            row = await s.get(AccessRequest, request_id)
            assert row is not None
            return row

    async def grants(self) -> list[Grant]:
        async with self.db() as s:
            return list(await s.scalars(select(Grant).order_by(Grant.id)))

    async def approvals(self) -> list[tuple[str, str, str]]:
        async with self.db() as s:
            rows = await s.scalars(select(Approval).order_by(Approval.id))
            return [(a.approver, a.role, a.decision) for a in rows]


async def _device(
    s: AsyncSession,
    vault: Vault,
    name: str,
    criticality: Criticality,
    windows: list[dict[str, Any]],
    **record: str,
) -> Device:
    device = await admin.add_device(
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
    device.maintenance_windows = windows
    await s.commit()
    return device


@pytest.fixture
async def world(
    web_app: WebApp,
    login: Login,
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
    vault: Vault,
) -> World:
    vendor_user, vpassword, vsecret = await make_vendor_user("vendor1")
    notifier = FakeNotifier()
    web_app.ctx.notifier = notifier
    w = World(web_app, login, Actor("vendor", vendor_user.id, "vendor1"), notifier)
    w.people["vendor1"] = (vpassword, vsecret)
    for name, roles in [
        ("bea", ["biomed"]),
        ("sol", ["security"]),
        ("max", ["biomed", "security"]),
        ("ada", ["admin"]),
    ]:
        user, password, secret = await make_staff(name, roles)
        w.people[name] = (password, secret)
        w.ids[name] = user.id
    async with w.db() as s:
        await admin.add_segment(s, "icu")
        devices = [
            await _device(
                s,
                vault,
                "monitor-2",
                Criticality.LOW,
                [ALWAYS_BERLIN],
                location="Ward 7",
                manufacturer="Philips",
                model="IntelliVue MX450",
                firmware="J.10",
            ),
            await _device(
                s,
                vault,
                "pump-1",
                Criticality.HIGH,
                [],
                location="ICU bed 4",
                manufacturer="BD",
                model="Alaris 8015",
                firmware="12.1.2",
                asset_tag="BME-00412",
            ),
            await _device(s, vault, "xray-4", Criticality.MEDIUM, [SUNDAY_HALF_HOUR]),
        ]
        org = await s.scalar(select(Vendor).where(Vendor.name == "Infusia Medical"))
        assert org is not None
        user = await s.get(VendorUser, vendor_user.id)
        assert user is not None
        user.email = "v1@infusia.test"
        await s.execute(
            insert(vendor_device), [{"vendor_id": org.id, "device_id": d.id} for d in devices]
        )
        await s.commit()
    return w


def staff(world: World, login: str) -> Actor:
    return Actor("staff", world.ids[login], login, frozenset())


# --- reading forms as a browser would --------------------------------------------------


class _Forms(HTMLParser):
    """The fields a browser would submit for each form on a page, by form action."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, list[tuple[str, str]]] = {}
        self._action: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._action = a.get("action", "")
            self.forms[self._action] = []
        elif self._action is None:
            return
        elif tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.forms[self._action].append((a["name"], a.get("value", "")))
        elif tag == "textarea":
            self._textarea = a["name"]
            self.forms[self._action].append((a["name"], ""))

    def handle_data(self, data: str) -> None:
        if self._action is not None and self._textarea is not None:
            name, value = self.forms[self._action][-1]
            self.forms[self._action][-1] = (name, value + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._action = None
        elif tag == "textarea":
            self._textarea = None


def form_on(page: str, action: str, **changes: str | list[str]) -> list[tuple[str, str]]:
    """The form's default fields with ``changes`` applied (a list replaces every value of
    a repeated field such as the service checkboxes)."""
    parser = _Forms()
    parser.feed(page)
    assert action in parser.forms, f"no form posting to {action} on the page"
    fields = [(k, v) for k, v in parser.forms[action] if k not in changes]
    for name, value in changes.items():
        fields += [(name, v) for v in value] if isinstance(value, list) else [(name, value)]
    return fields


async def review(browser: aiohttp.ClientSession, request_id: int) -> str:
    resp = await browser.get(f"/requests/{request_id}/review")
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def decide(
    browser: aiohttp.ClientSession, request_id: int, verb: str, **changes: str | list[str]
) -> aiohttp.ClientResponse:
    """Open the review page and submit its approve or deny form."""
    page = await review(browser, request_id)
    action = f"/queue/{request_id}/{verb}"
    return await browser.post(action, data=form_on(page, action, **changes))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def text_of(html: str) -> str:
    """The page's text without tags, whitespace collapsed (what a person reads)."""
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


# --- the queue and the review page -----------------------------------------------------------


async def test_the_queue_lists_pending_requests_with_their_device_context(world: World) -> None:
    now = world.web_app.clock()
    await world.file(["monitor-2"], ticket="CHG0000001")
    high = await world.file(["pump-1", "monitor-2"], ticket="INC0000002", services=["https"])
    decided = await world.file(["xray-4"], ticket="CHG0000003")
    async with world.db() as s:
        await workflow.deny(
            s, world.web_app.ctx.audit, staff(world, "bea"), decided.id, "not now", now=now
        )
        old = await admin.add_grant(
            s,
            login="vendor1",
            devices=["pump-1"],
            services=["ssh"],
            ticket="CHG0000999",
            start=now - 30 * HOUR,
            end=now - 26 * HOUR,
            approved_by="biomed:bea",
        )
        pump = await s.scalar(select(Device).where(Device.name == "pump-1"))
        assert pump is not None
        s.add(
            Session(
                vendor_user_id=world.vendor1.id,
                device_id=pump.id,
                grant_id=old.id,
                ticket_ref="CHG0000999",
                kind="shell",
                started_at=now - 29 * HOUR,
                ended_at=now - 28 * HOUR,
                end_reason="client-closed",
            )
        )
        await s.commit()

    bea = await world.browser("bea")
    resp = await bea.get("/queue")
    assert resp.status == 200
    page = await resp.text()
    text = text_of(page)
    assert "CHG0000003" not in text  # decided: no longer waiting
    first, second = text.split("CHG0000001")[1].split("INC0000002")
    assert first.startswith(" vendor1 Infusia Medical monitor-2 low")
    assert " biomed " in first and "security" not in first  # low: one biomed approval
    assert second.startswith(" vendor1 Infusia Medical monitor-2 low pump-1 high")
    assert "biomed and security two people" in second
    assert '<strong class="badge crit-high">high</strong>' in page
    assert f'href="/requests/{high.id}/review"' in page

    page = await review(bea, high.id)
    text = text_of(page)
    assert "Request INC0000002 pending" in text
    assert "Vendor user vendor1 (Infusia Medical)" in text
    assert "Needs one biomed and one security approval, by two different people" in text
    assert "pump-1 is high" in text
    assert "Still needed: biomed and security approvals" in text
    pump_part = text.split("pump-1 high")[-1]
    assert "Location ICU bed 4 Segment icu Device BD Alaris 8015, firmware 12.1.2" in pump_part
    assert "Asset tag BME-00412 Services ssh:22, https:443" in pump_part
    assert "none set: vendor work at any time" in pump_part
    assert f"{(now - 29 * HOUR):%Y-%m-%d %H:%M} UTC" in pump_part and "client-closed" in pump_part
    monitor_part = text.split("monitor-2 low")[-1].split("pump-1 high")[0]
    assert (
        "Location Ward 7" in monitor_part
        and "Philips IntelliVue MX450, firmware J.10" in monitor_part
    )
    assert "fits: inside monitor-2's maintenance windows" in monitor_part
    assert "Europe/Berlin" in monitor_part
    assert "No earlier sessions by vendor1 on monitor-2" in monitor_part
    fields = form_on(page, f"/queue/{high.id}/approve")
    assert ("role", "biomed") in fields  # bea's only approver role, ticked
    assert [v for k, v in fields if k == "services"] == ["https"]  # all requested, ticked
    berlin = ZoneInfo("Europe/Berlin")  # the maintenance window's zone is the form's
    assert ("tz", "Europe/Berlin") in fields
    assert ("start", f"{high.window_start.astimezone(berlin):%Y-%m-%dT%H:%M}") in fields
    assert "override_reason" not in dict(fields)  # inside the windows: no override asked

    ada = await world.browser("ada")  # admins may look, not decide
    assert (await ada.get("/queue")).status == 200
    page = await review(ada, high.id)
    assert f"/queue/{high.id}/approve" not in page
    assert "Approvals are given by biomed and security staff" in text_of(page)
    vendor = await world.browser("vendor1", kind="vendor")
    for path in ("/queue", f"/requests/{high.id}/review", "/grants"):
        resp = await vendor.get(path)
        assert resp.status == 403 and "needs the admin or biomed or security role" in (
            await resp.text()
        )


async def test_one_biomed_approval_grants_a_low_request_from_the_shortened_start(
    world: World, audit_events: AuditEvents
) -> None:
    req = await world.file(["monitor-2"])
    bea = await world.browser("bea")
    later = req.window_start + timedelta(minutes=30)
    local = f"{later.astimezone(ZoneInfo('Europe/Berlin')):%Y-%m-%dT%H:%M}"
    resp = await decide(bea, req.id, "approve", start=local, comment="planned with ward 7")
    assert resp.status == 200 and resp.url.path == f"/requests/{req.id}/review"
    text = text_of(await resp.text())
    [grant] = await world.grants()
    assert "Approved as biomed. The window or services changed, so this is a new revision" in text
    assert f"Grant {grant.id} created: monitor-2 (ssh)" in text
    assert "Request CHG0001234 approved" in text
    # the clock starts at the approved start; the untouched end stays exactly as asked
    assert grant.window_start == later.replace(second=0, microsecond=0)
    assert grant.window_end == req.window_end
    assert (grant.services, grant.approved_by) == (["ssh"], "biomed:bea")
    row = await world.request_row(req.id)
    assert (row.status, row.revision) == (RequestStatus.APPROVED, 2)
    assert await world.approvals() == [("staff:bea", "biomed", "approve")]
    [(_tag, actor, detail)] = await audit_events("policy:request:approved")
    assert (actor, detail["comment"], detail["missing_roles"]) == (
        "staff:bea",
        "planned with ward 7",
        [],
    )
    [(event, payload, email_to)] = world.notifier.events
    assert (event, payload["status"], payload["actor"], email_to) == (
        "request.approved",
        "approved",
        "staff:bea",
        ("v1@infusia.test",),
    )
    assert payload["window_start"] == grant.window_start.isoformat()
    assert (await review(bea, req.id)).count("/approve") == 0  # decided: no forms


async def test_a_critical_device_stays_pending_after_biomed_until_security_approves(
    world: World,
) -> None:
    req = await world.file(["pump-1"], services=["ssh", "https"])
    bea, sol = await world.browser("bea"), await world.browser("sol")
    resp = await decide(bea, req.id, "approve", services=["ssh"])  # narrowed to ssh only
    assert resp.status == 200
    text = text_of(await resp.text())
    assert "Approved as biomed." in text
    assert "The request stays pending: it still needs a security approval, by someone else" in text
    assert "Still needed: security approval" in text
    assert "Request CHG0001234 pending" in text
    assert await world.grants() == [] and world.notifier.events == []
    queue = text_of(await (await sol.get("/queue")).text())
    assert "CHG0001234" in queue and " UTC security two people " in queue  # still needed
    page = await review(sol, req.id)
    assert "staff:bea biomed" in text_of(page)  # the approval so far, who and as what
    fields = form_on(page, f"/queue/{req.id}/approve")
    assert ("role", "security") in fields and [v for k, v in fields if k == "services"] == ["ssh"]
    resp = await decide(sol, req.id, "approve")
    text = text_of(await resp.text())
    [grant] = await world.grants()
    assert f"Approved as security. Grant {grant.id} created: pump-1 (ssh)" in text
    assert (grant.services, grant.approved_by) == (["ssh"], "biomed:bea,security:sol")
    assert [e for e, _p, _t in world.notifier.events] == ["request.approved"]


async def test_the_same_person_cannot_approve_twice_even_holding_both_roles(
    world: World, audit_events: AuditEvents
) -> None:
    req = await world.file(["pump-1"])
    max_ = await world.browser("max")
    page = await review(max_, req.id)
    fields = form_on(page, f"/queue/{req.id}/approve")
    assert "role" not in dict(fields)  # both roles held, both still needed: max must choose
    resp = await decide(max_, req.id, "approve", role="biomed")
    assert "still needs a security approval" in text_of(await resp.text())
    resp = await decide(max_, req.id, "approve")  # security is now preselected
    assert resp.status == 403
    text = text_of(await resp.text())
    assert (
        "you already approved this request; a second approval must come from someone else" in text
    )
    assert "Request CHG0001234 pending" in text
    assert await world.approvals() == [("staff:max", "biomed", "approve")]
    assert await world.grants() == []
    refused = await audit_events("policy:request:refused")
    assert [(a, d["code"], d["role"]) for _t, a, d in refused] == [
        ("staff:max", "already-approved", "security")
    ]


async def test_a_staff_member_cannot_approve_a_request_they_filed(
    world: World, audit_events: AuditEvents
) -> None:
    req = await world.file(["monitor-2"], by=staff(world, "bea"))
    assert req.filed_by == "staff:bea"
    bea = await world.browser("bea")
    resp = await decide(bea, req.id, "approve")
    assert resp.status == 403
    assert "nobody approves a request they filed or are named in" in text_of(await resp.text())
    assert await world.approvals() == [] and await world.grants() == []
    [(_tag, actor, detail)] = await audit_events("policy:request:refused")
    assert (actor, detail["code"]) == ("staff:bea", "self-approval")
    max_ = await world.browser("max")
    resp = await decide(max_, req.id, "approve")  # biomed preselected: the only role needed
    assert "Approved as biomed. Grant" in text_of(await resp.text())


async def test_outside_the_maintenance_windows_needs_an_override_reason(
    world: World, audit_events: AuditEvents
) -> None:
    req = await world.file(["xray-4"])
    bea = await world.browser("bea")
    page = await review(bea, req.id)
    text = text_of(page)
    assert "outside the maintenance windows: device xray-4 allows vendor work only Sun" in text
    assert "Override reason (the request is outside a maintenance window)" in text
    resp = await decide(bea, req.id, "approve", comment="vendor is on site")
    assert resp.status == 400
    page = await resp.text()
    assert "Shorten the window, or approve with an override reason." in text_of(page)
    assert ("comment", "vendor is on site") in form_on(page, f"/queue/{req.id}/approve")
    assert await world.grants() == [] and await world.approvals() == []
    reason = "ward closed all week; the vendor is on site only today"
    resp = await decide(bea, req.id, "approve", override_reason=reason)
    text = text_of(await resp.text())
    assert "Approved as biomed. Grant" in text and f"Maintenance override {reason}" in text
    assert (await world.request_row(req.id)).override_reason == reason
    [(_t, _a, detail)] = await audit_events("policy:request:approved")
    assert detail["override_reason"] == reason and "xray-4" in detail["maintenance_gap"]


async def test_a_denial_needs_a_reason_which_is_shown_as_text(world: World) -> None:
    req = await world.file(["monitor-2"])
    bea = await world.browser("bea")
    resp = await decide(bea, req.id, "deny", reason="  ")
    assert resp.status == 400
    assert "say why the request is denied" in text_of(await resp.text())
    assert (await world.request_row(req.id)).status is RequestStatus.PENDING
    reason = "<script>alert(1)</script> the ticket is closed"
    resp = await decide(bea, req.id, "deny", reason=reason)
    assert resp.status == 200
    page = await resp.text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; the ticket is closed" in page
    assert "<script>alert" not in page
    row = await world.request_row(req.id)
    assert (row.status, row.decision_reason) == (RequestStatus.DENIED, reason)
    assert await world.approvals() == [("staff:bea", "biomed", "deny")]
    [(event, payload, email_to)] = world.notifier.events
    assert (event, payload["decision_reason"], email_to) == (
        "request.denied",
        reason,
        ("v1@infusia.test",),
    )


async def test_revoking_a_grant_needs_a_reason_and_is_audited(
    world: World, audit_events: AuditEvents
) -> None:
    req = await world.file(["monitor-2"])
    bea, sol = await world.browser("bea"), await world.browser("sol")
    await decide(bea, req.id, "approve")
    [grant] = await world.grants()
    resp = await sol.get("/grants")
    page = await resp.text()
    text = text_of(page)
    assert "CHG0001234 grant" in text and "vendor1 Infusia Medical monitor-2 ssh" in text
    assert "biomed: bea" in text and "not open now" in text  # it starts in an hour
    action = f"/grants/{grant.id}/revoke"
    resp = await sol.post(action, data=form_on(page, action, reason=""))
    assert resp.status == 400
    assert "say why the grant is revoked" in text_of(await resp.text())
    assert [g.revoked_at for g in await world.grants()] == [None]
    resp = await sol.post(action, data=form_on(page, action, reason="vendor laptop stolen"))
    assert resp.status == 200 and resp.url.path == "/grants"
    text = text_of(await resp.text())
    assert f"Grant {grant.id} (CHG0001234, vendor1) revoked" in text
    assert "No active grants." in text
    [revoked] = await world.grants()
    assert revoked.revoked_at is not None
    assert (revoked.revoked_by, revoked.revoke_reason) == ("staff:sol", "vendor laptop stolen")
    [(_t, actor, detail)] = await audit_events("policy:grant:revoked")
    assert (actor, detail["grant_id"], detail["reason"]) == (
        "staff:sol",
        grant.id,
        "vendor laptop stolen",
    )
    event, payload, email_to = world.notifier.events[-1]
    assert (event, payload["revoke_reason"], payload["devices"], email_to) == (
        "grant.revoked",
        "vendor laptop stolen",
        ["monitor-2"],
        ("v1@infusia.test",),
    )
    resp = await sol.post(action, data=form_on(page, action, reason="again"))
    assert resp.status == 409 and "was already revoked" in text_of(await resp.text())
    refused = await audit_events("policy:grant:refused")
    assert [d["code"] for _t, _a, d in refused] == ["reason-missing", "grant-revoked"]


async def test_stale_forms_bad_fields_and_wrong_people_are_refused_and_change_nothing(
    world: World, audit_events: AuditEvents
) -> None:
    req = await world.file(["monitor-2"])
    bea = await world.browser("bea")
    action = f"/queue/{req.id}/approve"
    stale = await review(bea, req.id)
    # the vendor edits while bea looks at revision 1
    await world.edit(req, ["monitor-2"], ticket="CHG0001234", reason="and the battery pack")
    resp = await bea.post(action, data=form_on(stale, action))
    assert resp.status == 409
    page = await resp.text()
    text = text_of(page)
    assert f"request {req.id} changed since you opened it (revision 1, now 2)" in text
    assert "Reason and the battery pack Revision 2" in text  # the new content, to review
    assert ("revision", "2") in form_on(page, action)

    berlin_start = f"{req.window_start.astimezone(ZoneInfo('Europe/Berlin')):%Y-%m-%dT%H:%M}"
    resp = await decide(bea, req.id, "approve", tz="Mars/Olympus", start=berlin_start)
    assert resp.status == 400
    assert "unknown time zone 'Mars/Olympus'" in text_of(await resp.text())
    resp = await decide(bea, req.id, "approve", start="next tuesday")
    assert resp.status == 400 and "is not a date and time" in text_of(await resp.text())
    earlier = req.window_start - HOUR
    resp = await decide(
        bea, req.id, "approve", start=f"{earlier.astimezone(UTC):%Y-%m-%dT%H:%M}", tz="UTC"
    )
    assert resp.status == 400
    assert "an approval may only shorten the window" in text_of(await resp.text())

    resp = await decide(bea, req.id, "approve", role="security")  # a role bea does not hold
    assert resp.status == 403 and "you do not hold the security role" in text_of(await resp.text())
    max_ = await world.browser("max")
    resp = await decide(max_, req.id, "approve", role="security")  # low: biomed only
    assert resp.status == 403
    assert "this request needs approval as biomed only" in text_of(await resp.text())

    ada = await world.browser("ada")
    page = await review(ada, req.id)
    token = form_on(page, "/logout")[0][1]
    resp = await ada.post(action, data={"_csrf": token, "revision": "2", "role": "biomed"})
    assert resp.status == 403
    assert "approving a request needs the biomed or security role" in text_of(await resp.text())

    row = await world.request_row(req.id)
    assert (row.status, row.revision) == (RequestStatus.PENDING, 2)
    assert await world.approvals() == [] and await world.grants() == []
    web_refusals = await audit_events("web:request:refused")
    assert [(a, d["code"], d["action"]) for _t, a, d in web_refusals] == [
        ("staff:bea", "request-changed", "approve"),
        ("staff:bea", "tz-invalid", "approve"),
        ("staff:bea", "window-invalid", "approve"),
    ]
    policy_refusals = await audit_events("policy:request:refused")
    assert [(a, d["code"]) for _t, a, d in policy_refusals] == [
        ("staff:bea", "narrow-only"),
        ("staff:bea", "role-missing"),
        ("staff:max", "role-not-required"),
        ("staff:ada", "role-required"),
    ]
    assert world.notifier.events == []


async def test_a_deny_on_a_changed_request_is_refused_too(world: World) -> None:
    req = await world.file(["monitor-2"])
    bea = await world.browser("bea")
    page = await review(bea, req.id)
    action = f"/queue/{req.id}/deny"
    await world.edit(req, ["monitor-2"], ticket="CHG0005678", reason="the right ticket now")
    resp = await bea.post(action, data=form_on(page, action, reason="wrong ticket"))
    assert resp.status == 409
    text = text_of(await resp.text())
    assert "changed since you opened it" in text and "Request CHG0005678 pending" in text
    assert ("reason", "wrong ticket") in form_on(await resp.text(), action)  # kept for reuse
    assert (await world.request_row(req.id)).status is RequestStatus.PENDING


async def test_an_unknown_request_is_not_found(world: World) -> None:
    bea = await world.browser("bea")
    resp = await bea.get("/requests/999/review")
    assert resp.status == 404 and "request 999 does not exist" in text_of(await resp.text())
    page = await (await bea.get("/queue")).text()
    token = form_on(page, "/logout")[0][1]
    resp = await bea.post("/queue/999/approve", data={"_csrf": token, "role": "biomed"})
    assert resp.status == 404
    assert "No requests are waiting." in text_of(page)


def test_weekly_zone_defaults_follow_the_request() -> None:
    """The form's zone is the request's weekly window's, whatever the devices'."""
    weekly = Weekly.from_spec("mon-fri,08:00-10:00,America/Chicago").to_json()
    device = Device(name="d", maintenance_windows=[ALWAYS_BERLIN])
    req = AccessRequest(recurrence=weekly, devices=[device])
    assert _default_zone(req) == "America/Chicago"
    req = AccessRequest(recurrence=None, devices=[device])
    assert _default_zone(req) == "Europe/Berlin"
    assert _default_zone(AccessRequest(recurrence=None, devices=[])) == "UTC"


async def test_an_approver_can_require_a_staff_observer(world: World) -> None:
    req = await world.file(["pump-1"])
    bea, sol = await world.browser("bea"), await world.browser("sol")
    page = await review(bea, req.id)
    assert "Require a staff observer" in text_of(page)
    assert await decide(bea, req.id, "approve", observer="yes")
    shown = text_of(await review(sol, req.id))
    assert "Requires a staff observer" in shown  # the first approver's wish, for the second
    await decide(sol, req.id, "approve")
    [grant] = await world.grants()
    assert grant.observer_required is True
