"""The API's access requests: list, file, read, edit, cancel, approve, deny.

Every rule is the workflow's (``policy.workflow``): who may file for whom, which devices
a vendor may name, the ticket format, the window, the two-person rule, self-approval.
These handlers turn JSON into its arguments and its results into JSON, and tell people
(``request.filed|approved|denied|cancelled``) once a change is committed.

A vendor sees and acts on their own requests only; another vendor's request reads as
unknown (404), as it does on the pages. Staff see all of them. An integration such as a
ticketing system files on behalf of a vendor user with a staff token and ``vendor_login``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from policy import requests_view, workflow
from policy.actor import Actor
from policy.approval import APPROVER_ROLES
from policy.errors import NotFound, PolicyError
from policy.models import AccessRequest, RequestStatus
from policy.notify import request_payload
from web.api_base import notify, vendor_email
from web.api_grants import grant_json, load_grant
from web.api_input import ID, Body, Call, Field, Param, nullable, ref, strings, text, time_field
from web.api_request_json import MAX_LIST, ROLE_NAMES, STATUSES, detail_json, request_json
from web.auth import actor, principal
from web.context import ctx
from web.openapi import ALL_ROLES, API, Operation, json_reply, refused


async def _summary(request: web.Request, request_id: int) -> requests_view.RequestSummary:
    """The request as it is now, read in a fresh session after a change."""
    async with ctx(request).sessions() as db:
        found = await requests_view.list_requests(db, request_id=request_id)
    if not found:
        raise NotFound("request-unknown", f"request {request_id} does not exist")
    return found[0]


def _payload(summary: requests_view.RequestSummary, who: str) -> dict[str, Any]:
    return request_payload(summary.request, vendor_login=summary.vendor_login, actor=who)


async def _locked(
    request: web.Request, db: AsyncSession, request_id: int, revision: int | None
) -> AccessRequest:
    """Lock the request for the caller's transaction and read it. With ``revision`` (the
    one the caller reviewed), a pending request changed since is refused: nobody edits,
    approves or denies content they have not seen. A decided request is left for the
    workflow to refuse as such."""
    try:
        req = await workflow.lock_request(db, request_id)
        workflow.check_revision(req, revision)
    except PolicyError as exc:
        await db.rollback()  # the audit log's writer may need the lock just taken
        await refused(request, exc, request_id=request_id)
        raise
    return req


async def _changed(
    request: web.Request,
    event: str,
    who: Actor,
    request_id: int,
    email: Sequence[str],
    status: int = 200,
) -> web.Response:
    """The request as committed, after telling its people of ``event`` (read afresh, so the
    answer and the notice say what the database holds)."""
    summary = await _summary(request, request_id)
    notify(request, event, _payload(summary, who.label), email)
    return json_reply(request_json(summary), status=status)


async def list_requests(request: web.Request, call: Call) -> web.StreamResponse:
    who = principal(request)
    status = RequestStatus(call.params["status"]) if "status" in call.params else None
    async with ctx(request).sessions() as db:
        found = await requests_view.list_requests(
            db,
            status=status,
            vendor_user_id=who.id if who.kind == "vendor" else None,
            limit=call.params.get("limit", 200),
        )
    return json_reply({"requests": [request_json(s) for s in found]})


async def get_request(request: web.Request, call: Call) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        detail = await requests_view.request_detail(db, call.params["id"], viewer=actor(request))
    return json_reply(detail_json(detail))


# --- changing --------------------------------------------------------------------------------


def _input(
    body: dict[str, Any], now: datetime, current: AccessRequest | None = None
) -> workflow.RequestInput:
    """The request content: the body's fields, and for those left out the current
    request's (PATCH), or blanks the workflow refuses (POST requires every field)."""

    def pick(name: str, default: Any) -> Any:
        return body[name] if name in body else default

    return workflow.RequestInput(
        ticket_ref=pick("ticket", current.ticket_ref if current else ""),
        devices=pick("devices", [d.name for d in current.devices] if current else []),
        services=pick("services", list(current.services) if current else []),
        window_start=pick("start", current.window_start if current else now),
        window_end=pick("end", current.window_end if current else now),
        recurrence=pick("recurrence", current.recurrence if current else None),
        reason=pick("reason", current.reason if current else ""),
        vendor_login=body.get("vendor_login"),
    )


async def file_request(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), actor(request)
    async with context.sessions() as db:
        req = await workflow.file_request(
            db,
            context.audit,
            who,
            _input(call.body, context.clock()),
            ticket_pattern=context.settings.workflow_ticket_pattern,
            now=context.clock(),
        )
        email = await vendor_email(db, req.vendor_user_id)
    return await _changed(request, "request.filed", who, req.id, email, status=201)


async def edit_request(request: web.Request, call: Call) -> web.StreamResponse:
    """PATCH: the fields given replace the request's, the others stay as read under the
    row lock the edit then runs in, so no concurrent change is silently undone."""
    context, who = ctx(request), actor(request)
    request_id = call.params["id"]
    async with context.sessions() as db:
        current = await _locked(request, db, request_id, call.body.get("revision"))
        req = await workflow.edit_request(
            db,
            context.audit,
            who,
            request_id,
            _input(call.body, context.clock(), current),
            now=context.clock(),
            ticket_pattern=context.settings.workflow_ticket_pattern,
        )
        email = await vendor_email(db, req.vendor_user_id)
    return await _changed(request, "request.edited", who, request_id, email)


async def cancel_request(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), actor(request)
    async with context.sessions() as db:
        req = await workflow.cancel_request(
            db,
            context.audit,
            who,
            call.params["id"],
            reason=call.body.get("reason", ""),
            now=context.clock(),
        )
        email = await vendor_email(db, req.vendor_user_id)
    return await _changed(request, "request.cancelled", who, req.id, email)


async def approve_request(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), actor(request)
    body = call.body
    async with context.sessions() as db:
        await _locked(request, db, call.params["id"], body.get("revision"))
        outcome = await workflow.approve(
            db,
            context.audit,
            who,
            call.params["id"],
            role=body["role"],
            comment=body.get("comment") or "",
            start=body.get("start"),
            end=body.get("end"),
            services=body.get("services"),
            override_reason=body.get("override_reason"),
            now=context.clock(),
        )
        email = await vendor_email(db, outcome.request.vendor_user_id)
    summary = await _summary(request, outcome.request.id)
    grant = None
    if outcome.grant is not None:
        loaded = await load_grant(request, outcome.grant.id)
        grant = grant_json(loaded)
        notify(request, "request.approved", _payload(summary, who.label), email)
    return json_reply({"request": request_json(summary), "grant": grant})


async def deny_request(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), actor(request)
    async with context.sessions() as db:
        await _locked(request, db, call.params["id"], call.body.get("revision"))
        req = await workflow.deny(
            db,
            context.audit,
            who,
            call.params["id"],
            call.body["reason"],
            now=context.clock(),
            role=call.body.get("role"),
        )
        email = await vendor_email(db, req.vendor_user_id)
    return await _changed(request, "request.denied", who, req.id, email)


# --- the operations ----------------------------------------------------------------------------

REQUEST_ID = Param("id", "path", ID, "the request's id")
_CONTENT = (
    Field("ticket", text("the change or incident ticket, e.g. CHG0001234", maxLength=64)),
    Field(
        "devices",
        strings("device names from the inventory", minItems=1, maxItems=100),
    ),
    Field("services", strings("service names, e.g. ssh, https", minItems=1, maxItems=20)),
    time_field("start", "when the window opens (RFC 3339 with offset)"),
    time_field("end", "when the window closes"),
    Field("recurrence", nullable(ref("Recurrence"))),
    Field("reason", text("what the work is for", maxLength=4000)),
)
_REVISION = Field(
    "revision",
    nullable(
        {
            "type": "integer",
            "minimum": 1,
            "description": "the revision you reviewed: if the request changed since,"
            " nothing happens and the answer is 409 request-changed",
        }
    ),
)
_REQUIRED_TO_FILE = {"ticket", "devices", "services", "start", "end", "reason"}
_VENDOR_LOGIN = Field(
    "vendor_login",
    nullable(text("the vendor user the request is for (staff and integrations)", maxLength=64)),
)


def _required(fields: tuple[Field, ...], names: set[str]) -> tuple[Field, ...]:
    return tuple(
        Field(f.name, f.schema, f.name in names, f.convert) if f.name in names else f
        for f in fields
    )


OPERATIONS = (
    Operation(
        "GET",
        f"{API}/requests",
        list_requests,
        "List access requests",
        ALL_ROLES,
        "RequestList",
        "requests",
        params=(
            Param("status", "query", {"type": "string", "enum": STATUSES}, "only this status"),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}),
        ),
        description="Newest first. A vendor user gets their own requests; staff get all.",
        reply_description="the requests",
    ),
    Operation(
        "POST",
        f"{API}/requests",
        file_request,
        "File an access request",
        ALL_ROLES,
        "Request",
        "requests",
        status=201,
        body=Body(
            (*_required(_CONTENT, _REQUIRED_TO_FILE), _VENDOR_LOGIN),
            "A vendor user files for themself; staff (an ITSM integration's token, say)"
            " name the vendor user in vendor_login.",
        ),
        conflicts=True,
        names=True,
        reply_description="the new pending request",
    ),
    Operation(
        "GET",
        f"{API}/requests/{{id}}",
        get_request,
        "One request, with each device's context for the decision",
        ALL_ROLES,
        "RequestDetail",
        "requests",
        params=(REQUEST_ID,),
        reply_description="the request",
    ),
    Operation(
        "PATCH",
        f"{API}/requests/{{id}}",
        edit_request,
        "Change a pending request (its approvals so far are cleared)",
        ALL_ROLES,
        "Request",
        "requests",
        params=(REQUEST_ID,),
        body=Body(
            (*_CONTENT, _VENDOR_LOGIN, _REVISION),
            "The fields to change; the others keep their values. recurrence: null makes"
            " the window a single one.",
        ),
        conflicts=True,
        description="By who filed it or its vendor user.",
        reply_description="the request, a new revision",
    ),
    Operation(
        "POST",
        f"{API}/requests/{{id}}/cancel",
        cancel_request,
        "Withdraw a pending request",
        ALL_ROLES,
        "Request",
        "requests",
        params=(REQUEST_ID,),
        body=Body((Field("reason", text(maxLength=4000)),), required=False),
        conflicts=True,
        description="By who filed it or its vendor user.",
        reply_description="the cancelled request",
    ),
    Operation(
        "POST",
        f"{API}/requests/{{id}}/approve",
        approve_request,
        "Approve a pending request as biomed or security",
        APPROVER_ROLES,
        "Approved",
        "requests",
        params=(REQUEST_ID,),
        body=Body(
            (
                Field("role", ROLE_NAMES, required=True),
                Field("comment", nullable(text(maxLength=4000))),
                time_field("start", "a later start: approve a shorter window"),
                time_field("end", "an earlier end: approve a shorter window"),
                Field("services", nullable(strings("a subset of the requested services"))),
                Field(
                    "override_reason",
                    nullable(text("why a window outside maintenance windows is allowed")),
                ),
                _REVISION,
            ),
            "Narrowing the window or services makes a new revision that earlier approvers"
            " must approve again.",
        ),
        conflicts=True,
        description=(
            "The last approval the rules need (biomed; and security, by another person, for"
            " high or life-sustaining devices) makes the grant."
        ),
        reply_description="the request, and the grant when this approval completed it",
    ),
    Operation(
        "POST",
        f"{API}/requests/{{id}}/deny",
        deny_request,
        "Deny a pending request, saying why",
        APPROVER_ROLES,
        "Request",
        "requests",
        params=(REQUEST_ID,),
        body=Body(
            (
                Field("reason", text("the vendor reads this", minLength=1, maxLength=4000), True),
                Field("role", nullable(ROLE_NAMES)),
                _REVISION,
            )
        ),
        conflicts=True,
        reply_description="the denied request",
    ),
)
