"""The session notice (policy/notice.py): ticket, recorded, window end in two zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from policy.notice import session_notice

NOW = datetime(2026, 12, 6, 11, 50, tzinfo=UTC)


def test_names_the_ticket_the_recording_and_the_end_in_utc() -> None:
    text = session_notice("CHG0001234", NOW + timedelta(hours=2, minutes=10), None, NOW)
    assert text == (
        "sallyport: this session is recorded and may be watched live. Ticket CHG0001234. "
        "Your access window ends 2026-12-06 14:00 UTC, in 2 h 10 min."
    )


def test_the_vendors_zone_first_when_known() -> None:
    text = session_notice("INC42", NOW + timedelta(days=1, minutes=5), "Europe/Berlin", NOW)
    assert "ends 2026-12-07 12:55 CET (11:55 UTC), in 1 d 5 min." in text


def test_an_unknown_zone_falls_back_to_utc_and_a_past_end_says_zero() -> None:
    text = session_notice("INC42", NOW - timedelta(minutes=1), "Mars/Olympus", NOW)
    assert text.endswith("ends 2026-12-06 11:49 UTC, in 0 min.")
    assert session_notice("INC42", None, None, NOW).endswith("Ticket INC42.")
