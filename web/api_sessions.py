"""The API's gateway sessions: the list a reviewer filters (``recorder.review``), and the
kill switch (``policy.admin.request_kill``).

A kill is a request: the gateway that holds the session ends it within a second, so the
answer is 202 with when the kill was asked for. It is audited here as
``web:session:kill`` (``web:session:kill-refused`` for an unknown or ended session), since
``request_kill`` is shared with the CLI and records nothing itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from policy import admin
from policy.errors import Conflict, PolicyError
from policy.models import Device
from recorder import review
from web.api_base import maybe_stamp, stamp
from web.api_input import TIME, Body, Call, Field, Param, Schema, nullable, obj, ref, text
from web.auth import principal
from web.context import ctx
from web.openapi import API, Operation, json_reply

KILLERS = frozenset({"security", "admin"})
VIEWERS = frozenset({"security", "admin", "biomed"})

RECORDING: Schema = obj(
    {
        "id": {"type": "integer"},
        "format": text("asciicast, pcap, ..."),
        "status": text("recording, final, incomplete or expired"),
        "sha256": nullable(text()),
        "size": nullable({"type": "integer"}),
        "started_at": TIME,
        "finished_at": nullable(TIME),
        "playable": {"type": "boolean", "description": "the browser player can replay it"},
    }
)
SESSION: Schema = obj(
    {
        "id": text(),
        "vendor_login": text(),
        "vendor_name": text(),
        "device": text("the device's name when the session started"),
        "ticket": text(),
        "kind": text("shell, exec, sftp, forward, ..."),
        "command": nullable(text()),
        "client_address": text(),
        "gateway_node": text(),
        "started_at": TIME,
        "ended_at": nullable(TIME),
        "end_reason": nullable(text()),
        "exit_status": nullable({"type": "integer"}),
        "kill_requested_at": nullable(TIME),
        "kill_requested_by": nullable(text()),
        "live": {"type": "boolean", "description": "not ended yet"},
        "recordings": {"type": "array", "items": ref("Recording")},
    }
)
SCHEMAS: dict[str, Schema] = {
    "Recording": RECORDING,
    "Session": SESSION,
    "SessionList": obj({"sessions": {"type": "array", "items": ref("Session")}}),
    "KillRequested": obj(
        {
            "id": text(),
            "kill_requested_at": TIME,
            "kill_requested_by": text(),
        }
    ),
}


def session_json(row: review.SessionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "vendor_login": row.vendor_login,
        "vendor_name": row.vendor_name,
        "device": row.device,
        "ticket": row.ticket_ref,
        "kind": row.kind,
        "command": row.command,
        "client_address": row.client_address,
        "gateway_node": row.gateway_node,
        "started_at": stamp(row.started_at),
        "ended_at": maybe_stamp(row.ended_at),
        "end_reason": row.end_reason,
        "exit_status": row.exit_status,
        "kill_requested_at": maybe_stamp(row.kill_requested_at),
        "kill_requested_by": row.kill_requested_by,
        "live": row.live,
        "recordings": [
            {
                "id": r.id,
                "format": r.format,
                "status": r.status,
                "sha256": r.sha256,
                "size": r.size,
                "started_at": stamp(r.started_at),
                "finished_at": maybe_stamp(r.finished_at),
                "playable": r.playable,
            }
            for r in row.recordings
        ],
    }


async def list_sessions(request: web.Request, call: Call) -> web.StreamResponse:
    filters = {k: v for k, v in call.params.items() if k != "limit"}
    async with ctx(request).sessions() as db:
        rows = await review.list_sessions(db, limit=call.params.get("limit", 200), **filters)
    return json_reply({"sessions": [session_json(r) for r in rows]})


async def kill_session(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), principal(request)
    session_id, reason = call.params["id"], call.body.get("reason") or ""
    try:
        async with context.sessions() as db:
            row = await admin.request_kill(db, session_id, who.name)
            device = await db.scalar(select(Device.name).where(Device.id == row.device_id))
    except PolicyError as exc:
        # an ended session is a state, not bad input, to whoever clicked "kill"
        refusal = Conflict(exc.code, exc.message) if exc.code == "session-ended" else exc
        await context.audit.record(
            "web:session:kill-refused",
            actor=who.name,
            session_id=session_id[:32],
            code=refusal.code,
            message=refusal.message,
        )
        raise refusal from None
    assert row.kill_requested_at is not None and row.kill_requested_by is not None
    await context.audit.record(
        "web:session:kill",
        actor=who.name,
        session_id=row.id,
        device=device,
        vendor_user_id=row.vendor_user_id,
        reason=reason,
        via=who.via,
    )
    body = {
        "id": row.id,
        "kill_requested_at": stamp(row.kill_requested_at),
        "kill_requested_by": row.kill_requested_by,
    }
    return json_reply(body, status=202)


def _query(name: str, schema: Schema, description: str) -> Param:
    return Param(name, "query", schema, description)


OPERATIONS = (
    Operation(
        "GET",
        f"{API}/sessions",
        list_sessions,
        "List gateway sessions, live ones included",
        VIEWERS,
        "SessionList",
        "sessions",
        params=(
            _query("device", text(maxLength=100), "the device's name"),
            _query("vendor", text(maxLength=200), "a vendor user's login or an organization"),
            _query("ticket", text(maxLength=64), "the ticket the session ran under"),
            _query("since", TIME, "sessions open at some time at or after this"),
            _query("until", TIME, "sessions that started before this"),
            _query("live", {"type": "boolean"}, "true: still open; false: ended"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": review.MAX_LIST}, ""),
        ),
        description="Newest first.",
        reply_description="the sessions",
    ),
    Operation(
        "POST",
        f"{API}/sessions/{{id}}/kill",
        kill_session,
        "End a live session now",
        KILLERS,
        "KillRequested",
        "sessions",
        status=202,
        params=(Param("id", "path", text(maxLength=64), "the session's id"),),
        body=Body((Field("reason", nullable(text(maxLength=4000))),), required=False),
        conflicts=True,
        description="The gateway holding the session ends it within a second.",
        reply_description="the kill was asked for",
    ),
)
