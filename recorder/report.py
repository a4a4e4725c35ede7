"""``report.html`` of an evidence bundle: who, on what device, when, approved by whom, what
they typed, which files moved, how it ended. Self-contained (no scripts, no fetches);
every value is escaped.
"""

from __future__ import annotations

import html
import re
from typing import Any

from recorder.errors import RecorderError
from recorder.readers import parse

TRANSFER_TAG = "broker:transfer:file"
_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|[@-Z\\-_])")


def typed_lines(recording: bytes) -> list[str]:
    """Command lines reconstructed, roughly, from the keys a vendor typed (asciicast 'i'
    events): Enter ends a line, Backspace and Ctrl-U edit it, Ctrl-C abandons it. Cursor
    movement, tab completion and history recall are not replayed; such lines are marked.
    """
    try:
        parsed = parse(recording)
    except RecorderError:
        return []
    typed = parsed.input().decode("utf-8", "replace")
    lines: list[str] = []
    current: list[str] = []
    edited = False
    pos = 0
    while pos < len(typed):
        match = _ESCAPE.match(typed, pos)
        if match:  # arrow keys and the like: the line is not what we can rebuild
            edited = True
            pos = match.end()
            continue
        ch = typed[pos]
        pos += 1
        if ch in "\r\n":
            text = "".join(current)
            if text or edited:
                lines.append(text + ("  [edited with cursor/history keys]" if edited else ""))
            current, edited = [], False
        elif ch in "\x7f\x08":
            if current:
                current.pop()
        elif ch == "\x15":  # Ctrl-U
            current = []
        elif ch == "\x03":  # Ctrl-C
            if current:
                lines.append("".join(current) + "  ^C")
            current, edited = [], False
        elif ch == "\t":
            current.append("\u21e5")
            edited = True
        elif ch >= " ":
            current.append(ch)
    if current:
        lines.append("".join(current) + "  [no Enter]")
    return lines


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p class=none>none</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f"<table class=kv>{rows}</table>"


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#111}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:2px solid #333}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.2em .5em;
text-align:left;vertical-align:top}th{background:#eee}table.kv th{width:14em}
pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap}.none{color:#777}
.warn{color:#a00;font-weight:bold}code{font-size:.95em}
"""


def render_report(
    *,
    scope: dict[str, str],
    created_at: str,
    key_id: str,
    sessions: list[dict[str, Any]],
    grants: list[dict[str, Any]],
    events: list[dict[str, Any]],
    commands: dict[str, list[str]],
    audit: dict[str, Any],
    warnings: list[str],
) -> str:
    title = f"Evidence: {scope['kind']} {scope['value']}"
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
        _pairs(
            [
                ("exported", created_at),
                ("signing key id (SHA-256)", key_id),
                ("sessions", len(sessions)),
                ("audit slice", f"events {audit.get('first_event')}..{audit.get('last_event')}"),
            ]
        ),
        "<p>Check this bundle offline: <code>sallyport evidence verify BUNDLE.zip "
        "--public-key audit-public.pem</code> with the public key from a source you trust. "
        "This page is a summary; the signed files beside it are the evidence.</p>",
    ]
    parts += [f"<p class=warn>{_e(w)}</p>" for w in warnings]
    parts.append("<h2>Access</h2>")
    for grant in grants:
        parts.append(_grant(grant))
    parts.append("<h2>Sessions</h2>")
    for session in sessions:
        parts.append(_session(session, commands, events))
    parts.append("<h2>Audit events in scope</h2>")
    parts.append(
        _table(
            ["id", "time (UTC)", "tag", "actor", "device", "session", "detail"],
            [
                [
                    e["id"],
                    e["at"],
                    e["tag"],
                    e["actor"],
                    e["device"],
                    e["session_id"],
                    ", ".join(f"{k}={v}" for k, v in sorted(e["detail"].items())),
                ]
                for e in events
            ],
        )
    )
    parts.append("</body></html>\n")
    return "".join(parts)


def _grant(grant: dict[str, Any]) -> str:
    user = grant.get("vendor_user") or {}
    out = [
        f"<h3>Grant {_e(grant['id'])} for ticket {_e(grant['ticket_ref'])}</h3>",
        _pairs(
            [
                (
                    "vendor user",
                    f"{user.get('login')} ({user.get('display_name')}, {user.get('vendor')})",
                ),
                ("devices", ", ".join(grant["devices"])),
                ("services", ", ".join(grant["services"])),
                ("window (UTC)", f"{grant['window_start']} .. {grant['window_end']}"),
                ("approved by", grant["approved_by"]),
                (
                    "revoked",
                    grant.get("revoked_at")
                    and f"{grant['revoked_at']} by {grant.get('revoked_by')}: "
                    f"{grant.get('revoke_reason')}",
                ),
            ]
        ),
    ]
    request = grant.get("request")
    if request:
        out.append(f"<p>Request {_e(request['id'])}: {_e(request['reason'])}</p>")
        out.append(
            _table(
                ["approver", "role", "decision", "time (UTC)", "comment"],
                [
                    [a["approver"], a["role"], a["decision"], a["decided_at"], a["comment"]]
                    for a in request["approvals"]
                ],
            )
        )
    return "".join(out)


def _session(
    session: dict[str, Any], commands: dict[str, list[str]], events: list[dict[str, Any]]
) -> str:
    user = session.get("vendor_user") or {}
    device = session.get("device") or {}
    out = [
        f"<h3>Session {_e(session['id'])}</h3>",
        _pairs(
            [
                (
                    "vendor user",
                    f"{user.get('login')} ({user.get('display_name')}, {user.get('vendor')})",
                ),
                ("from", session["client_address"]),
                (
                    "device",
                    f"{device.get('name')} - {device.get('manufacturer')} "
                    f"{device.get('model')}, firmware {device.get('firmware')}",
                ),
                ("asset tag / location", f"{device.get('asset_tag')} / {device.get('location')}"),
                ("criticality / segment", f"{device.get('criticality')} / {device.get('segment')}"),
                ("device address", device.get("address")),
                ("device host key", device.get("host_key_fingerprint")),
                ("device record", session.get("device_snapshot_source")),
                ("ticket / grant", f"{session['ticket_ref']} / grant {session['grant_id']}"),
                ("kind / command", f"{session['kind']} {session.get('command') or ''}"),
                ("gateway node", session["gateway_node"]),
                ("started (UTC)", session["started_at"]),
                ("ended (UTC)", session["ended_at"]),
                ("end reason / exit status", f"{session['end_reason']} / {session['exit_status']}"),
            ]
        ),
    ]
    out.append("<h4>Recordings</h4>")
    out.append(
        _table(
            ["file", "format", "status", "size", "SHA-256"],
            [
                [
                    r.get("file") or r.get("missing") or "(not in bundle)",
                    r["format"],
                    r["status"],
                    r["size"],
                    r["sha256"],
                ]
                for r in session["recordings"]
            ],
        )
    )
    typed = [line for r in session["recordings"] for line in commands.get(r.get("file") or "", [])]
    out.append("<h4>Typed at the terminal (reconstructed)</h4>")
    if session.get("command"):
        out.append(f"<p>exec command: <code>{_e(session['command'])}</code></p>")
    out.append(f"<pre>{_e(chr(10).join(typed))}</pre>" if typed else "<p class=none>none</p>")
    moved = [e for e in events if e["tag"] == TRANSFER_TAG and e["session_id"] == session["id"]]
    out.append("<h4>Files moved</h4>")
    out.append(
        _table(
            ["time (UTC)", "detail"],
            [
                [e["at"], ", ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))]
                for e in moved
            ],
        )
    )
    return "".join(out)
