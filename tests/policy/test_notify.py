"""Notifications against real receivers: an aiosmtpd SMTP server and an aiohttp webhook
endpoint on loopback, with the real audit log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as SmtpSession
from multidict import CIMultiDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from policy import admin
from policy.config import Settings
from policy.errors import ConfigError
from policy.models import AccessRequest, AuditEvent, Device, RequestStatus, Session
from policy.notify import Notifier, request_payload, session_payload, subject
from policy.vault import Vault
from recorder.audit import AuditLog

Sessions = async_sessionmaker[AsyncSession]
SECRET = "hook-secret-42"


# -- receivers -----------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook endpoint: answers with ``statuses`` in turn (then 200); with ``hang``
    it holds each request until ``release`` is set."""

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""  # set while serving

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(request.path, request.headers.copy(), await request.read()))
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    """Run ``receiver`` on 127.0.0.1; yields its base URL."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield receiver.url
    finally:
        receiver.release.set()
        await runner.cleanup()


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message and refuses the ``refuse`` addresses."""

    refuse: set[str] = field(default_factory=set)
    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"relay-pass")

    def message(self, index: int = 0) -> Message:
        content = self.envelopes[index].content
        assert isinstance(content, bytes)
        return message_from_bytes(content, policy=default_policy)


@pytest.fixture
async def mailbox() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            box, hostname="mail.test", authenticator=box.authenticate, auth_require_tls=False
        ),
        "127.0.0.1",
        0,
    )
    yield box, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def audit(db: Sessions) -> AuditLog:
    return AuditLog(db)


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def notifier(settings: Settings, audit: AuditLog, **tuning: Any) -> Notifier:
    tuning.setdefault("backoff", 0.01)
    return Notifier.from_settings(settings, audit, **tuning)


async def notify_events(db: Sessions) -> list[AuditEvent]:
    async with db() as s:
        rows = await s.scalars(
            select(AuditEvent).where(AuditEvent.tag.like("notify:%")).order_by(AuditEvent.id)
        )
        return list(rows)


def a_request() -> AccessRequest:
    return AccessRequest(
        id=41,
        vendor_user_id=7,
        ticket_ref="CHG1234",
        reason="firmware 11.2",
        services=["ssh"],
        window_start=datetime(2030, 5, 1, 8, 0, tzinfo=UTC),
        window_end=datetime(2030, 5, 1, 12, 0, tzinfo=UTC),
        status=RequestStatus.APPROVED,
        filed_by="vendor:vendor1",
        revision=2,
        decision_reason="",
        devices=[Device(name="pump-12"), Device(name="pump-13")],
    )


def a_session() -> Session:
    return Session(
        id="a" * 32,
        vendor_user_id=7,
        device_id=3,
        grant_id=5,
        ticket_ref="CHG1234",
        kind="exec",
        client_address="10.0.0.8:50000",
        gateway_node="gw-1",
        started_at=datetime(2030, 5, 1, 8, 5, tzinfo=UTC),
        ended_at=datetime(2030, 5, 1, 8, 9, tzinfo=UTC),
        end_reason="exit",
        exit_status=0,
        bytes_from_vendor=10,
        bytes_from_device=2000,
    )


# -- email ---------------------------------------------------------------------------------


async def test_email_goes_to_staff_and_the_extra_address(
    settings: Settings, audit: AuditLog, mailbox: tuple[Mailbox, int], db: Sessions
) -> None:
    box, port = mailbox
    settings = replace(
        settings,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=port,
        notify_from="sallyport@hospital.example",
        notify_email_to=("biomed@hospital.example", "security@hospital.example"),
    )
    n = notifier(settings, audit)
    n.start()
    n.emit(
        "request.approved",
        request_payload(a_request(), actor="biomed1"),
        email_to=["eng@vendor.example", "Biomed@hospital.example"],  # the second: a duplicate
    )
    await n.close()

    (envelope,) = box.envelopes
    assert envelope.mail_from == "sallyport@hospital.example"
    assert envelope.rcpt_tos == [
        "biomed@hospital.example",
        "security@hospital.example",
        "eng@vendor.example",
    ]
    mail = box.message()
    assert mail["Subject"] == "[sallyport] request CHG1234 approved (vendor1: pump-12, pump-13)"
    assert "hospital.example" not in mail["To"]  # the vendor does not see the staff list
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    for line in (
        "event: request.approved",
        "ticket: CHG1234",
        "devices: pump-12, pump-13",
        "actor: biomed1",
        "window_start: 2030-05-01T08:00:00+00:00",
    ):
        assert line in text.splitlines()
    assert await notify_events(db) == []


async def test_smtp_login_is_used_when_configured(
    settings: Settings, audit: AuditLog, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    settings = replace(
        settings,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=port,
        notify_smtp_user="relay",
        notify_smtp_password="relay-pass",
        notify_email_to=("soc@hospital.example",),
    )
    n = notifier(settings, audit)
    n.start()
    n.emit("session.started", session_payload(a_session(), "vendor1", "pump-12"))
    await n.close()

    assert box.logins == [(b"relay", b"relay-pass")]
    assert box.message()["Subject"] == "[sallyport] session started: vendor1 on pump-12 (CHG1234)"
    assert box.message()["To"] == "soc@hospital.example"


async def test_refused_recipient_is_audited_and_the_others_get_the_mail(
    settings: Settings, audit: AuditLog, mailbox: tuple[Mailbox, int], db: Sessions
) -> None:
    box, port = mailbox
    box.refuse.add("gone@hospital.example")
    settings = replace(
        settings,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=port,
        notify_email_to=("gone@hospital.example", "soc@hospital.example"),
    )
    n = notifier(settings, audit)
    n.start()
    n.emit("request.denied", request_payload(a_request(), actor="security1"))
    await n.close()

    assert [e.rcpt_tos for e in box.envelopes] == [["soc@hospital.example"]]
    (event,) = await notify_events(db)
    assert event.tag == "notify:email:failed"
    assert event.request_id == 41
    assert event.detail["target"] == "gone@hospital.example"
    assert event.detail["error"].startswith("refused: 550")
    assert event.detail["notify_event"] == "request.denied"


async def test_unreachable_smtp_server_is_audited_after_three_attempts(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    settings = replace(
        settings,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=closed_port(),
        notify_email_to=("soc@hospital.example",),
    )
    n = notifier(settings, audit)
    n.start()
    with capture_logs() as logs:
        n.emit("session.ended", session_payload(a_session(), "vendor1", "pump-12"))
        await n.close()

    (event,) = await notify_events(db)
    assert event.tag == "notify:email:failed"
    assert event.session_id == "a" * 32
    assert event.detail["target"] == "soc@hospital.example"
    assert event.detail["attempts"] == 3
    assert event.detail["error"]
    assert any(e["event"] == "notification failed" and e["kind"] == "email" for e in logs)


# -- webhooks ------------------------------------------------------------------------------


async def test_webhook_gets_the_event_as_signed_json(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    receiver = Receiver()
    async with serving(receiver) as url:
        settings = replace(
            settings,
            notify_webhooks=(f"{url}/siem", f"{url}/chat/T123/secret-path"),
            notify_webhook_secret=SECRET,
        )
        n = notifier(settings, audit)
        n.start()
        payload = session_payload(a_session(), "vendor1", "pump-12")
        n.emit("session.ended", payload)
        payload["device"] = "changed-after-emit"  # what was emitted is what is sent
        await n.close()

    assert sorted(hit.path for hit in receiver.hits) == ["/chat/T123/secret-path", "/siem"]
    for hit in receiver.hits:
        body = hit.json()
        assert body["event"] == "session.ended"
        assert datetime.fromisoformat(body["at"]).utcoffset() == UTC.utcoffset(None)
        assert body["data"] == {**payload, "device": "pump-12"}
        assert body["data"]["ended_at"] == "2030-05-01T08:09:00+00:00"
        expected = hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hit.headers["X-Sallyport-Signature"] == f"sha256={expected}"
        assert hit.headers["X-Sallyport-Event"] == "session.ended"
        assert hit.headers["Content-Type"] == "application/json"
    assert await notify_events(db) == []


async def test_webhook_without_a_secret_is_not_signed(settings: Settings, audit: AuditLog) -> None:
    receiver = Receiver()
    async with serving(receiver) as url:
        n = notifier(replace(settings, notify_webhooks=(url,)), audit)
        n.start()
        n.emit("request.filed", request_payload(a_request()))
        await n.close()

    (hit,) = receiver.hits
    assert "X-Sallyport-Signature" not in hit.headers
    assert hit.json()["data"]["vendor"] == "vendor1"  # read from filed_by


async def test_webhook_is_retried_after_a_server_error(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    receiver = Receiver(statuses=[500, 503])
    async with serving(receiver) as url:
        n = notifier(replace(settings, notify_webhooks=(url,)), audit)
        n.start()
        n.emit("grant.revoked", {"ticket": "CHG1234", "grant_id": 5})
        await n.close()

    assert len(receiver.hits) == 3
    assert len({hit.body for hit in receiver.hits}) == 1  # the same event each time
    assert await notify_events(db) == []


async def test_webhook_client_error_is_not_retried_and_is_audited(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    receiver = Receiver(statuses=[404])
    async with serving(receiver) as url:
        n = notifier(replace(settings, notify_webhooks=(f"{url}/T1/hook-token?k=v",)), audit)
        n.start()
        n.emit("request.cancelled", request_payload(a_request()))
        await n.close()

    assert len(receiver.hits) == 1
    (event,) = await notify_events(db)
    assert event.tag == "notify:webhook:failed"
    assert event.detail["error"] == "HTTP 404"
    assert event.detail["attempts"] == 1
    assert event.detail["target"] == url  # the path and query (often the secret) are left out
    assert "hook-token" not in json.dumps(event.detail)


async def test_unreachable_webhook_is_audited_and_never_raised(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    n = notifier(replace(settings, notify_webhooks=(url,)), audit)
    n.start()
    with capture_logs() as logs:
        n.emit("session.started", session_payload(a_session(), "vendor1", "pump-12"))
        await n.close()

    (event,) = await notify_events(db)
    assert event.tag == "notify:webhook:failed"
    assert event.actor == "notify"
    assert event.session_id == "a" * 32
    assert event.detail["target"] == url.removesuffix("/hook")
    assert event.detail["attempts"] == 3
    assert event.detail["webhook"] == 1
    assert event.detail["notify_event"] == "session.started"
    assert "Connect" in event.detail["error"]
    attempts = [e for e in logs if e["event"] == "notification attempt failed"]
    assert [e["attempt"] for e in attempts] == [1, 2]


# -- lifecycle -----------------------------------------------------------------------------


async def test_unconfigured_notifier_does_nothing(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    n = Notifier.from_settings(settings, audit)
    before = asyncio.all_tasks()
    n.start()
    n.emit("session.started", session_payload(a_session(), "vendor1", "pump-12"))
    assert not n.enabled
    assert n.pending == 0
    assert asyncio.all_tasks() == before  # no worker
    await n.close()
    assert await notify_events(db) == []


async def test_full_queue_drops_with_a_warning_and_an_audit_event(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    receiver = Receiver()
    async with serving(receiver) as url:
        n = notifier(replace(settings, notify_webhooks=(url,)), audit, queue_size=2)
        with capture_logs() as logs:
            for number in range(5):  # no worker yet: nothing leaves the queue
                n.emit("grant.revoked", {"grant_id": number})
        assert n.pending == 2
        n.start()
        await n.close()

    assert [hit.json()["data"]["grant_id"] for hit in receiver.hits] == [0, 1]
    warnings = [e for e in logs if e["event"] == "notification queue full: event dropped"]
    assert len(warnings) == 3 and all(e["log_level"] == "warning" for e in warnings)
    (event,) = await notify_events(db)
    assert event.tag == "notify:event:dropped"
    assert event.detail == {"reason": "queue-full", "count": 3, "events": {"grant.revoked": 3}}


async def test_close_gives_up_after_its_timeout_and_audits_what_was_left(
    settings: Settings, audit: AuditLog, db: Sessions
) -> None:
    receiver = Receiver(hang=True)
    async with serving(receiver) as url:
        n = notifier(replace(settings, notify_webhooks=(url,)), audit)
        n.start()
        n.emit("session.started", {"session_id": "b" * 32})
        n.emit("session.ended", {"session_id": "b" * 32})
        while not receiver.hits:  # the first event is at the receiver, held there
            await asyncio.sleep(0.01)
        await n.close(within=0.2)
        n.emit("session.started", {"session_id": "c" * 32})  # after close: dropped, no error

    assert len(receiver.hits) == 1
    (event,) = await notify_events(db)
    assert event.tag == "notify:event:dropped"
    assert event.detail["reason"] == "shutdown"
    assert event.detail["events"] == {"session.started": 1, "session.ended": 1}


async def test_unknown_event_and_bad_webhook_url_are_refused(
    settings: Settings, audit: AuditLog
) -> None:
    n = Notifier.from_settings(settings, audit)
    with pytest.raises(ValueError, match="unknown notification event"):
        n.emit("session.exploded", {})
    with pytest.raises(ConfigError, match="not an http"):
        Notifier.from_settings(replace(settings, notify_webhooks=("ftp://x/y",)), audit)
    with pytest.raises(ConfigError, match="not an address"):
        Notifier.from_settings(
            replace(settings, notify_smtp_host="127.0.0.1", notify_from="nobody"), audit
        )


# -- payloads and subjects -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("request.filed", "request CHG1234 filed (vendor1: pump-12, pump-13)"),
        ("request.cancelled", "request CHG1234 cancelled (vendor1: pump-12, pump-13)"),
        ("grant.revoked", "grant CHG1234 revoked (vendor1: pump-12, pump-13)"),
        ("session.ended", "session ended: vendor1 on pump-12 (CHG1234, exit)"),
    ],
)
def test_subjects_name_ticket_vendor_and_devices(event: str, expected: str) -> None:
    data = request_payload(a_request()) | session_payload(a_session(), "vendor1", "pump-12")
    assert subject(event, data) == f"[sallyport] {expected}"


def test_subject_keeps_line_breaks_out_of_the_header() -> None:
    data = {"ticket": "CHG1\r\nBcc: x@evil.example", "vendor": "v", "devices": ["d"]}
    assert "\n" not in subject("request.filed", data) and "\r" not in subject("request.filed", data)


async def test_request_payload_needs_the_devices_loaded(
    db: Sessions, vault: Vault, settings: Settings
) -> None:
    async with db() as s:
        await admin.add_vendor(s, "Infusia Medical")
        user, _secret = await admin.add_vendor_user(
            s, vault, login="vendor1", vendor="Infusia Medical", password="a long passphrase"
        )
        req = a_request()
        req.vendor_user_id, req.devices = user.id, []
        s.add(req)
        await s.commit()
    async with db() as s:
        stored = await s.get(AccessRequest, 41)
        assert stored is not None
        with pytest.raises(ValueError, match=r"load AccessRequest\.devices"):
            request_payload(stored)
