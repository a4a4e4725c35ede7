"""Typed command lines rebuilt from asciicast input events, and the report's escaping."""

from __future__ import annotations

import json

from recorder.report import render_report, typed_lines


def cast(*typed: str) -> bytes:
    lines = [json.dumps({"version": 2, "width": 80, "height": 24})]
    lines += [json.dumps([0.1 * n, "i", text]) for n, text in enumerate(typed)]
    lines.append(json.dumps([9.0, "o", "ignored output\r\n"]))
    return ("\n".join(lines) + "\n").encode()


def test_enter_ends_lines_and_edits_apply() -> None:
    data = cast("ls -l", "\r", "cta\x7f\x7fat /etc/x\r", "rm -rf /\x15echo safe\r")
    assert typed_lines(data) == ["ls -l", "cat /etc/x", "echo safe"]


def test_ctrl_c_cursor_keys_tab_and_unfinished_lines_are_marked() -> None:
    data = cast("sleep 100\x03", "\x1b[A\r", "cd /va\t\r", "reboot")
    assert typed_lines(data) == [
        "sleep 100  ^C",
        "  [edited with cursor/history keys]",
        "cd /va\u21e5  [edited with cursor/history keys]",
        "reboot  [no Enter]",
    ]


def test_not_a_recording_gives_no_lines() -> None:
    assert typed_lines(b"garbage") == []


def test_report_escapes_everything() -> None:
    page = render_report(
        scope={"kind": "ticket", "value": "<b>CHG</b>"},
        created_at="2026-11-23T00:00:00.000000Z",
        key_id="k" * 64,
        sessions=[],
        grants=[],
        events=[
            {
                "id": 1,
                "at": "t",
                "tag": "broker:login:fail",
                "actor": "<img src=x>",
                "device": None,
                "session_id": None,
                "detail": {"u": "\"'><script>"},
            }
        ],
        commands={},
        audit={"first_event": 1, "last_event": 1},
        warnings=["<i>warn</i>"],
    )
    assert "<b>CHG" not in page and "<img" not in page and "<script>" not in page
    assert "&lt;b&gt;CHG&lt;/b&gt;" in page and "&lt;i&gt;warn&lt;/i&gt;" in page
