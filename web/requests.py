"""The vendor's pages: file, follow, edit and cancel access requests; how to connect.

* ``GET /requests``: the vendor user's requests, newest first, with their status (which
  approvals a pending one still waits for, why one was denied).
* ``GET|POST /requests/new``: the request form. ``GET /requests/{id}``: one request;
  ``GET|POST /requests/{id}/edit`` changes a pending one (which clears its approvals);
  ``POST /requests/{id}/cancel`` withdraws it.
* ``GET /connect``: for each live grant, the ``ssh``, ``ssh -J``, ``ssh -L`` and ``sftp``
  lines to copy, an ``~/.ssh/config`` snippet, the gateway's host key, and per device with
  an ``ssh`` service the link **Open terminal** (the browser terminal, ``web.terminal``).

The rules are ``policy.workflow``'s; the handlers turn form text into its input and its
refusals into the form again, with what was typed and the reason. Another vendor user's
request is "not found", never "forbidden", so request ids say nothing about other
organizations.

The device picker works without JavaScript: the form's "Search" button posts the whole
form with ``action=search`` and gets it back with the list filtered, every field as typed
and every ticked device still ticked (shown even when the search no longer matches it).
A GET with ``q`` (and ``device``, ``ticket``, ...) fills the form the same way, for links.
The search is not a GET of the form itself because that would put the CSRF token in the
address bar, the history and server logs.

Times: a one-off window is two ``datetime-local`` values in the chosen time zone; a weekly
window is days, from/to times and the zone (``policy.windows.Weekly``), from a first day
(today when empty) to the end of a last day. Both become aware UTC before the workflow
sees them. Form text the workflow never sees (an unreadable date, an unknown zone) is
refused and audited here as ``web:request:refused``; the workflow audits its own refusals.
"""

from __future__ import annotations

import functools
import shlex
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncssh
from aiohttp import web
from multidict import MultiMapping
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from policy import requests_view, workflow
from policy.errors import Conflict, Forbidden, InvalidInput, NotFound, PolicyError
from policy.models import AccessRequest, Device, DeviceService, Grant, RequestStatus, VendorUser
from policy.notify import request_payload
from policy.windows import DAY_NAMES, Weekly, effective_window, next_opening, to_utc
from web.auth import actor, principal, requires
from web.context import WebContext, ctx
from web.errors import status_for
from web.render import flash, redirect, render

REFUSED = "web:request:refused"
LOCAL = "%Y-%m-%dT%H:%M"  # the value format of <input type="datetime-local">
PICKER_LIMIT = 50  # devices listed at once; a search narrows the rest
DAYS = tuple((name.lower(), name) for name in DAY_NAMES)
ID = r"{request_id:\d{1,9}}"  # fits PostgreSQL's integer; longer is simply not found

# which field of the form a refusal is about, by its code
FIELD_BY_CODE = {
    "ticket-invalid": "ticket",
    "devices-missing": "devices",
    "device-not-serviced": "devices",
    "device-unknown": "devices",
    "services-missing": "services",
    "service-unknown": "services",
    "window-invalid": "window",
    "window-past": "window",
    "recurrence-invalid": "window",
    "recurrence-empty": "window",
    "recurrence-too-long": "window",
    "tz-invalid": "window",
    "reason-missing": "reason",
}


# --- time --------------------------------------------------------------------------------


def when(value: datetime | None) -> str:
    """``2026-11-23 15:00 UTC``; a dash for no time."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value is not None else "—"


def schedule(recurrence: dict[str, Any] | None) -> str:
    """The weekly window described, or "" for a one-off window."""
    return Weekly.parse(recurrence).describe() if recurrence else ""


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@functools.cache
def zone_choices() -> tuple[str, ...]:
    """The select's zones: UTC first, then the Area/City names (not legacy aliases)."""
    legacy = ("Etc/", "SystemV/", "US/", "posix/", "right/")
    return (
        "UTC",
        *sorted(z for z in _known_zones() if "/" in z and not z.startswith(legacy)),
    )


def _zone(name: str) -> zoneinfo.ZoneInfo:
    if name not in _known_zones():
        raise InvalidInput("tz-invalid", f"unknown time zone {name!r}; choose one from the list")
    return zoneinfo.ZoneInfo(name)


def _local_time(text: str, zone: zoneinfo.ZoneInfo, what: str) -> datetime:
    if not text:
        raise InvalidInput("window-invalid", f"give the window's {what} date and time")
    for pattern in (LOCAL, LOCAL + ":%S"):
        try:
            return to_utc(datetime.strptime(text, pattern), zone)
        except ValueError:
            continue
    raise InvalidInput(
        "window-invalid", f"the {what} {text!r} is not a date and time (YYYY-MM-DD HH:MM)"
    )


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            "window-invalid", f"the {what} {text!r} is not a date (YYYY-MM-DD)"
        ) from None


# --- the request form --------------------------------------------------------------------


@dataclass
class RequestForm:
    """What the person typed, as text: a refused form comes back exactly as it was sent."""

    ticket: str = ""
    devices: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    mode: str = "once"  # or "weekly"
    start: str = ""
    end: str = ""
    tz: str = "UTC"
    days: list[str] = field(default_factory=list)
    from_time: str = ""
    to_time: str = ""
    first_day: str = ""
    last_day: str = ""
    reason: str = ""
    q: str = ""

    @classmethod
    def read(cls, data: MultiMapping[Any]) -> RequestForm:
        def one(name: str) -> str:
            value = data.get(name, "")
            return value.strip() if isinstance(value, str) else ""

        def many(name: str) -> list[str]:
            values = (v.strip() for v in data.getall(name, []) if isinstance(v, str))
            return list(dict.fromkeys(v for v in values if v))

        return cls(
            ticket=one("ticket"),
            devices=many("device"),
            services=many("service"),
            mode="weekly" if one("mode") == "weekly" else "once",
            start=one("start"),
            end=one("end"),
            tz=one("tz") or "UTC",
            days=many("day"),
            from_time=one("from_time"),
            to_time=one("to_time"),
            first_day=one("first_day"),
            last_day=one("last_day"),
            # the reason keeps its line breaks; only the ends are trimmed
            reason=one("reason"),
            q=one("q"),
        )

    @classmethod
    def of(cls, req: AccessRequest) -> RequestForm:
        """A stored request as the form shows it (for editing)."""
        form = cls(
            ticket=req.ticket_ref,
            devices=sorted(d.name for d in req.devices),
            services=sorted(req.services),
            reason=req.reason,
        )
        if not req.recurrence:
            form.start = req.window_start.astimezone(UTC).strftime(LOCAL)
            form.end = req.window_end.astimezone(UTC).strftime(LOCAL)
            return form
        weekly = Weekly.parse(req.recurrence)
        last = (req.window_end - timedelta(microseconds=1)).astimezone(weekly.zone).date()
        form.mode, form.tz = "weekly", weekly.tz
        form.days = [DAYS[d][0] for d in sorted(weekly.days)]
        form.from_time, form.to_time = f"{weekly.start:%H:%M}", f"{weekly.end:%H:%M}"
        form.first_day = req.window_start.astimezone(weekly.zone).date().isoformat()
        form.last_day = last.isoformat()
        return form

    def window(self, now: datetime) -> tuple[datetime, datetime, dict[str, Any] | None]:
        """Start, end (aware UTC) and the weekly recurrence, or InvalidInput saying why not."""
        zone = _zone(self.tz)
        if self.mode != "weekly":
            return _local_time(self.start, zone, "start"), _local_time(self.end, zone, "end"), None
        if not (self.from_time and self.to_time):
            raise InvalidInput("window-invalid", "give the weekly window's from and to times")
        weekly = Weekly.from_form(self.days, self.from_time, self.to_time, self.tz)
        if not self.last_day:
            raise InvalidInput("window-invalid", "give the last day of the weekly window")
        last = _day(self.last_day, "last day")
        start = now
        if self.first_day:
            first = to_utc(datetime.combine(_day(self.first_day, "first day"), time()), zone)
            start = max(now, first)
        end = to_utc(datetime.combine(last + timedelta(days=1), time()), zone)
        return start, end, weekly.to_json()

    def to_input(self, now: datetime) -> workflow.RequestInput:
        start, end, recurrence = self.window(now)
        return workflow.RequestInput(
            ticket_ref=self.ticket,
            devices=self.devices,
            services=self.services,
            window_start=start,
            window_end=end,
            recurrence=recurrence,
            reason=self.reason,
        )


@dataclass(frozen=True)
class Picker:
    """The device checkboxes: ticked devices first, then the search's matches."""

    devices: list[Device]
    services: list[str]  # every service a serviced device offers
    serviced: int  # how many devices the organization services
    more: bool  # the search matched more than are shown


async def _picker(db: AsyncSession, vendor_user_id: int, form: RequestForm) -> Picker:
    serviced = await requests_view.devices_for_vendor_user(db, vendor_user_id)
    if form.q:
        found = await requests_view.devices_for_vendor_user(
            db, vendor_user_id, form.q, limit=PICKER_LIMIT + 1
        )
    else:
        found = serviced[: PICKER_LIMIT + 1]
    ticked = [d for d in serviced if d.name in form.devices]
    names = {d.name for d in ticked}
    shown = ticked + [d for d in found[:PICKER_LIMIT] if d.name not in names]
    services = sorted({s.name for d in serviced for s in d.services})
    return Picker(shown, services, len(serviced), len(found) > PICKER_LIMIT)


async def _form_page(
    request: web.Request,
    form: RequestForm,
    *,
    editing: requests_view.RequestDetail | None = None,
    error: PolicyError | None = None,
    status: int = 200,
) -> web.Response:
    context = ctx(request)
    async with context.sessions() as db:
        picker = await _picker(db, principal(request).id, form)
    zones = zone_choices()
    return render(
        request,
        "requests/form.html",
        status=status,
        form=form,
        picker=picker,
        editing=editing,
        action=f"/requests/{editing.request.id}/edit" if editing else "/requests/new",
        error=error.message if error else None,
        error_field=FIELD_BY_CODE.get(error.code, "") if error else "",
        pattern=context.settings.workflow_ticket_pattern,
        # a valid zone the list leaves out (a request filed through the API) stays choosable
        zones=zones if form.tz in zones or form.tz not in _known_zones() else (form.tz, *zones),
        days=DAYS,
    )


# --- helpers -------------------------------------------------------------------------------


async def _refused(request: web.Request, exc: PolicyError, action: str, **detail: Any) -> None:
    """Audit a refusal decided here (not by the workflow, which audits its own)."""
    await ctx(request).audit.record(
        REFUSED,
        actor=principal(request).name,
        code=exc.code,
        message=exc.message,
        action=action,
        **detail,
    )


def _request_id(request: web.Request) -> int:
    return int(request.match_info["request_id"])


def _unknown(request_id: int) -> NotFound:
    return NotFound("request-unknown", f"request {request_id} does not exist")


async def _detail(
    request: web.Request, request_id: int, action: str
) -> requests_view.RequestDetail:
    """The request if it is this vendor user's; any other is not found (and audited)."""
    try:
        async with ctx(request).sessions() as db:
            return await requests_view.request_detail(db, request_id, viewer=actor(request))
    except NotFound as exc:
        await _refused(request, exc, action, request_id=request_id)
        raise


def _notify(
    context: WebContext, event: str, req: AccessRequest, user: VendorUser | None, by: str
) -> None:
    """Queue a notification, to the staff list and the vendor user's own address."""
    if context.notifier is None or user is None:
        return
    payload = request_payload(req, vendor_login=user.login, actor=by)
    context.notifier.emit(event, payload, email_to=(user.email,) if user.email else ())


def _is_search(data: MultiMapping[Any]) -> bool:
    return data.get("action") == "search"


# --- the list, the form, one request ----------------------------------------------------------


@requires("vendor")
async def list_get(request: web.Request) -> web.StreamResponse:
    async with ctx(request).sessions() as db:
        summaries = await requests_view.requests_for_vendor_user(db, principal(request).id)
    return render(request, "requests/list.html", summaries=summaries, when=when, schedule=schedule)


@requires("vendor")
async def new_get(request: web.Request) -> web.StreamResponse:
    return await _form_page(request, RequestForm.read(request.query))


@requires("vendor")
async def new_post(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    form = RequestForm.read(data)
    if _is_search(data):
        return await _form_page(request, form)
    context = ctx(request)
    who = actor(request)
    now = context.clock()
    try:
        content = form.to_input(now)
    except InvalidInput as exc:
        await _refused(request, exc, "file", ticket=form.ticket[:80])
        return await _form_page(request, form, error=exc, status=400)
    try:
        async with context.sessions() as db:
            req = await workflow.file_request(
                db,
                context.audit,
                who,
                content,
                ticket_pattern=context.settings.workflow_ticket_pattern,
                now=now,
            )
            user = await db.get(VendorUser, who.id)
    except PolicyError as exc:  # audited by the workflow
        return await _form_page(request, form, error=exc, status=status_for(exc))
    _notify(context, "request.filed", req, user, who.label)
    flash(
        request,
        f"Request {req.id} for {req.ticket_ref} was filed; it waits for approval.",
        "success",
    )
    return redirect(f"/requests/{req.id}")


@requires("vendor")
async def detail_get(request: web.Request) -> web.StreamResponse:
    detail = await _detail(request, _request_id(request), "view")
    return render(
        request,
        "requests/detail.html",
        d=detail,
        req=detail.request,
        pending=detail.request.status is RequestStatus.PENDING,
        outside=[d.coverage.message for d in detail.devices if not d.coverage.covered],
        when=when,
    )


async def _editable(
    request: web.Request, request_id: int, action: str
) -> requests_view.RequestDetail:
    detail = await _detail(request, request_id, action)
    if detail.request.status is not RequestStatus.PENDING:
        exc = Conflict(
            "request-not-pending",
            f"request {request_id} is already {detail.request.status}; nothing to change",
        )
        await _refused(request, exc, action, request_id=request_id)
        raise exc
    return detail


@requires("vendor")
async def edit_get(request: web.Request) -> web.StreamResponse:
    detail = await _editable(request, _request_id(request), "edit")
    return await _form_page(request, RequestForm.of(detail.request), editing=detail)


@requires("vendor")
async def edit_post(request: web.Request) -> web.StreamResponse:
    request_id = _request_id(request)
    detail = await _editable(request, request_id, "edit")
    data = await request.post()
    form = RequestForm.read(data)
    if _is_search(data):
        return await _form_page(request, form, editing=detail)
    context = ctx(request)
    who = actor(request)
    now = context.clock()
    try:
        content = form.to_input(now)
    except InvalidInput as exc:
        await _refused(request, exc, "edit", request_id=request_id)
        return await _form_page(request, form, editing=detail, error=exc, status=400)
    try:
        async with context.sessions() as db:
            req = await workflow.edit_request(
                db,
                context.audit,
                who,
                request_id,
                content,
                now=now,
                ticket_pattern=context.settings.workflow_ticket_pattern,
            )
            user = await db.get(VendorUser, who.id)
    except PolicyError as exc:  # audited by the workflow
        if exc.code == "not-yours":  # not this vendor user's: as unknown as any other id
            raise _unknown(request_id) from None
        return await _form_page(request, form, editing=detail, error=exc, status=status_for(exc))
    _notify(context, "request.edited", req, user, who.label)
    cleared = len(detail.approvals)
    message = f"Request {req.id} was changed (revision {req.revision}); it waits for approval."
    if cleared:
        message += f" The {cleared} approval(s) given before no longer count."
    flash(request, message, "success")
    return redirect(f"/requests/{req.id}")


@requires("vendor")
async def cancel_post(request: web.Request) -> web.StreamResponse:
    request_id = _request_id(request)
    context = ctx(request)
    who = actor(request)
    reason = str((await request.post()).get("reason", "")).strip()
    try:
        async with context.sessions() as db:
            req = await workflow.cancel_request(
                db, context.audit, who, request_id, reason=reason, now=context.clock()
            )
            user = await db.get(VendorUser, who.id)
    except Forbidden as exc:  # audited by the workflow
        if exc.code == "not-yours":
            raise _unknown(request_id) from None
        raise
    except Conflict as exc:
        flash(request, exc.message, "error")
        return redirect(f"/requests/{request_id}")
    _notify(context, "request.cancelled", req, user, who.label)
    flash(request, f"Request {req.id} for {req.ticket_ref} was cancelled.", "success")
    return redirect(f"/requests/{request_id}")


# --- how to connect ----------------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    """Where vendors point their client, and as whom; each method gives one command line."""

    host: str
    port: int
    login: str

    @property
    def _host(self) -> str:
        """The host as a ``host:port`` or ``host:path`` argument needs it (IPv6 bracketed)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def ssh(self, device: str) -> str:
        return _line("ssh", "-p", str(self.port), f"{self.login}:{device}@{self.host}")

    def jump(self, device: str) -> str:
        # the user before @DEVICE is ignored: the gateway logs in with the vaulted account
        return _line(
            "ssh", "-J", f"{self.login}@{self._host}:{self.port}", f"{self.login}@{device}"
        )

    def forward(self, device: str, port: int) -> str:
        target = f"{local_port(port)}:{device}:{port}"
        return _line("ssh", "-p", str(self.port), "-N", "-L", target, f"{self.login}@{self.host}")

    def sftp(self, device: str) -> str:
        return _line("sftp", "-o", f"User={self.login}:{device}", "-P", str(self.port), self._host)

    def known_host(self, key: str) -> str:
        """The gateway's line for ``~/.ssh/known_hosts`` (``[host]:port`` unless port 22)."""
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {key}"

    def ssh_config(self, ssh_devices: Sequence[str]) -> str:
        """Host entries: ``sallyport`` (the gateway: grants list, ``-L``), then per device
        ``DEVICE`` through ProxyJump and ``sallyport-DEVICE`` straight through.

        The device's own name is the ProxyJump entry: the gateway's certificate names the
        device, and a bare ``ssh -J ... LOGIN@DEVICE`` from this page still works with the
        entry in place (an entry sending DEVICE to the gateway would make that a loop).
        """
        blocks = [_block("sallyport", HostName=self.host, Port=str(self.port), User=self.login)]
        for device in ssh_devices:
            blocks.append(_block(device, User=self.login, ProxyJump="sallyport"))
            blocks.append(
                _block(
                    f"sallyport-{device}",
                    HostName=self.host,
                    Port=str(self.port),
                    User=f"{self.login}:{device}",
                )
            )
        return "\n".join(blocks)


def _line(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _block(alias: str, **options: str) -> str:
    return f"Host {alias}\n" + "".join(f"    {k} {v}\n" for k, v in options.items())


def local_port(port: int) -> int:
    """The local end of a tunnel: the service's own port, or 8000 more when that needs root
    (443 -> 8443)."""
    return port if port >= 1024 else port + 8000


@dataclass(frozen=True)
class Forward:
    service: str
    port: int  # on the device
    local: int  # on the vendor's machine
    line: str


@dataclass(frozen=True)
class DeviceLines:
    device: str
    ssh: str | None  # None when the grant has no ssh service
    jump: str | None
    sftp: str | None  # also None when the grant allows no file transfers
    forwards: list[Forward]  # one tunnel per granted service other than ssh
    terminal: str | None = None  # the browser terminal's page, when ssh is granted and served


@dataclass(frozen=True)
class GrantPanel:
    grant: Grant
    devices: list[DeviceLines]
    schedule: str
    open_until: datetime | None  # open now, until then
    opens_at: datetime | None  # else the next opening, if any before the window ends
    local_opening: str  # the next opening in the weekly window's own zone


def _device_lines(
    gw: Gateway, grant: Grant, device: str, ports: dict[tuple[str, str], int]
) -> DeviceLines:
    ssh = "ssh" in grant.services
    forwards = [
        Forward(service, port, local_port(port), gw.forward(device, port))
        for service in sorted(grant.services)
        if service != "ssh" and (port := ports.get((device, service))) is not None
    ]
    return DeviceLines(
        device=device,
        ssh=gw.ssh(device) if ssh else None,
        jump=gw.jump(device) if ssh else None,
        sftp=gw.sftp(device) if ssh and grant.transfers != "none" else None,
        forwards=forwards,
        terminal=f"/connect/{quote(device, safe='')}/terminal"
        if ssh and (device, "ssh") in ports
        else None,
    )


def grant_panel(
    gw: Gateway, grant: Grant, ports: dict[tuple[str, str], int], now: datetime
) -> GrantPanel:
    weekly = Weekly.parse(grant.recurrence) if grant.recurrence else None
    current = effective_window(grant.window_start, grant.window_end, weekly, now)
    opens = None if current else next_opening(grant.window_start, grant.window_end, weekly, now)
    local = ""
    if opens is not None and weekly is not None:
        local = f"{opens.astimezone(weekly.zone):%a %d %b %H:%M} {weekly.tz}"
    devices = sorted(d.name for d in grant.devices)
    return GrantPanel(
        grant=grant,
        devices=[_device_lines(gw, grant, name, ports) for name in devices],
        schedule=weekly.describe() if weekly else "",
        open_until=current[1] if current else None,
        opens_at=opens,
        local_opening=local,
    )


async def _service_ports(db: AsyncSession, grants: Iterable[Grant]) -> dict[tuple[str, str], int]:
    """(device, service) -> port, for the granted devices (the grants list loads no ports)."""
    ids = {d.id for g in grants for d in g.devices}
    if not ids:
        return {}
    rows = await db.execute(
        select(Device.name, DeviceService.name, DeviceService.port)
        .join(DeviceService, DeviceService.device_id == Device.id)
        .where(Device.id.in_(ids))
    )
    return {(device, service): port for device, service, port in rows}


@dataclass(frozen=True)
class PublicKey:
    line: str  # "ssh-ed25519 AAAA..."
    fingerprint: str  # "SHA256:..."


def gateway_key(path: Path) -> PublicKey | None:
    """The public half of one of the gateway's keys in the shared data dir, when this
    process can read it (a web node of its own may not have the gateway's keys). Never
    creates a key: that is the gateway's first run."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_key(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_key(path: str, _mtime: int, _size: int) -> PublicKey | None:
    """Cached per file version: the page must not parse a private key on every view."""
    try:
        key = asyncssh.read_private_key(path)
    except (OSError, ValueError, asyncssh.KeyImportError):
        return None
    algorithm, blob = key.export_public_key().decode().split()[:2]
    return PublicKey(f"{algorithm} {blob}", key.get_fingerprint("sha256"))


@requires("vendor")
async def connect_get(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    who = principal(request)
    now = context.clock()
    async with context.sessions() as db:
        grants = await requests_view.grants_for_vendor_user(db, who.id, now)
        ports = await _service_ports(db, grants)
    settings = context.settings
    gw = Gateway(settings.gateway_public_host, settings.gateway_public_port, who.login)
    panels = [grant_panel(gw, g, ports, now) for g in grants]
    ssh_devices = sorted({d.device for p in panels for d in p.devices if d.ssh})
    host_key = gateway_key(settings.host_key_path)
    ca_key = gateway_key(settings.ca_key_path)
    return render(
        request,
        "connect.html",
        gw=gw,
        panels=panels,
        config=gw.ssh_config(ssh_devices) if panels else "",
        host_key=host_key,
        known_host=gw.known_host(host_key.line) if host_key else "",
        # the line ``sallyport ca known-hosts`` prints
        ca_line=f"@cert-authority * {ca_key.line} sallyport-ca" if ca_key else "",
        when=when,
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/requests", list_get)
    app.router.add_get("/requests/new", new_get)
    app.router.add_post("/requests/new", new_post)
    app.router.add_get(f"/requests/{ID}", detail_get)
    app.router.add_get(f"/requests/{ID}/edit", edit_get)
    app.router.add_post(f"/requests/{ID}/edit", edit_post)
    app.router.add_post(f"/requests/{ID}/cancel", cancel_post)
    app.router.add_get("/connect", connect_get)
