"""Access requests as the API shows them: the schemas, the conversions that must satisfy
them (tests/web/test_api.py checks every answer against the schemas), and the read
that gathers what a request's answer holds: who it is for and which approvals it lacks.
"""

from __future__ import annotations

from typing import Any

from policy import requests_view, workflow
from policy.models import Approval, RequestStatus
from web.api_base import maybe_stamp, recurrence, schedule, stamp
from web.api_input import TIME, Schema, nullable, obj, ref, strings, text

MAX_LIST = 1000
ROLE_NAMES = {"type": "string", "enum": ["biomed", "security"]}
STATUSES = [s.value for s in RequestStatus]

APPROVAL: Schema = obj(
    {
        "approver": text("staff:LOGIN"),
        "role": ROLE_NAMES,
        "decision": {"type": "string", "enum": ["approve", "deny"]},
        "comment": text(),
        "decided_at": TIME,
        "current": {
            "type": "boolean",
            "description": "it approves the request's current content (counts toward it)",
        },
    }
)
_REQUEST_PROPERTIES: dict[str, Schema] = {
    "id": {"type": "integer"},
    "status": {"type": "string", "enum": STATUSES},
    "ticket": text(),
    "vendor_login": text("the vendor user the request is for"),
    "vendor_name": text("their organization"),
    "filed_by": text("vendor:LOGIN or staff:LOGIN"),
    "devices": strings(),
    "services": strings(),
    "start": TIME,
    "end": TIME,
    "recurrence": nullable(ref("Recurrence")),
    "schedule": text("once, or the weekly window described"),
    "reason": text(),
    "decision_reason": text("why it was denied or cancelled, or the approving comment"),
    "override_reason": nullable(text("why a window outside maintenance windows is allowed")),
    "revision": {"type": "integer", "description": "bumped by every change of content"},
    "required_roles": strings("the roles that must approve (two people for critical devices)"),
    "missing_roles": strings("the roles still to approve the current content (pending only)"),
    "approvals": {"type": "array", "items": ref("Approval")},
    "created_at": TIME,
    "updated_at": nullable(TIME),
}
REQUEST: Schema = obj(_REQUEST_PROPERTIES)
DEVICE_CONTEXT: Schema = obj(
    {
        "name": text(),
        "criticality": text(),
        "location": text(),
        "segment": text(),
        "manufacturer": text(),
        "model": text(),
        "firmware": text(),
        "asset_tag": text(),
        "services": strings("NAME:PORT"),
        "maintenance": strings("the device's maintenance windows, described"),
        "coverage": obj(
            {
                "covered": {"type": "boolean"},
                "message": text(),
                "gap_start": nullable(TIME),
                "gap_end": nullable(TIME),
            }
        ),
        "past_sessions": {
            "type": "array",
            "items": obj(
                {
                    "id": text(),
                    "kind": text(),
                    "started_at": TIME,
                    "ended_at": nullable(TIME),
                    "end_reason": nullable(text()),
                }
            ),
        },
    }
)
REQUEST_DETAIL: Schema = obj(
    {
        **_REQUEST_PROPERTIES,
        "context": {
            "type": "array",
            "items": ref("DeviceContext"),
            "description": "each device's criticality, place, maintenance windows, whether"
            " the window fits them, and the vendor user's past sessions on it",
        },
        "binding": text("SHA-256 of the content an approval now binds"),
        "grant_ids": {"type": "array", "items": {"type": "integer"}},
    }
)
SCHEMAS: dict[str, Schema] = {
    "Approval": APPROVAL,
    "Request": REQUEST,
    "RequestDetail": REQUEST_DETAIL,
    "DeviceContext": DEVICE_CONTEXT,
    "RequestList": obj({"requests": {"type": "array", "items": ref("Request")}}),
    "Approved": obj(
        {
            "request": ref("Request"),
            "grant": nullable(ref("Grant")),
        }
    ),
}


# --- to JSON ---------------------------------------------------------------------------------


def _approval_json(approval: Approval, current: str) -> dict[str, Any]:
    return {
        "approver": approval.approver,
        "role": approval.role,
        "decision": approval.decision,
        "comment": approval.comment,
        "decided_at": stamp(approval.decided_at),
        "current": approval.binding == current,
    }


def request_json(summary: requests_view.RequestSummary) -> dict[str, Any]:
    req = summary.request
    current = workflow.current_binding(req, summary.vendor_login)
    pending = req.status is RequestStatus.PENDING
    return {
        "id": req.id,
        "status": str(req.status),
        "ticket": req.ticket_ref,
        "vendor_login": summary.vendor_login,
        "vendor_name": summary.vendor_name,
        "filed_by": req.filed_by,
        "devices": sorted(d.name for d in req.devices),
        "services": list(req.services),
        "start": stamp(req.window_start),
        "end": stamp(req.window_end),
        "recurrence": recurrence(req.recurrence),
        "schedule": schedule(req.recurrence),
        "reason": req.reason,
        "decision_reason": req.decision_reason,
        "override_reason": req.override_reason,
        "revision": req.revision,
        "required_roles": sorted(summary.required_roles),
        "missing_roles": sorted(summary.missing_roles) if pending else [],
        "approvals": [
            _approval_json(a, current) for a in sorted(req.approvals, key=lambda a: a.decided_at)
        ],
        "created_at": stamp(req.created_at),
        "updated_at": maybe_stamp(req.updated_at),
    }


def _context_json(device: requests_view.DeviceContext) -> dict[str, Any]:
    gap = device.coverage.gap
    return {
        "name": device.name,
        "criticality": device.criticality,
        "location": device.location,
        "segment": device.segment,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "firmware": device.firmware,
        "asset_tag": device.asset_tag,
        "services": device.services,
        "maintenance": device.maintenance,
        "coverage": {
            "covered": device.coverage.covered,
            "message": device.coverage.message,
            "gap_start": stamp(gap[0]) if gap else None,
            "gap_end": stamp(gap[1]) if gap else None,
        },
        "past_sessions": [
            {
                "id": s.id,
                "kind": s.kind,
                "started_at": stamp(s.started_at),
                "ended_at": maybe_stamp(s.ended_at),
                "end_reason": s.end_reason,
            }
            for s in device.past_sessions
        ],
    }


def detail_json(detail: requests_view.RequestDetail) -> dict[str, Any]:
    summary = requests_view.RequestSummary(
        detail.request,
        detail.vendor_login,
        detail.vendor_name,
        detail.required_roles,
        detail.missing_roles,
    )
    return {
        **request_json(summary),
        "context": [_context_json(d) for d in detail.devices],
        "binding": detail.binding,
        "grant_ids": sorted(g.id for g in detail.grants),
    }
