"""The security reviewer's pages: sessions, one session with its replay, search, live
sessions with a kill button, evidence bundles, and a device's history.

Who may look: security and admin staff review sessions (``/sessions``, ``/search``,
``/live``, recordings, bundles, kills); biomed staff may also open a device's page
(``/devices/{name}``), which links to sessions only for those who may open them, and the
live list, to watch a session (``web.terminal``) but not to kill it.

The data comes from ``recorder.review`` (list and session), ``recorder.search`` and
``recorder.evidence``; recordings are read through the storage the settings name
(``recorder.backends.open_storage``), opened at first use and closed with the app.

Replay: the session page loads asciinema-player (installed by ``./dev`` from npm, served
here under ``/static/player/``) and ``/static/player.js``, which starts a player on each
``<div class="cast" data-src=...>``. The player compiles a WebAssembly terminal, which
the portal's CSP forbids; the session page alone sends the same policy plus
``'wasm-unsafe-eval'`` (WebAssembly compilation only: JavaScript ``eval`` stays blocked).

Audit: a kill is ``web:session:kill`` (the gateway holding the session then ends it and
records who asked), a bundle download ``web:evidence:exported`` with the bundle's SHA-256,
and every refusal (bad filter, unknown session, a kill too late) ``web:review:refused``,
``web:session:kill-refused`` or ``web:evidence:refused`` with the reason shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import desc, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin, store
from policy.config import Settings
from policy.errors import InvalidInput, NotFound, PolicyError
from policy.keyfiles import load_signing_key
from policy.models import AccessRequest, AuditEvent, Device, Recording, Session, VendorUser
from policy.moderation import may_observe
from policy.snapshot import device_snapshot
from recorder import review, search
from recorder.backends import open_storage
from recorder.commands import Command
from recorder.errors import RecorderError
from recorder.evidence import ExportResult, export_bundle
from recorder.storage import Storage
from web.auth import actor, principal, requires
from web.context import CTX, ctx
from web.errors import status_for
from web.render import flash, redirect, render, safe_next
from web.security import CSP

REVIEWERS = ("security", "admin")
DEVICE_VIEWERS = ("security", "admin", "biomed")
LIVE_VIEWERS = ("security", "admin", "biomed")  # biomed watches (web.terminal), cannot kill
PLAYER_DIR = Path(__file__).parent / "assets" / "node_modules" / "asciinema-player" / "dist"
PLAYER_FILES = {
    "asciinema-player.min.js": PLAYER_DIR / "bundle" / "asciinema-player.min.js",
    "asciinema-player.css": PLAYER_DIR / "bundle" / "asciinema-player.css",
}
PLAYER_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")
assert PLAYER_CSP != CSP, "web.security.CSP no longer has script-src 'self'"
ASCIICAST_TYPE = "application/x-asciicast"
LIST_LIMIT = 200
DEVICE_EVENTS = 500
MARKER_TEXT = 60  # characters of a command shown on the player's progress bar
FILTERS = ("device", "vendor", "ticket", "from", "to", "end_reason")


class _Storage:
    """The recording store, opened at first use (an S3 store starts a thread) and closed
    when the application shuts down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._storage: Storage | None = None

    def get(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self._settings)
        return self._storage

    async def close(self, _app: web.Application) -> None:
        if self._storage is not None:
            storage, self._storage = self._storage, None
            await asyncio.to_thread(storage.close)


STORAGE: web.AppKey[_Storage] = web.AppKey("sallyport_review_storage", _Storage)


def _storage(request: web.Request) -> Storage:
    return request.app[STORAGE].get()


async def _refused(request: web.Request, tag: str, exc: PolicyError, **refs: Any) -> None:
    """Audit a refusal decided here (the data layer does not audit reads)."""
    await ctx(request).audit.record(
        tag,
        actor=principal(request).name,
        code=exc.code,
        message=exc.message,
        method=request.method,
        path=request.path,
        **refs,
    )


def session_ref(session_id: str) -> dict[str, str]:
    """An unverified session id from the URL for an audit event: the ``session_id``
    reference when it has the shape of one, else a detail (the column holds 32 chars)."""
    if len(session_id) == 32 and all(ch in "0123456789abcdef" for ch in session_id):
        return {"session_id": session_id}
    return {"requested_session": session_id[:100]}


async def _refuse(request: web.Request, exc: PolicyError, **refs: Any) -> PolicyError:
    """Audit ``exc`` as ``web:review:refused`` and hand it back for raising."""
    await _refused(request, "web:review:refused", exc, **refs)
    return exc


# --- filters ------------------------------------------------------------------------------


def parse_time(value: str, field: str) -> datetime | None:
    """A form's ``YYYY-MM-DD[THH:MM[:SS]]`` as UTC (the pages show UTC throughout)."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            "time-invalid", f"{field}: {value!r} is not a date and time like 2025-03-14T09:30"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _form(request: web.Request, names: Sequence[str]) -> dict[str, str]:
    return {name: request.query.get(name, "").strip() for name in names}


def _or_none(value: str) -> str | None:
    return value or None


# --- the session list ---------------------------------------------------------------------


async def _end_reasons(db: AsyncSession) -> list[str]:
    rows = await db.scalars(
        select(Session.end_reason).where(Session.end_reason.is_not(None)).distinct()
    )
    return sorted(r for r in rows if r)


@requires(*REVIEWERS)
async def sessions_page(request: web.Request) -> web.StreamResponse:
    """Sessions newest first, filtered by device, vendor, ticket, time range, end reason."""
    values = _form(request, FILTERS)
    rows: list[review.SessionRow] = []
    error, status = None, 200
    async with ctx(request).sessions() as db:
        reasons = await _end_reasons(db)
        try:
            rows = await review.list_sessions(
                db,
                device=_or_none(values["device"]),
                vendor=_or_none(values["vendor"]),
                ticket=_or_none(values["ticket"]),
                since=parse_time(values["from"], "From"),
                until=parse_time(values["to"], "To"),
                end_reason=_or_none(values["end_reason"]),
                limit=LIST_LIMIT,
            )
        except InvalidInput as exc:
            await _refused(request, "web:review:refused", exc)
            error, status = exc.message, 400
    return render(
        request,
        "review/sessions.html",
        status=status,
        error=error,
        rows=rows,
        values=values,
        reasons=reasons,
        limit=LIST_LIMIT,
        filtered=any(values.values()),
    )


# --- one session --------------------------------------------------------------------------


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and 0 <= number < 10**9 else None


@dataclass(frozen=True)
class TypedCommand:
    command: Command
    recording: int | None  # the terminal recording it was typed in, for the replay link


def recording_of(command: Command, recordings: Sequence[review.RecordingInfo]) -> int | None:
    """The terminal recording a typed command came from: its Enter's wall-clock time is
    the recording's start plus its offset (``recorder.commands`` computes it that way)."""
    for rec in recordings:
        if rec.playable and command.started_at == rec.started_at + timedelta(seconds=command.at):
            return rec.id
    return None


def _markers(commands: Sequence[Command]) -> str:
    """The player's progress-bar markers: ``[[seconds, "command"], ...]`` as JSON."""
    marks = [
        [round(c.at, 3), c.text if len(c.text) <= MARKER_TEXT else c.text[:MARKER_TEXT] + "…"]
        for c in commands
    ]
    return json.dumps(marks, ensure_ascii=False)


@requires(*REVIEWERS)
async def session_page(request: web.Request) -> web.StreamResponse:
    """Everything about one session, with a player for each terminal recording.

    ``?recording=ID&at=SECONDS`` (search results, command times) opens that recording's
    player showing the moment ``at``, ready to play on from there.
    """
    session_id = request.match_info["session_id"]
    async with ctx(request).sessions() as db:
        try:
            data = await review.session_review(db, _storage(request), session_id)
        except NotFound as exc:
            raise await _refuse(request, exc, **session_ref(session_id)) from None
    commands = [TypedCommand(c, recording_of(c, data.recordings)) for c in data.commands]
    anchor_rec = request.query.get("recording", "")
    anchor_at = _float(request.query.get("at"))
    recordings = [
        {
            "info": rec,
            "markers": _markers([c.command for c in commands if c.recording == rec.id]),
            "start_at": anchor_at if anchor_rec == str(rec.id) else None,
        }
        for rec in data.recordings
    ]
    response = render(
        request,
        "review/session.html",
        review=data,
        row=data.session,
        recordings=recordings,
        commands=commands,
        details=[json.dumps(e.detail, sort_keys=True, ensure_ascii=False) for e in data.events],
    )
    response.headers["Content-Security-Policy"] = PLAYER_CSP
    return response


async def _recording(db: AsyncSession, session_id: str, recording_id: int) -> Recording | None:
    return await db.scalar(
        select(Recording).where(Recording.id == recording_id, Recording.session_id == session_id)
    )


@requires(*REVIEWERS)
async def recording_cast(request: web.Request) -> web.StreamResponse:
    """The asciicast file the browser player replays (exactly the stored bytes, less a
    partial last line while the session is still being recorded)."""
    session_id = request.match_info["session_id"]
    recording_id = int(request.match_info["recording_id"])
    async with ctx(request).sessions() as db:
        rec = await _recording(db, session_id, recording_id)
    try:
        if rec is None:
            raise NotFound(
                "recording-unknown",
                f"session {session_id} has no recording {recording_id}",
            )
        data = await review.asciicast_bytes(_storage(request), rec)
    except (NotFound, InvalidInput) as exc:
        raise await _refuse(
            request, exc, **session_ref(session_id), recording_id=recording_id
        ) from None
    return web.Response(
        body=data,
        content_type=ASCIICAST_TYPE,
        charset="utf-8",
        headers={"Content-Disposition": f'inline; filename="{session_id}-{recording_id}.cast"'},
    )


async def _device_name(db: AsyncSession, session: Session) -> str | None:
    """The device's name at session start (the snapshot), for the audit reference."""
    name = (session.device_snapshot or {}).get("name")
    if name:
        return str(name)
    return await db.scalar(select(Device.name).where(Device.id == session.device_id))


@requires(*REVIEWERS)
async def bundle_zip(request: web.Request) -> web.StreamResponse:
    """The signed evidence bundle of one session, as ``sallyport evidence export
    --session ID`` writes it; verifiable offline with ``sallyport evidence verify``."""
    session_id = request.match_info["session_id"]
    context = ctx(request)
    async with context.sessions() as db:
        session = await db.get(Session, session_id)
        if session is None:
            exc = NotFound("session-unknown", f"session {session_id} does not exist")
            await _refused(request, "web:evidence:refused", exc, **session_ref(session_id))
            raise exc
        device = await _device_name(db, session)
        try:
            data, result = await _export(request, db, session_id)
        except RecorderError as error:
            failed = InvalidInput(error.code, f"the bundle cannot be made: {error.message}")
            await _refused(request, "web:evidence:refused", failed, session_id=session_id)
            raise failed from None
    await context.audit.record(
        "web:evidence:exported",
        actor=principal(request).name,
        device=device,
        session_id=session_id,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        recordings=result.recordings,
        events=result.events_in_scope,
        warnings=result.warnings,
    )
    return web.Response(
        body=data,
        content_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="sallyport-session-{session_id}.zip"'
        },
    )


async def _export(
    request: web.Request, db: AsyncSession, session_id: str
) -> tuple[bytes, ExportResult]:
    """Write the bundle into a private temporary directory and read it back."""
    context = ctx(request)
    key = load_signing_key(context.settings.audit_key_path)
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="sallyport-bundle-"))
    try:
        out = workdir / "bundle.zip"
        result = await export_bundle(
            db, _storage(request), key, out, session_id=session_id, audit=context.audit
        )
        return await asyncio.to_thread(out.read_bytes), result
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


# --- search -------------------------------------------------------------------------------


async def _hit_sessions(db: AsyncSession, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Who, where and when for each session with a hit (the hits name only the id)."""
    if not ids:
        return {}
    rows = await db.execute(
        select(Session, VendorUser.login, Device.name)
        .join(VendorUser, VendorUser.id == Session.vendor_user_id)
        .join(Device, Device.id == Session.device_id)
        .where(Session.id.in_(ids))
    )
    return {
        s.id: {
            "vendor": login,
            "device": (s.device_snapshot or {}).get("name") or device,
            "started_at": s.started_at,
            "ticket": s.ticket_ref,
        }
        for s, login, device in rows
    }


def hit_link(hit: search.Hit) -> str:
    """The session page at the hit: the recording's player at that moment, else the
    commands or transfers section."""
    base = f"/sessions/{hit.session_id}"
    if hit.recording_id is not None:
        at = max(0.0, round(hit.at, 3))
        return f"{base}?recording={hit.recording_id}&at={at}#recording-{hit.recording_id}"
    return f"{base}#{'transfers' if hit.kind == 'transfer' else 'commands'}"


@requires(*REVIEWERS)
async def search_page(request: web.Request) -> web.StreamResponse:
    """Search what vendors typed and saw, and the files they moved, in all sessions."""
    values = _form(request, ("q", "from", "to"))
    result: search.SearchResult | None = None
    found: dict[str, dict[str, Any]] = {}
    error, status = None, 200
    if values["q"] or values["from"] or values["to"]:
        async with ctx(request).sessions() as db:
            try:
                result = await search.search(
                    db,
                    _storage(request),
                    values["q"],
                    since=parse_time(values["from"], "From"),
                    until=parse_time(values["to"], "To"),
                )
            except InvalidInput as exc:
                await _refused(request, "web:review:refused", exc)
                error, status = exc.message, 400
            else:
                found = await _hit_sessions(db, {h.session_id for h in result.hits})
    hits = [
        {"hit": h, "link": hit_link(h), "session": found.get(h.session_id)}
        for h in (result.hits if result else [])
    ]
    return render(
        request,
        "review/search.html",
        status=status,
        error=error,
        values=values,
        result=result,
        hits=hits,
    )


# --- live sessions and kills --------------------------------------------------------------


@requires(*LIVE_VIEWERS)
async def live_page(request: web.Request) -> web.StreamResponse:
    return await _live(request)


async def _live(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    async with ctx(request).sessions() as db:
        rows = await review.list_sessions(db, live=True, limit=review.MAX_LIST)
    who = principal(request)
    return render(
        request,
        "review/live.html",
        status=status,
        error=error,
        rows=rows,
        can_review=who.has_any(*REVIEWERS),
        can_watch=may_observe(who.roles),
    )


@requires(*REVIEWERS)
async def kill_post(request: web.Request) -> web.StreamResponse:
    """Ask the gateway holding the session to end it; it records who asked."""
    session_id = request.match_info["session_id"]
    form = await request.post()
    back = safe_next(str(form.get("back", "")) or None, "/live")
    context = ctx(request)
    by = actor(request).label
    try:
        async with context.sessions() as db:
            session = await admin.request_kill(db, session_id, by)
            device = (session.device_snapshot or {}).get("name")
    except (NotFound, InvalidInput) as exc:
        await _refused(request, "web:session:kill-refused", exc, **session_ref(session_id))
        return await _live(request, error=exc.message, status=status_for(exc))
    await context.audit.record("web:session:kill", actor=by, device=device, session_id=session_id)
    flash(
        request,
        f"Session {session_id}: kill requested. The gateway holding it ends it within a second.",
        "success",
    )
    return redirect(back)


# --- a device's page ----------------------------------------------------------------------


async def _device_requests(db: AsyncSession, device: Device) -> list[dict[str, Any]]:
    rows = await db.execute(
        select(AccessRequest, VendorUser.login)
        .join(VendorUser, VendorUser.id == AccessRequest.vendor_user_id)
        .where(AccessRequest.devices.any(Device.id == device.id))
        .options(selectinload(AccessRequest.approvals))
        .order_by(desc(AccessRequest.created_at), desc(AccessRequest.id))
        .limit(LIST_LIMIT)
    )
    return [
        {
            "request": r,
            "vendor": login,
            "approvals": sorted(r.approvals, key=lambda a: (a.decided_at, a.id)),
        }
        for r, login in rows
    ]


async def _device_events(db: AsyncSession, name: str) -> list[AuditEvent]:
    rows = await db.scalars(
        select(AuditEvent)
        .where(AuditEvent.device == name)
        .order_by(desc(AuditEvent.id))
        .limit(DEVICE_EVENTS)
    )
    return list(rows)


@requires(*DEVICE_VIEWERS)
async def device_page(request: web.Request) -> web.StreamResponse:
    """The device's record as it is now, its sessions, its requests and its events."""
    name = request.match_info["name"]
    async with ctx(request).sessions() as db:
        device = await store.device(db, name)
        if device is None:
            raise await _refuse(
                request, NotFound("device-unknown", f"there is no device {name}"), device=name[:100]
            )
        record = device_snapshot(device)
        sessions = await review.list_sessions(db, device=name, limit=LIST_LIMIT)
        requests = await _device_requests(db, device)
        events = await _device_events(db, name)
    return render(
        request,
        "review/device.html",
        device=device,
        record=record,
        sessions=sessions,
        requests=requests,
        events=events,
        details=[json.dumps(e.detail, sort_keys=True, ensure_ascii=False) for e in events],
        can_review=principal(request).has_any(*REVIEWERS),
        limit=LIST_LIMIT,
        event_limit=DEVICE_EVENTS,
    )


# --- the player's files -------------------------------------------------------------------


def _player_file(name: str) -> Any:
    path = PLAYER_FILES[name]

    async def serve(request: web.Request) -> web.StreamResponse:
        """One file of the npm package; missing means ``./dev`` (npm ci) did not run."""
        if not path.is_file():
            raise NotFound(
                "player-missing",
                "the recording player is not installed; run the project setup (./dev)",
            )
        return web.FileResponse(path)

    return serve


def setup(app: web.Application) -> None:
    storage = _Storage(app[CTX].settings)
    app[STORAGE] = storage
    app.on_cleanup.append(storage.close)
    for name in PLAYER_FILES:
        app.router.add_get(f"/static/player/{name}", _player_file(name))
    app.router.add_get("/sessions", sessions_page)
    app.router.add_get("/sessions/{session_id}", session_page)
    app.router.add_get(
        r"/sessions/{session_id}/recordings/{recording_id:\d{1,18}}.cast", recording_cast
    )
    app.router.add_get("/sessions/{session_id}/bundle.zip", bundle_zip)
    app.router.add_post("/sessions/{session_id}/kill", kill_post)
    app.router.add_get("/search", search_page)
    app.router.add_get("/live", live_page)
    app.router.add_get("/devices/{name}", device_page)
