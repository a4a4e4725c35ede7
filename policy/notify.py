"""Notifications: email (SMTP) and webhooks for workflow and session events.

People learn of requests, decisions, revocations and sessions as they happen instead of
reading the portal; a SIEM or a ticketing system gets the same events as signed JSON.

Delivery must never slow or break what caused it (a login, a session, an approval), so
``Notifier.emit`` only puts the event on a bounded queue and returns. One worker task
delivers the events in order (a receiver sees ``session.started`` before
``session.ended``), each target with bounded retries and timeouts. A delivery that still
fails, and an event dropped because the queue was full or the process stopped first, is
logged and recorded as an audit event; it is never raised to the caller. Notifications
are a courtesy, not evidence: the audit chain already holds every event they report.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
import structlog
from sqlalchemy import inspect

from policy.actor import AuditSink
from policy.config import Settings
from policy.errors import ConfigError
from policy.models import AccessRequest, Grant, Session, utcnow

log = structlog.get_logger("notify")

EVENTS = frozenset(
    {
        "request.filed",
        "request.edited",
        "request.approved",
        "request.denied",
        "request.cancelled",
        "grant.revoked",
        "session.started",
        "session.ended",
    }
)
SIGNATURE_HEADER = "X-Sallyport-Signature"
EVENT_HEADER = "X-Sallyport-Event"
ACTOR = "notify"  # the audit actor of delivery failures and drops
IMPLICIT_TLS_PORT = 465  # SMTPS: TLS from the first byte, not STARTTLS
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")  # no whitespace: no SMTP command injection
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


# -- payloads: what an event says, shared by the gateway and the web tier -----------------


def request_payload(
    req: AccessRequest, *, vendor_login: str = "", actor: str = ""
) -> dict[str, Any]:
    """An access request as event data. ``req.devices`` must be loaded (selectinload);
    ``actor`` is who acted (filed, approved, denied, cancelled). Without
    ``vendor_login`` the vendor is read from ``filed_by`` when a vendor filed it."""
    if not vendor_login and req.filed_by.startswith("vendor:"):
        vendor_login = req.filed_by.removeprefix("vendor:")
    return {
        "request_id": req.id,
        "ticket": req.ticket_ref,
        "status": str(req.status) if req.status is not None else None,
        "vendor": vendor_login,
        "filed_by": req.filed_by,
        "actor": actor,
        "devices": _device_names(req, req.devices if _loaded(req, "devices") else None),
        "services": list(req.services or []),
        "window_start": _iso(req.window_start),
        "window_end": _iso(req.window_end),
        "recurrence": req.recurrence,
        "reason": req.reason,
        "decision_reason": req.decision_reason,
        "revision": req.revision,
    }


def grant_payload(grant: Grant, vendor_login: str) -> dict[str, Any]:
    """A grant as event data (for ``grant.revoked``). ``grant.devices`` must be loaded."""
    return {
        "grant_id": grant.id,
        "request_id": grant.request_id,
        "ticket": grant.ticket_ref,
        "vendor": vendor_login,
        "devices": _device_names(grant, grant.devices if _loaded(grant, "devices") else None),
        "services": list(grant.services or []),
        "window_start": _iso(grant.window_start),
        "window_end": _iso(grant.window_end),
        "revoked_at": _iso(grant.revoked_at),
        "revoked_by": grant.revoked_by,
        "revoke_reason": grant.revoke_reason,
    }


def session_payload(session: Session, vendor_login: str, device: str) -> dict[str, Any]:
    """A gateway session as event data. The command line is left out on purpose: it is in
    the recording, and webhooks often end in chat rooms."""
    return {
        "session_id": session.id,
        "vendor": vendor_login,
        "device": device,
        "ticket": session.ticket_ref,
        "grant_id": session.grant_id,
        "kind": session.kind,
        "client_address": session.client_address,
        "gateway_node": session.gateway_node,
        "started_at": _iso(session.started_at),
        "ended_at": _iso(session.ended_at),
        "end_reason": session.end_reason,
        "exit_status": session.exit_status,
        "bytes_from_vendor": session.bytes_from_vendor,
        "bytes_from_device": session.bytes_from_device,
    }


def _loaded(obj: object, attr: str) -> bool:
    state = inspect(obj)
    return attr not in state.unloaded or not state.has_identity  # a new object loads nothing


def _device_names(owner: object, devices: Sequence[Any] | None) -> list[str]:
    """Lazy loading is not possible here (async session, maybe closed): fail loudly at the
    caller rather than send an event that silently names no devices."""
    if devices is None:
        raise ValueError(f"load {type(owner).__name__}.devices before building its payload")
    return [d.name for d in devices]


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


# -- the notifier ----------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    starttls: bool
    user: str
    password: str
    sender: str
    staff: tuple[str, ...]


@dataclass(frozen=True)
class Notice:
    """One event as queued: its data already made JSON-safe and its body already
    serialized, so later changes to the caller's objects do not change what is sent."""

    event: str
    at: datetime
    data: dict[str, Any]
    body: bytes
    email_to: tuple[str, ...]

    @property
    def session_id(self) -> str | None:
        value = self.data.get("session_id")
        return value if isinstance(value, str) else None

    @property
    def request_id(self) -> int | None:
        value = self.data.get("request_id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class DeliveryError(Exception):
    """A failed attempt; ``retry`` says whether another attempt could succeed."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Notifier:
    """Queues events (``emit``) and delivers them from one worker task (``start`` /
    ``close``); with neither an SMTP host nor a webhook it does nothing at all."""

    def __init__(
        self,
        *,
        smtp: SmtpConfig | None = None,
        webhooks: Sequence[str] = (),
        webhook_secret: str = "",
        audit: AuditSink | None = None,
        queue_size: int = 1000,
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``backoff`` is the pause before the second attempt, doubled for each later one;
        ``timeout`` bounds each attempt (connect, send and answer)."""
        for url in webhooks:
            _check_url(url)
        self._smtp = smtp
        self._webhooks = tuple(webhooks)
        self._secret = webhook_secret.encode()
        self._audit = audit
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._timeout = timeout
        self._clock = clock
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=queue_size)
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: Notice | None = None
        self._dropped: dict[str, Counter[str]] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditSink | None, **tuning: Any) -> Notifier:
        """The notifier the settings describe; ``tuning`` passes queue size, retries,
        timeouts or a clock through to the constructor."""
        smtp = None
        if settings.notify_email_to and not settings.notify_smtp_host:
            log.warning("notify.email_to is set but notify.smtp_host is not: no email is sent")
        if settings.notify_smtp_host:
            if not _ADDRESS.match(settings.notify_from):
                raise ConfigError(
                    "config-invalid", f"notify.from: {settings.notify_from!r} is not an address"
                )
            smtp = SmtpConfig(
                host=settings.notify_smtp_host,
                port=settings.notify_smtp_port,
                starttls=settings.notify_smtp_starttls,
                user=settings.notify_smtp_user,
                password=settings.notify_smtp_password,
                sender=settings.notify_from,
                staff=settings.notify_email_to,
            )
        return cls(
            smtp=smtp,
            webhooks=settings.notify_webhooks,
            webhook_secret=settings.notify_webhook_secret,
            audit=audit,
            **tuning,
        )

    @property
    def enabled(self) -> bool:
        return self._smtp is not None or bool(self._webhooks)

    @property
    def pending(self) -> int:
        """Events queued and not yet taken by the worker."""
        return self._queue.qsize()

    def emit(self, event: str, payload: Mapping[str, Any], *, email_to: Sequence[str] = ()) -> None:
        """Queue ``event`` for delivery and return at once. ``email_to`` adds addresses
        (the vendor user's own, say) to the staff list for this event only."""
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}")
        if not self.enabled:
            return
        if self._closed:
            log.warning("notification after shutdown dropped", notify_event=event)
            return
        if isinstance(email_to, str):  # one address, not a sequence of letters
            email_to = (email_to,)
        notice = self._notice(event, payload, email_to)
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            log.warning("notification queue full: event dropped", notify_event=event)
            self._drop("queue-full", event)

    def start(self) -> None:
        """Start the delivery worker (in the running loop); nothing to do when disabled."""
        if self.enabled and self._worker is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._worker = loop.create_task(self._run(), name="notify")

    async def close(self, within: float = 10.0) -> None:
        """Deliver what is queued (waiting at most ``within`` seconds), then stop. Events
        left undelivered are counted as dropped and audited."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            try:
                async with asyncio.timeout(within):
                    await self._queue.join()
            except TimeoutError:
                log.warning("notifications still queued at shutdown", left=self.pending)
            self._worker.cancel()
            await asyncio.wait([self._worker])
        if self._in_flight is not None:
            self._drop("shutdown", self._in_flight.event)
        while not self._queue.empty():
            self._drop("shutdown", self._queue.get_nowait().event)
        await self._report_drops()

    # -- queueing ------------------------------------------------------------------------

    def _notice(self, event: str, payload: Mapping[str, Any], extra: Sequence[str]) -> Notice:
        at = self._clock()
        data = _json_safe(payload)
        assert isinstance(data, dict)
        body = json.dumps(
            {"event": event, "at": _iso(at), "data": data}, separators=(",", ":")
        ).encode()
        return Notice(event, at, data, body, tuple(extra))

    def _drop(self, reason: str, event: str) -> None:
        self._dropped.setdefault(reason, Counter())[event] += 1

    async def _report_drops(self) -> None:
        """One audit event per reason for everything dropped since the last report (not
        one per event: a flood must not turn into a flood of audit writes)."""
        dropped, self._dropped = self._dropped, {}
        for reason, events in dropped.items():
            log.warning("notifications dropped", reason=reason, count=events.total())
            await self._record(
                "notify:event:dropped",
                None,
                reason=reason,
                count=events.total(),
                events=dict(events),
            )

    # -- the worker ----------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                notice = await self._queue.get()
                self._in_flight = notice
                try:
                    await self._deliver(http, notice)
                except Exception:  # the worker outlives any one event
                    log.exception("notification delivery crashed", notify_event=notice.event)
                finally:
                    self._queue.task_done()
                self._in_flight = None  # not on cancel: close() counts it as undelivered
                await self._report_drops()

    async def _deliver(self, http: aiohttp.ClientSession, notice: Notice) -> None:
        """Every target of one event at once; the next event waits for all of them, which
        keeps each receiver's events in order."""
        recipients = self._recipients(notice)
        async with asyncio.TaskGroup() as group:
            if self._smtp is not None and recipients:
                group.create_task(self._email(self._smtp, notice, recipients))
            for number, url in enumerate(self._webhooks, start=1):
                group.create_task(self._webhook(http, number, url, notice))

    def _recipients(self, notice: Notice) -> list[str]:
        if self._smtp is None:
            return []
        out: list[str] = []
        for address in (*self._smtp.staff, *notice.email_to):
            address = address.strip()
            if not _ADDRESS.match(address):
                log.warning("notification address skipped", address=address[:100])
            elif address.lower() not in (a.lower() for a in out):
                out.append(address)
        return out

    async def _email(self, smtp: SmtpConfig, notice: Notice, recipients: list[str]) -> None:
        target = ", ".join(recipients)
        refused: dict[str, aiosmtplib.SMTPResponse] = {}

        async def send() -> None:
            nonlocal refused
            message = render_email(notice, smtp.sender, recipients)
            refused = await self._smtp_send(smtp, message, recipients)

        attempts, error = await self._retrying(send, "email", notice, target)
        if error is not None:
            await self._failed("email", notice, target, error, attempts)
            return
        for address, response in refused.items():
            error = f"refused: {response.code} {response.message}"
            await self._failed("email", notice, address, error, attempts)

    async def _smtp_send(
        self, smtp: SmtpConfig, message: EmailMessage, recipients: list[str]
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send once; returns the recipients the server refused while accepting others."""
        implicit = smtp.port == IMPLICIT_TLS_PORT
        try:
            refused, _reply = await aiosmtplib.send(
                message,
                sender=smtp.sender,
                recipients=recipients,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.user or None,
                password=smtp.password or None,
                use_tls=implicit,
                start_tls=smtp.starttls and not implicit,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"every recipient refused: {exc}", retry=False) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx is the server asking to try later; 5xx will not change on a retry
            raise DeliveryError(f"{exc.code} {exc.message}", retry=exc.code < 500) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(_describe(exc), retry=True) from None
        return refused

    async def _webhook(
        self, http: aiohttp.ClientSession, number: int, url: str, notice: Notice
    ) -> None:
        target = webhook_origin(url)
        attempts, error = await self._retrying(
            lambda: self._post(http, url, notice), "webhook", notice, target
        )
        if error is not None:
            await self._failed("webhook", notice, target, error, attempts, webhook=number)

    async def _post(self, http: aiohttp.ClientSession, url: str, notice: Notice) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "sallyport",
            EVENT_HEADER: notice.event,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, notice.body)
        try:
            async with http.post(
                url, data=notice.body, headers=headers, allow_redirects=False
            ) as response:
                if response.status < 300:
                    return
                retry = response.status >= 500 or response.status in (408, 429)
                raise DeliveryError(f"HTTP {response.status}", retry=retry)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(_describe(exc), retry=True) from None

    async def _retrying(
        self, send: Callable[[], Awaitable[None]], kind: str, notice: Notice, target: str
    ) -> tuple[int, str | None]:
        """Up to ``attempts`` tries with a doubling pause; returns (tries, final error)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await send()
            except DeliveryError as exc:
                error = str(exc)
                if not exc.retry or attempt >= self._attempts:
                    return attempt, error
                log.info(
                    "notification attempt failed",
                    kind=kind,
                    notify_event=notice.event,
                    target=target,
                    attempt=attempt,
                    error=error,
                )
            except Exception as exc:  # a bug here must not stop later deliveries
                log.exception("notification delivery crashed", kind=kind, target=target)
                return attempt, _describe(exc)
            else:
                log.debug("notification delivered", kind=kind, target=target, attempt=attempt)
                return attempt, None
            await asyncio.sleep(self._backoff * 2 ** (attempt - 1))

    async def _failed(
        self, kind: str, notice: Notice, target: str, error: str, attempts: int, **extra: Any
    ) -> None:
        log.error(
            "notification failed",
            kind=kind,
            notify_event=notice.event,
            target=target,
            error=error,
            attempts=attempts,
        )
        await self._record(
            f"notify:{kind}:failed",
            notice,
            notify_event=notice.event,
            target=target,
            error=error,
            attempts=attempts,
            **extra,
        )

    async def _record(self, tag: str, notice: Notice | None, **detail: Any) -> None:
        if self._audit is None:
            return
        try:
            await self._audit.record(
                tag,
                actor=ACTOR,
                session_id=notice.session_id if notice else None,
                request_id=notice.request_id if notice else None,
                **detail,
            )
        except Exception:
            log.exception("audit of a notification failure failed", tag=tag)


# -- rendering ---------------------------------------------------------------------------

_VERBS = {
    "request.filed": "filed",
    "request.edited": "edited (earlier approvals no longer count)",
    "request.approved": "approved",
    "request.denied": "denied",
    "request.cancelled": "cancelled",
}


def subject(event: str, data: Mapping[str, Any]) -> str:
    """``[sallyport] request CHG1234 approved (vendor1: pump-12)`` and the like."""
    ticket = _text(data.get("ticket"))
    vendor = _text(data.get("vendor"))
    devices = ", ".join(_text(d) for d in data.get("devices") or []) or "-"
    if event in _VERBS:
        line = f"request {ticket} {_VERBS[event]} ({vendor}: {devices})"
    elif event == "grant.revoked":
        line = f"grant {ticket} revoked ({vendor}: {devices})"
    elif event == "session.started":
        line = f"session started: {vendor} on {_text(data.get('device'))} ({ticket})"
    else:
        reason = _text(data.get("end_reason"))
        line = f"session ended: {vendor} on {_text(data.get('device'))} ({ticket}, {reason})"
    return "[sallyport] " + _CONTROL.sub(" ", line)[:200]


def render_email(notice: Notice, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """A plain-text message. Several recipients are not shown to each other (the vendor
    does not learn the staff list): they go in the envelope only."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipients[0] if len(recipients) == 1 else "undisclosed-recipients:;"
    message["Subject"] = subject(notice.event, notice.data)
    message["Date"] = format_datetime(notice.at.astimezone(UTC))
    # an explicit domain: make_msgid would otherwise look up this host's FQDN (DNS)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "sallyport")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message[EVENT_HEADER] = notice.event
    lines = [subject(notice.event, notice.data).removeprefix("[sallyport] "), ""]
    lines += [f"event: {notice.event}", f"at: {_iso(notice.at)}"]
    lines += [f"{key}: {_text(value)}" for key, value in notice.data.items()]
    lines += ["", "-- ", "sent by sallyport"]
    message.set_content("\n".join(lines) + "\n")
    return message


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: receivers recompute it over the raw body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def webhook_origin(url: str) -> str:
    """How a webhook is named in logs and audit events: scheme, host and port only, since
    paths and queries of webhook URLs are often the secret (chat-room hooks)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "config-invalid", f"notify.webhooks: {webhook_origin(url)!r} is not an http(s) URL"
        )


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return _CONTROL.sub(" ", str(value))


def _json_safe(value: Any) -> Any:
    """A deep copy of ``value`` that ``json.dumps`` takes: times as ISO UTC, enums as
    their values, anything unknown as its text (a payload never makes emit raise)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _json_safe(value.value)
    if isinstance(value, datetime):
        return _iso(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
