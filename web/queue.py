"""The approvers' pages: the queue of pending requests, one request under review, grants.

Biomed and security decide here, with each device's clinical context on the same page
(criticality, place, maintenance windows and whether the request fits them, the vendor's
past sessions); admins may look but not decide. The rules are ``policy.workflow``'s:
these handlers only translate forms into its calls and its refusals into messages.

* ``GET /queue``: pending requests, soonest window first, with the roles still needed.
* ``GET /requests/{id}/review``: one request (of any status) and, while it is pending,
  the approve and deny forms. ``POST /queue/{id}/approve`` and ``/queue/{id}/deny``
  decide and come back to it.
* ``GET /grants``: grants not revoked whose window has not ended; ``POST
  /grants/{id}/revoke`` cuts one off (the gateways close its sessions within a second).

An approval may shorten the window or drop services. The form shows the requested times
as ``datetime-local`` values in one time zone (the request's recurrence zone, else the
first device's maintenance zone, else UTC); a value left as shown means "as requested",
so the minute precision of the input never moves the window by a few seconds and never
makes an unintended new revision.

Each form carries the request's revision as the approver saw it. The handler locks the
request row, and a request changed since then (the vendor edited it, another approver
shortened it) is refused with ``request-changed`` and shown afresh: nobody approves
content they have not seen. That refusal, and unreadable form fields, are audited here
as ``web:request:refused``; the workflow audits its own refusals.

Notifications (``ctx.notifier``, when configured): ``request.approved`` when the approval
that completes the rules creates the grant (an approval that leaves the request pending
is on the page and in the audit log, not news for the vendor), ``request.denied`` and
``grant.revoked``, each also to the vendor user's own address when they gave one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import requests_view, workflow
from policy.actor import Actor, record_refusal
from policy.approval import APPROVER_ROLES, TWO_PERSON
from policy.errors import InvalidInput, PolicyError
from policy.models import AccessRequest, Grant, RequestStatus, VendorUser
from policy.notify import grant_payload, request_payload
from policy.windows import Weekly, effective_window, to_utc
from web.auth import actor, principal, requires
from web.context import WebContext, ctx
from web.errors import status_for
from web.render import flash, redirect, render

VIEWERS = ("biomed", "security", "admin")
REQUEST_REFUSED = "web:request:refused"
LOCAL = "%Y-%m-%dT%H:%M"  # the value format of <input type="datetime-local">
FormData = MultiDictProxy[str | bytes | bytearray | web.FileField]


# --- formatting for the templates ------------------------------------------------------


def when(value: datetime | None) -> str:
    """``2026-11-23 15:00 UTC``; a dash for no time."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value is not None else "—"


def local(value: datetime, zone: str) -> str:
    """``Mon 23 Nov 09:00 America/Chicago``: the same instant as the approver plans it."""
    return f"{value.astimezone(ZoneInfo(zone)):%a %d %b %H:%M} {zone}"


def schedule(recurrence: dict[str, Any] | None) -> str:
    """The weekly window described, or "" for a one-off window."""
    return Weekly.parse(recurrence).describe() if recurrence else ""


def roles_text(roles: Iterable[str]) -> str:
    return " and ".join(sorted(roles))


def approvers(approved_by: str) -> str:
    """``biomed:bea,security:sol`` as people read it: ``biomed: bea, security: sol``."""
    pairs = (item.partition(":") for item in approved_by.split(",") if item)
    return ", ".join(f"{role}: {who}" if who else role for role, _, who in pairs) or "—"


TEMPLATE_HELPERS: dict[str, Any] = {
    "approvers": approvers,
    "when": when,
    "local": local,
    "schedule": schedule,
    "roles_text": roles_text,
}


# --- the forms ---------------------------------------------------------------------------


@dataclass
class ApproveForm:
    role: str
    start: str
    end: str
    tz: str
    services: list[str]
    comment: str = ""
    override_reason: str = ""
    observer: bool = False  # require a staff observer (policy.moderation)

    @classmethod
    def initial(cls, req: AccessRequest, zone: str, role: str) -> ApproveForm:
        """As requested: the whole window, every service."""
        return cls(
            role=role,
            start=_local_value(req.window_start, zone),
            end=_local_value(req.window_end, zone),
            tz=zone,
            services=sorted(req.services),
        )

    @classmethod
    def posted(cls, data: FormData) -> ApproveForm:
        return cls(
            role=_text(data, "role"),
            start=_text(data, "start"),
            end=_text(data, "end"),
            tz=_text(data, "tz") or "UTC",
            services=[str(s) for s in data.getall("services", []) if isinstance(s, str)],
            comment=_text(data, "comment"),
            override_reason=_text(data, "override_reason"),
            observer=_text(data, "observer") == "yes",
        )


@dataclass
class DenyForm:
    role: str = ""
    reason: str = ""


def _text(data: FormData, name: str) -> str:
    value = data.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(
            "tz-invalid", f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin"
        ) from None


def _local_value(value: datetime, zone: str) -> str:
    return value.astimezone(ZoneInfo(zone)).strftime(LOCAL)


def _parse_local(text: str, zone: str, field: str) -> datetime:
    try:
        naive = datetime.strptime(text, LOCAL)
    except ValueError:
        raise InvalidInput(
            "window-invalid", f"the {field} {text!r} is not a date and time (YYYY-MM-DD HH:MM)"
        ) from None
    return to_utc(naive, _zone(zone))


def _window_change(
    form: ApproveForm, req: AccessRequest
) -> tuple[datetime | None, datetime | None]:
    """The approved start and end, or None for each left as requested (shown unchanged)."""
    _zone(form.tz)
    start = end = None
    if form.start and form.start != _local_value(req.window_start, form.tz):
        start = _parse_local(form.start, form.tz, "start")
    if form.end and form.end != _local_value(req.window_end, form.tz):
        end = _parse_local(form.end, form.tz, "end")
    return start, end


def _services_change(form: ApproveForm, req: AccessRequest) -> list[str] | None:
    return None if set(form.services) == set(req.services) else form.services


def _check_revision(req: AccessRequest, data: FormData) -> None:
    """Refuse a decision on a revision other than the one on the approver's screen."""
    seen = _text(data, "revision")
    if not (seen.isascii() and seen.isdigit()):
        raise InvalidInput("form-incomplete", "the form is incomplete; reload the page")
    workflow.check_revision(req, int(seen))


def _default_zone(req: AccessRequest) -> str:
    """The zone the approver most likely plans in: the request's weekly window's, else
    the first device's maintenance window's, else UTC."""
    if req.recurrence:
        return Weekly.parse(req.recurrence).tz
    for device in sorted(req.devices, key=lambda d: d.name):
        for window in device.maintenance_windows or []:
            return Weekly.parse(window).tz
    return "UTC"


def _approver_roles(request: web.Request) -> list[str]:
    return sorted(principal(request).roles & APPROVER_ROLES)


def _preselect(roles: Sequence[str], missing: frozenset[str]) -> str:
    """The role to tick: the only one held, or the only held one still needed."""
    if len(roles) == 1:
        return roles[0]
    needed = [r for r in roles if r in missing]
    return needed[0] if len(needed) == 1 else ""


def _notify(context: WebContext, event: str, payload: dict[str, Any], email: str) -> None:
    """Queue a notification, also to the vendor user's own address when they gave one."""
    if context.notifier is not None:
        context.notifier.emit(event, payload, email_to=(email,) if email else ())


async def _refuse(
    context: WebContext,
    db: AsyncSession,
    who: Actor,
    exc: PolicyError,
    action: str,
    request_id: int,
) -> None:
    await record_refusal(
        db, context.audit, who, REQUEST_REFUSED, exc, action=action, request_id=request_id
    )


# --- the queue and the review page ---------------------------------------------------------


@requires(*VIEWERS)
async def queue_get(request: web.Request) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        pending = await requests_view.pending_requests(db)
    return render(request, "queue/queue.html", pending=pending, **TEMPLATE_HELPERS)


async def _review_page(
    request: web.Request,
    request_id: int,
    *,
    approve_form: ApproveForm | None = None,
    deny_form: DenyForm | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    async with ctx(request).sessions() as db:
        detail = await requests_view.request_detail(db, request_id)
    req = detail.request
    zone = _default_zone(req)
    roles = _approver_roles(request)
    preselected = _preselect(roles, detail.missing_roles)
    zones = sorted({"UTC", zone, *_maintenance_zones(req)})
    return render(
        request,
        "queue/review.html",
        status=status,
        error=error,
        detail=detail,
        req=req,
        pending=req.status is RequestStatus.PENDING,
        approver_roles=roles,
        approve=approve_form or ApproveForm.initial(req, zone, preselected),
        deny=deny_form or DenyForm(role=preselected),
        outside=any(not d.coverage.covered for d in detail.devices),
        two_person=detail.required_roles == TWO_PERSON,
        critical=[d for d in detail.devices if d.criticality in ("high", "life-sustaining")],
        zone=zone,
        zones=zones,
        **TEMPLATE_HELPERS,
    )


def _maintenance_zones(req: AccessRequest) -> set[str]:
    return {Weekly.parse(w).tz for d in req.devices for w in d.maintenance_windows or []}


@requires(*VIEWERS)
async def review_get(request: web.Request) -> web.StreamResponse:
    return await _review_page(request, int(request.match_info["request_id"]))


def _approved_message(outcome: workflow.ApprovalOutcome, role: str, seen_revision: int) -> str:
    req, grant = outcome.request, outcome.grant
    text = f"Approved as {role}."
    if req.revision != seen_revision:
        text += (
            " The window or services changed, so this is a new revision and approvals of"
            " the earlier one no longer count."
        )
    if grant is not None:
        devices = ", ".join(sorted(d.name for d in grant.devices))
        return (
            f"{text} Grant {grant.id} created: {devices} ({', '.join(grant.services)}) from"
            f" {when(grant.window_start)} to {when(grant.window_end)}."
        )
    needed = roles_text(outcome.missing_roles)
    return f"{text} The request stays pending: it still needs a {needed} approval, by someone else."


@requires(*VIEWERS)
async def approve_post(request: web.Request) -> web.StreamResponse:
    request_id = int(request.match_info["request_id"])
    context = ctx(request)
    who = actor(request)
    data = await request.post()
    form = ApproveForm.posted(data)
    try:
        async with context.sessions() as db:
            try:
                req = await workflow.lock_request(db, request_id)
                start = end = services = None
                if req.status is RequestStatus.PENDING:  # else the workflow says it is decided
                    _check_revision(req, data)
                    start, end = _window_change(form, req)
                    services = _services_change(form, req)
            except PolicyError as exc:
                await _refuse(context, db, who, exc, "approve", request_id)
                raise
            seen = req.revision
            outcome = await workflow.approve(
                db,
                context.audit,
                who,
                request_id,
                role=form.role,
                comment=form.comment,
                start=start,
                end=end,
                services=services,
                override_reason=form.override_reason or None,
                observer_required=form.observer,
                now=context.clock(),
            )
            vendor = await db.get(VendorUser, outcome.request.vendor_user_id)
    except PolicyError as exc:
        fresh = exc.code in ("request-changed", "request-not-pending")
        return await _review_page(
            request,
            request_id,
            approve_form=None if fresh else form,
            error=exc.message,
            status=status_for(exc),
        )
    assert vendor is not None  # a foreign key
    if outcome.grant is not None:
        payload = request_payload(outcome.request, vendor_login=vendor.login, actor=who.label)
        _notify(context, "request.approved", payload, vendor.email)
    flash(request, _approved_message(outcome, form.role, seen), "success")
    return redirect(f"/requests/{request_id}/review")


@requires(*VIEWERS)
async def deny_post(request: web.Request) -> web.StreamResponse:
    request_id = int(request.match_info["request_id"])
    context = ctx(request)
    who = actor(request)
    data = await request.post()
    form = DenyForm(role=_text(data, "role"), reason=_text(data, "reason"))
    try:
        async with context.sessions() as db:
            try:
                req = await workflow.lock_request(db, request_id)
                if req.status is RequestStatus.PENDING:
                    _check_revision(req, data)
            except PolicyError as exc:
                await _refuse(context, db, who, exc, "deny", request_id)
                raise
            denied = await workflow.deny(
                db,
                context.audit,
                who,
                request_id,
                form.reason,
                now=context.clock(),
                role=form.role or None,
            )
            vendor = await db.get(VendorUser, denied.vendor_user_id)
    except PolicyError as exc:
        return await _review_page(
            request, request_id, deny_form=form, error=exc.message, status=status_for(exc)
        )
    assert vendor is not None
    payload = request_payload(denied, vendor_login=vendor.login, actor=who.label)
    _notify(context, "request.denied", payload, vendor.email)
    message = f"Request {denied.ticket_ref} denied; {vendor.login} sees your reason."
    flash(request, message, "success")
    return redirect(f"/requests/{request_id}/review")


# --- grants --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantRow:
    grant: Grant
    vendor_login: str
    vendor_name: str
    devices: list[str]
    schedule: str
    open_now: bool


def _grant_rows(grants: Sequence[Grant], now: datetime) -> list[GrantRow]:
    rows = []
    for g in grants:
        weekly = Weekly.parse(g.recurrence) if g.recurrence else None
        rows.append(
            GrantRow(
                grant=g,
                vendor_login=g.user.login,
                vendor_name=g.user.vendor.name,
                devices=sorted(d.name for d in g.devices),
                schedule=weekly.describe() if weekly else "",
                open_now=effective_window(g.window_start, g.window_end, weekly, now) is not None,
            )
        )
    return rows


async def _grants_page(
    request: web.Request,
    *,
    error: str | None = None,
    failed: int | None = None,
    reason: str = "",
    status: int = 200,
) -> web.Response:
    context = ctx(request)
    now = context.clock()
    async with context.sessions() as db:
        grants = await requests_view.active_grants(db, now)
    return render(
        request,
        "queue/grants.html",
        status=status,
        error=error,
        rows=_grant_rows(grants, now),
        failed=failed,
        reason=reason,
        **TEMPLATE_HELPERS,
    )


@requires(*VIEWERS)
async def grants_get(request: web.Request) -> web.StreamResponse:
    return await _grants_page(request)


@requires(*VIEWERS)
async def revoke_post(request: web.Request) -> web.StreamResponse:
    grant_id = int(request.match_info["grant_id"])
    context = ctx(request)
    who = actor(request)
    reason = _text(await request.post(), "reason")
    try:
        async with context.sessions() as db:
            await workflow.revoke_grant(
                db, context.audit, who, grant_id, reason, now=context.clock()
            )
    except PolicyError as exc:
        return await _grants_page(
            request, error=exc.message, failed=grant_id, reason=reason, status=status_for(exc)
        )
    async with context.sessions() as db:
        grant = await db.scalar(
            select(Grant)
            .where(Grant.id == grant_id)
            .options(selectinload(Grant.devices), selectinload(Grant.user))
        )
    assert grant is not None  # it was just revoked
    _notify(context, "grant.revoked", grant_payload(grant, grant.user.login), grant.user.email)
    flash(
        request,
        f"Grant {grant_id} ({grant.ticket_ref}, {grant.user.login}) revoked; its live sessions"
        " end within a second and new connections are refused.",
        "success",
    )
    return redirect("/grants")


def setup(app: web.Application) -> None:
    app.router.add_get("/queue", queue_get)
    app.router.add_get(r"/requests/{request_id:\d{1,9}}/review", review_get)
    app.router.add_post(r"/queue/{request_id:\d{1,9}}/approve", approve_post)
    app.router.add_post(r"/queue/{request_id:\d{1,9}}/deny", deny_post)
    app.router.add_get("/grants", grants_get)
    app.router.add_post(r"/grants/{grant_id:\d{1,9}}/revoke", revoke_post)
