"""The vendor's request pages (web/requests.py): file, follow, edit, cancel."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from policy import admin, inventory, workflow
from policy.actor import Actor
from policy.models import AccessRequest, Criticality, RequestStatus, VendorUser
from policy.vault import Vault
from tests.web.conftest import AuditEvents, Login, MakeStaff, MakeVendorUser, WebApp, csrf_from

Client = TestClient[Any, Any]
Sessions = async_sessionmaker[AsyncSession]
ROOT = Actor("staff", 0, "root", frozenset({"admin"}), via="cli")
TICKET = "CHG0042001"


@dataclass
class FakeNotifier:
    """Records what the pages emit; delivery itself is policy/notify.py's and tested there."""

    emitted: list[tuple[str, dict[str, Any], tuple[str, ...]]] = field(default_factory=list)

    def emit(self, event: str, payload: Mapping[str, Any], *, email_to: Sequence[str] = ()) -> None:
        self.emitted.append((event, dict(payload), tuple(email_to)))


@dataclass
class SignedIn:
    """A signed-in vendor user of Infusia Medical (which services pump-12 and pump-13)."""

    user: VendorUser
    client: Client
    notifier: FakeNotifier


async def add_inventory(web_app: WebApp, db: Sessions, vault: Vault) -> None:
    """pump-12 (high criticality, ssh + https) and pump-13 (ssh) for Infusia Medical;
    ct-3 (ssh + dicom) for Scanco."""
    devices = [
        ("pump-12", Criticality.HIGH, ["ssh:22", "https:443"], "P500", "ICU bed 4"),
        ("pump-13", Criticality.MEDIUM, ["ssh:22"], "P500", "ICU bed 5"),
        ("ct-3", Criticality.MEDIUM, ["ssh:22", "dicom:104"], "Aquilon", "Radiology"),
    ]
    async with db() as s:
        await admin.add_segment(s, "icu")
        for number, (name, level, services, model, place) in enumerate(devices, start=10):
            await admin.add_device(
                s,
                vault,
                name=name,
                segment="icu",
                address=f"10.20.0.{number}",
                services=[admin.ServiceSpec.parse(spec) for spec in services],
                credential=None,
                host_key=None,
                criticality=level,
                model=model,
                location=place,
            )
        for org, names in (("Infusia Medical", ["pump-12", "pump-13"]), ("Scanco", ["ct-3"])):
            await admin.add_vendor(s, org)
            await inventory.set_vendor_devices(s, web_app.ctx.audit, ROOT, org, names)


@pytest.fixture
async def eng(
    web_app: WebApp,
    client: Client,
    db: Sessions,
    vault: Vault,
    make_vendor_user: MakeVendorUser,
    login: Login,
) -> SignedIn:
    await add_inventory(web_app, db, vault)
    user, password, secret = await make_vendor_user("eng1", display_name="Erin Eng")
    async with db() as s:
        await s.execute(
            update(VendorUser).where(VendorUser.id == user.id).values(email="erin@infusia.example")
        )
        await s.commit()
    resp = await login(client, "eng1", password, secret, kind="vendor")
    assert resp.url.path == "/"
    notifier = FakeNotifier()
    web_app.ctx.notifier = notifier
    return SignedIn(user, client, notifier)


def local_value(at: datetime, zone: str) -> str:
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M")


def day_after(web_app: WebApp, days: int, hour: int, zone: str) -> datetime:
    """``hour`` o'clock (local to ``zone``) ``days`` days from the test clock's today."""
    today = web_app.clock().astimezone(ZoneInfo(zone)).date()
    return datetime.combine(today + timedelta(days=days), time(hour), ZoneInfo(zone))


def one_off(web_app: WebApp, **values: Any) -> dict[str, Any]:
    """A complete one-off request form: pump-12 over ssh, tomorrow 09:00-17:00 Berlin."""
    form: dict[str, Any] = {
        "ticket": TICKET,
        "device": ["pump-12"],
        "service": ["ssh"],
        "mode": "once",
        "start": local_value(day_after(web_app, 1, 9, "Europe/Berlin"), "Europe/Berlin"),
        "end": local_value(day_after(web_app, 1, 17, "Europe/Berlin"), "Europe/Berlin"),
        "tz": "Europe/Berlin",
        "reason": "replace the battery pack",
        "action": "file",
    }
    form.update(values)
    return form


def as_data(form: Mapping[str, Any], token: str) -> list[tuple[str, str]]:
    """The form as posted fields (lists become repeated fields)."""
    data = [("_csrf", token)]
    for name, value in form.items():
        values = value if isinstance(value, list) else [value]
        data.extend((name, str(v)) for v in values)
    return data


async def post_form(client: Client, path: str, form: Mapping[str, Any]) -> Any:
    page = await client.get(path)
    return await client.post(path, data=as_data(form, csrf_from(await page.text())))


def checked_devices(page: str) -> list[str]:
    return re.findall(r'name="device" value="([^"]+)" checked', page)


def listed_devices(page: str) -> list[str]:
    return re.findall(r'name="device" value="([^"]+)"', page)


async def requests_in_db(db: Sessions) -> list[AccessRequest]:
    async with db() as s:
        rows = await s.scalars(
            select(AccessRequest)
            .options(selectinload(AccessRequest.devices), selectinload(AccessRequest.approvals))
            .order_by(AccessRequest.id)
        )
        return list(rows)


# --- filing ----------------------------------------------------------------------------------


async def test_filing_a_one_off_request(
    web_app: WebApp, eng: SignedIn, db: Sessions, audit_events: AuditEvents
) -> None:
    page = await (await eng.client.get("/requests/new")).text()
    assert "Expected format: <code>^(CHG|INC)[0-9]{4,10}$</code>" in page
    assert "<option selected>UTC</option>" in page  # the default time zone

    form = one_off(web_app, service=["ssh", "https"])
    resp = await eng.client.post(
        "/requests/new", data=as_data(form, csrf_from(page)), allow_redirects=False
    )
    assert resp.status == 303
    (req,) = await requests_in_db(db)
    assert resp.headers["Location"] == f"/requests/{req.id}"
    # 09:00 and 17:00 in Berlin, stored as aware UTC
    assert req.window_start == day_after(web_app, 1, 9, "Europe/Berlin").astimezone(UTC)
    assert req.window_end == day_after(web_app, 1, 17, "Europe/Berlin").astimezone(UTC)
    assert req.window_start.tzinfo is not None
    assert (req.ticket_ref, req.services, req.recurrence) == (TICKET, ["https", "ssh"], None)
    assert [d.name for d in req.devices] == ["pump-12"]
    assert (req.filed_by, req.status) == ("vendor:eng1", RequestStatus.PENDING)

    detail = await (await eng.client.get(resp.headers["Location"])).text()
    assert f"Request {req.id} for {TICKET} was filed; it waits for approval." in detail
    # pump-12 is of high criticality: both roles are still needed
    assert "Waiting for approval by <strong>biomed and security</strong>" in detail
    assert f'href="/requests/{req.id}/edit"' in detail
    assert "Cancel this request" in detail

    listing = await (await eng.client.get("/requests")).text()
    assert f'<a href="/requests/{req.id}">{TICKET}</a>' in listing
    assert "waiting for biomed and security approval" in listing

    ((event, payload, email_to),) = eng.notifier.emitted
    assert event == "request.filed"
    assert email_to == ("erin@infusia.example",)
    assert payload["request_id"] == req.id
    assert (payload["ticket"], payload["vendor"], payload["actor"]) == (
        TICKET,
        "eng1",
        "vendor:eng1",
    )
    assert payload["devices"] == ["pump-12"]
    assert [t for t, _a, _d in await audit_events("policy:request:")] == ["policy:request:filed"]


async def test_filing_a_weekly_request(web_app: WebApp, eng: SignedIn, db: Sessions) -> None:
    chicago = ZoneInfo("America/Chicago")
    last = web_app.clock().astimezone(chicago).date() + timedelta(days=40)
    form = one_off(
        web_app,
        mode="weekly",
        start="",
        end="",
        day=["mon", "wed"],
        from_time="22:00",
        to_time="02:00",
        tz="America/Chicago",
        last_day=last.isoformat(),
    )
    resp = await post_form(eng.client, "/requests/new", form)
    assert resp.status == 200
    (req,) = await requests_in_db(db)
    assert resp.url.path == f"/requests/{req.id}"
    assert req.recurrence == {
        "days": [0, 2],
        "start": "22:00",
        "end": "02:00",
        "tz": "America/Chicago",
    }
    # from now (no first day given) to midnight at the end of the last day, Chicago time
    assert req.window_end == datetime.combine(last + timedelta(days=1), time(), chicago)
    assert abs(req.window_start - web_app.clock()) < timedelta(minutes=1)
    page = await resp.text()
    assert "only Mon,Wed 22:00-02:00 America/Chicago, within the window" in page

    # the edit form shows it as it was entered
    edit = await (await eng.client.get(f"/requests/{req.id}/edit")).text()
    assert 'name="mode" value="weekly" checked' in edit
    assert "<option selected>America/Chicago</option>" in edit
    assert re.findall(r'name="day" value="(\w+)" checked', edit) == ["mon", "wed"]
    assert 'name="from_time" type="time" value="22:00"' in edit
    assert f'name="last_day" type="date" value="{last.isoformat()}"' in edit


REFUSALS = [
    pytest.param(
        {"ticket": "JIRA-77"},
        400,
        "ticket-invalid",
        "ticket",
        "ticket reference &#39;JIRA-77&#39; does not have the expected format",
        id="bad-ticket",
    ),
    pytest.param(
        {"device": ["pump-12", "ct-3"]},
        403,
        "device-not-serviced",
        "devices",
        "ct-3: not a device Infusia Medical services",
        id="device-not-serviced",
    ),
    pytest.param(
        {"service": ["ssh", "https"], "device": ["pump-13"]},
        400,
        "service-unknown",
        "services",
        "device pump-13 has no service https (it offers ssh)",
        id="service-lacking",
    ),
    pytest.param(
        {"swap": True},
        400,
        "window-invalid",
        "window",
        "the window must end after it starts",
        id="end-before-start",
    ),
]


@pytest.mark.parametrize(("change", "status", "code", "field", "message"), REFUSALS)
async def test_a_refused_request_comes_back_with_the_input_and_the_reason(
    web_app: WebApp,
    eng: SignedIn,
    db: Sessions,
    audit_events: AuditEvents,
    change: dict[str, Any],
    status: int,
    code: str,
    field: str,
    message: str,
) -> None:
    form = one_off(web_app, reason="swap the <b>battery</b>\nthen test")
    if change.pop("swap", False):
        form["start"], form["end"] = form["end"], form["start"]
    form.update(change)
    resp = await post_form(eng.client, "/requests/new", form)
    assert resp.status == status
    page = await resp.text()
    assert message in page
    assert f'<p class="flash flash-error" id="{field}-error">' in page  # beside the field
    # everything typed is still there (escaped), ticked devices still ticked
    assert f'name="ticket" value="{html.escape(form["ticket"])}"' in page
    assert "swap the &lt;b&gt;battery&lt;/b&gt;\nthen test</textarea>" in page
    assert f'name="start" type="datetime-local" value="{form["start"]}"' in page
    assert "<option selected>Europe/Berlin</option>" in page
    serviced = [d for d in form["device"] if d != "ct-3"]
    assert checked_devices(page) == serviced
    assert "ct-3" not in listed_devices(page)
    assert re.findall(r'name="service" value="(\w+)" checked', page) == sorted(form["service"])
    # nothing filed, nobody told, and the refusal is evidence
    assert await requests_in_db(db) == []
    assert eng.notifier.emitted == []
    refusals = await audit_events("policy:request:refused")
    assert [(a, d["code"], d["action"]) for _t, a, d in refusals] == [("vendor:eng1", code, "file")]


async def test_unreadable_form_fields_are_refused_here_and_audited(
    web_app: WebApp, eng: SignedIn, db: Sessions, audit_events: AuditEvents
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"start": "tomorrow"}, "the start &#39;tomorrow&#39; is not a date and time"),
        ({"tz": "Mars/Olympus"}, "unknown time zone &#39;Mars/Olympus&#39;"),
        ({"end": ""}, "give the window&#39;s end date and time"),
        ({"mode": "weekly", "day": ["mon"], "from_time": "08:00", "to_time": "10:00"},
         "give the last day of the weekly window"),
        ({"mode": "weekly", "day": ["mon"], "from_time": "08:00", "last_day": "2099-01-01"},
         "give the weekly window&#39;s from and to times"),
        ({"mode": "weekly", "day": [], "from_time": "08:00", "to_time": "10:00",
          "last_day": "2099-01-01"}, "a recurring window needs at least one weekday"),
    ]  # fmt: skip
    for change, message in cases:
        resp = await post_form(eng.client, "/requests/new", one_off(web_app, **change))
        assert resp.status == 400
        page = await resp.text()
        assert message in page
        assert '<p class="flash flash-error" id="window-error">' in page
    assert await requests_in_db(db) == []
    refused = await audit_events("web:request:refused")
    assert [d["code"] for _t, _a, d in refused] == [
        "window-invalid",
        "tz-invalid",
        "window-invalid",
        "window-invalid",
        "window-invalid",
        "recurrence-invalid",
    ]


# --- the device picker ---------------------------------------------------------------------


async def test_the_picker_lists_only_serviced_devices_and_search_filters_it(
    web_app: WebApp, eng: SignedIn, db: Sessions
) -> None:
    page = await (await eng.client.get("/requests/new")).text()
    assert listed_devices(page) == ["pump-12", "pump-13"]
    assert "Your organization services 2 devices." in page
    # the services of the serviced devices, not Scanco's dicom
    assert re.findall(r'name="service" value="(\w+)"', page) == ["https", "ssh"]

    page = await (await eng.client.get("/requests/new?q=bed%205")).text()
    assert listed_devices(page) == ["pump-13"]  # location matches
    page = await (await eng.client.get("/requests/new?q=ct-3")).text()
    assert listed_devices(page) == []
    assert "No device of your organization matches “ct-3”." in page

    # a ticked device stays ticked (and listed) across a search that does not match it
    page = await (await eng.client.get("/requests/new?q=pump-13&device=pump-12")).text()
    assert listed_devices(page) == ["pump-12", "pump-13"]
    assert checked_devices(page) == ["pump-12"]

    # the form's own Search button: everything typed survives, nothing is filed
    form = one_off(web_app, q="13", action="search", device=["pump-12"])
    resp = await post_form(eng.client, "/requests/new", form)
    assert resp.status == 200
    page = await resp.text()
    assert listed_devices(page) == ["pump-12", "pump-13"]
    assert checked_devices(page) == ["pump-12"]
    assert f'name="ticket" value="{TICKET}"' in page
    assert "replace the battery pack</textarea>" in page
    assert 'name="q" type="search" value="13"' in page
    assert await requests_in_db(db) == []


# --- editing, cancelling -------------------------------------------------------------------


async def file_one(web_app: WebApp, client: Client, **values: Any) -> int:
    resp = await post_form(client, "/requests/new", one_off(web_app, **values))
    assert resp.status == 200, await resp.text()
    return int(resp.url.path.rsplit("/", 1)[1])


async def test_editing_clears_the_approvals(
    web_app: WebApp,
    eng: SignedIn,
    db: Sessions,
    make_staff: MakeStaff,
    audit_events: AuditEvents,
) -> None:
    request_id = await file_one(web_app, eng.client)
    bea, _pw, _secret = await make_staff("bea", ["biomed"])
    async with db() as s:
        outcome = await workflow.approve(
            s,
            web_app.ctx.audit,
            Actor("staff", bea.id, "bea", frozenset({"biomed"})),
            request_id,
            role="biomed",
            now=web_app.clock(),
        )
    assert outcome.grant is None and outcome.missing_roles == {"security"}
    page = await (await eng.client.get(f"/requests/{request_id}")).text()
    assert "Waiting for approval by <strong>security</strong>" in page
    assert "<td>biomed</td><td>staff:bea</td>" in page

    edit = await (await eng.client.get(f"/requests/{request_id}/edit")).text()
    assert "Changing the request clears its approvals." in edit
    assert "The 1 approval(s) given so far (biomed) will no longer count" in edit
    assert checked_devices(edit) == ["pump-12"]
    assert f'name="ticket" value="{TICKET}"' in edit
    assert "replace the battery pack</textarea>" in edit

    form = one_off(web_app, reason="replace the battery pack and the door seal", tz="UTC")
    form["start"] = local_value(day_after(web_app, 2, 8, "UTC"), "UTC")
    form["end"] = local_value(day_after(web_app, 2, 12, "UTC"), "UTC")
    resp = await eng.client.post(
        f"/requests/{request_id}/edit", data=as_data(form, csrf_from(edit))
    )
    assert resp.url.path == f"/requests/{request_id}"
    page = await resp.text()
    assert "was changed (revision 2); it waits for approval." in page
    assert "The 1 approval(s) given before no longer count." in page
    assert "Waiting for approval by <strong>biomed and security</strong>" in page
    assert "No approvals yet." in page
    (req,) = await requests_in_db(db)
    assert (req.revision, req.approvals, req.status) == (2, [], RequestStatus.PENDING)
    assert req.window_start == day_after(web_app, 2, 8, "UTC")
    assert req.reason == "replace the battery pack and the door seal"
    assert [e for e, _p, _m in eng.notifier.emitted][-1] == "request.edited"
    ((_tag, _actor, detail),) = await audit_events("policy:request:edited")
    assert detail["approvals_cleared"] == 1

    # an edit the workflow refuses comes back with the input; nothing changes
    form["ticket"] = "nope"
    resp = await post_form(eng.client, f"/requests/{request_id}/edit", form)
    assert resp.status == 400
    page = await resp.text()
    assert "does not have the expected format" in page
    assert 'name="ticket" value="nope"' in page
    assert (await requests_in_db(db))[0].revision == 2


async def test_cancelling_a_request(
    web_app: WebApp, eng: SignedIn, db: Sessions, audit_events: AuditEvents
) -> None:
    request_id = await file_one(web_app, eng.client)
    page = await (await eng.client.get(f"/requests/{request_id}")).text()
    resp = await eng.client.post(
        f"/requests/{request_id}/cancel",
        data={"_csrf": csrf_from(page), "reason": "the ticket was closed"},
    )
    assert resp.url.path == f"/requests/{request_id}"
    page = await resp.text()
    assert f"Request {request_id} for {TICKET} was cancelled." in page
    assert 'Cancelled: <span class="prewrap">the ticket was closed</span>.' in page
    assert "Cancel this request" not in page and "/edit" not in page
    (req,) = await requests_in_db(db)
    assert req.status is RequestStatus.CANCELLED
    assert [e for e, _p, _m in eng.notifier.emitted] == ["request.filed", "request.cancelled"]
    assert eng.notifier.emitted[1][1]["status"] == "cancelled"

    # once decided, neither cancel nor edit: the reason is shown and audited
    resp = await eng.client.post(f"/requests/{request_id}/cancel", data={"_csrf": csrf_from(page)})
    assert f"request {request_id} is already cancelled; nothing to change" in await resp.text()
    resp = await eng.client.get(f"/requests/{request_id}/edit")
    assert resp.status == 409
    assert "is already cancelled" in await resp.text()
    codes = [d["code"] for _t, _a, d in await audit_events() if _t.endswith(":request:refused")]
    assert codes == ["request-not-pending", "request-not-pending"]


async def test_a_denied_request_shows_the_reason_as_text(
    web_app: WebApp, eng: SignedIn, db: Sessions, make_staff: MakeStaff
) -> None:
    request_id = await file_one(web_app, eng.client, reason="<script>alert(1)</script>")
    bea, _pw, _secret = await make_staff("bea", ["biomed"])
    async with db() as s:
        await workflow.deny(
            s,
            web_app.ctx.audit,
            Actor("staff", bea.id, "bea", frozenset({"biomed"})),
            request_id,
            "no work on <i>ICU</i> pumps this week",
            now=web_app.clock(),
        )
    page = await (await eng.client.get(f"/requests/{request_id}")).text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "no work on &lt;i&gt;ICU&lt;/i&gt; pumps this week" in page
    listing = await (await eng.client.get("/requests")).text()
    assert "reason: no work on &lt;i&gt;ICU&lt;/i&gt; pumps this week" in listing


# --- other people's requests ------------------------------------------------------------------


async def test_another_vendors_request_is_not_found(
    web_app: WebApp,
    eng: SignedIn,
    db: Sessions,
    make_vendor_user: MakeVendorUser,
    login: Login,
    audit_events: AuditEvents,
) -> None:
    theirs = await file_one(web_app, eng.client)
    # a colleague in the same organization is "another vendor user" just the same
    for other_login, org in (("sam1", "Scanco"), ("eng2", "Infusia Medical")):
        _user, password, secret = await make_vendor_user(other_login, vendor=org)
        browser = web_app.browser()
        await login(browser, other_login, password, secret, kind="vendor")
        page = await (await browser.get("/requests/new")).text()
        token = csrf_from(page)
        for method, path in [
            ("GET", f"/requests/{theirs}"),
            ("GET", f"/requests/{theirs}/edit"),
            ("POST", f"/requests/{theirs}/edit"),
            ("POST", f"/requests/{theirs}/cancel"),
            ("GET", "/requests/999999"),
            ("GET", "/requests/12345678901234567890"),
        ]:
            data = (
                as_data(one_off(web_app, ticket="CHG0000666"), token) if method == "POST" else None
            )
            resp = await browser.request(method, path, data=data)
            assert resp.status == 404, (other_login, method, path)
            assert TICKET not in await resp.text()
        listing = await (await browser.get("/requests")).text()
        assert TICKET not in listing
    (req,) = await requests_in_db(db)
    assert (req.status, req.revision, req.ticket_ref) == (RequestStatus.PENDING, 1, TICKET)
    refused = await audit_events()
    actors = {a for t, a, d in refused if t.endswith(":request:refused")}
    assert actors == {"vendor:sam1", "vendor:eng2"}


async def test_staff_are_refused_the_vendor_pages(
    web_app: WebApp, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    _user, password, secret = await make_staff("bea", ["biomed", "admin"])
    await login(client, "bea", password, secret)
    for path in ("/requests", "/requests/new", "/connect"):
        resp = await client.get(path)
        assert resp.status == 403
        assert "this needs the vendor role" in await resp.text()
