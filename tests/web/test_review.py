"""The security reviewer's pages (web/review.py): the session list and its filters, one
session with its player, the recording it replays, the evidence bundle, search, live
sessions and kills, a device's page, and who may see them."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy.keyfiles import load_signing_key
from policy.models import AuditEvent, Device, Recording, Session
from recorder.bundle import verify_bundle
from tests.broker.test_gateway import pty_ssh, settled, wait_exit
from tests.conftest import VendorLogin, grant
from tests.recorder import test_review as review_data
from tests.recorder.test_review import SHELL, T0, World
from tests.web.conftest import AuditEvents, Login, MakeStaff, MakeVendorUser, WebApp, csrf_from
from web.review import PLAYER_FILES

Sessions = async_sessionmaker[AsyncSession]
Client = TestClient[Any, Any]

world = review_data.world  # sessions with real recordings, a request and its approvals

_SESSION_LINK = re.compile(r'href="/sessions/([0-9a-f]{32})"')


def session_links(html: str) -> list[str]:
    """The sessions a page links to, in page order, each once."""
    return list(dict.fromkeys(_SESSION_LINK.findall(html)))


async def as_security(client: Client, make_staff: MakeStaff, login: Login) -> None:
    _user, password, secret = await make_staff("sec", ["security"])
    await login(client, "sec", password, secret)


async def recording_of(db: Sessions, session_id: str) -> Recording:
    async with db() as s:
        return (await s.scalars(select(Recording).where(Recording.session_id == session_id))).one()


# -- the session list --------------------------------------------------------------------


async def test_session_list_filters(
    world: World, client: Client, make_staff: MakeStaff, login: Login, audit_events: AuditEvents
) -> None:
    done = await world.session(script=SHELL, ended=T0 + timedelta(minutes=10), end_reason="exit")
    killed = await world.session(
        started=T0 + timedelta(hours=1), ended=T0 + timedelta(hours=2), end_reason="killed"
    )
    live = await world.session(login="mon1", device="monitor-3", started=T0 + timedelta(hours=3))
    await as_security(client, make_staff, login)

    async def listed(**query: str) -> list[str]:
        resp = await client.get("/sessions", params=query)
        assert resp.status == 200, await resp.text()
        return session_links(await resp.text())

    assert await listed() == [live, killed, done]
    assert await listed(device="pump-12") == [killed, done]
    assert await listed(vendor="Monitron") == [live]
    assert await listed(vendor="vendor1") == [killed, done]
    assert await listed(ticket="INC0000777") == [live]
    assert await listed(end_reason="killed") == [killed]
    assert await listed(**{"from": "2025-03-14T09:05", "to": "2025-03-14T09:30"}) == [done]
    assert await listed(device="no-such-device") == []

    page = await (await client.get("/sessions")).text()
    assert '<option value="killed">killed</option>' in page  # end reasons offered
    row = await recording_of(world.db, done)
    assert row.sha256 is not None and row.sha256[:12] in page

    resp = await client.get("/sessions", params={"from": "yesterday"})
    assert resp.status == 400
    assert "From: &#39;yesterday&#39; is not a date and time" in await resp.text()
    resp = await client.get("/sessions", params={"from": "2025-03-15", "to": "2025-03-14"})
    assert resp.status == 400
    assert "the start of the time range is not before its end" in await resp.text()
    refusals = await audit_events("web:review:refused")
    assert [d["code"] for _t, _a, d in refusals] == ["time-invalid", "time-range-invalid"]
    assert {a for _t, a, _d in refusals} == {"staff:sec"}


# -- one session -------------------------------------------------------------------------


async def test_session_page_shows_commands_approvals_recordings_and_events(
    world: World, web_app: WebApp, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    audit = web_app.ctx.audit
    await audit.record("broker:session:start", actor="vendor1", device="pump-12", session_id=sid)
    await audit.record(
        "broker:transfer:file",
        actor="vendor1",
        session_id=sid,
        path="/tmp/fw.bin",
        direction="upload",
        size=4096,
        sha256="ab" * 32,
        complete=True,
    )
    rec = await recording_of(world.db, sid)
    await as_security(client, make_staff, login)

    resp = await client.get(f"/sessions/{sid}")
    page = await resp.text()
    assert resp.status == 200, page
    # who, where, on which ticket, how it ended
    for text in ("Vera Vendor", "Infusia Medical", "CHG0001234", "10.1.0.12", ">exit<"):
        assert text in page, text
    assert '<a href="/devices/pump-12">pump-12</a>' in page
    # the commands typed, with their time and a link to that moment of the replay
    assert "<code>cat /etc/pump/version</code>" in page
    assert "2025-03-14 09:00:02 UTC" in page
    assert f'href="/sessions/{sid}?recording={rec.id}&amp;at=2.0#recording-{rec.id}"' in page
    # the request and its approvals, the grant
    assert "replace the pump firmware" in page
    assert "ok after review" in page and "downtime agreed" in page
    assert "bio1, sec1" in page
    # the recording: status, hash, size, and a player for it
    assert rec.sha256 is not None and f"<code>{rec.sha256}</code>" in page
    assert f"{rec.size} bytes" in page
    assert f'data-src="/sessions/{sid}/recordings/{rec.id}.cast"' in page
    assert "cat /etc/pump/version&#34;]" in page  # the command as a progress-bar marker
    # transfers and audit events with their hashes
    assert "<code>/tmp/fw.bin</code>" in page and "ab" * 32 in page
    assert "<code>broker:session:start</code>" in page
    # the player's files, and a policy that lets its WebAssembly terminal run
    assert '<script src="/static/player/asciinema-player.min.js" defer>' in page
    assert '<script src="/static/player.js" defer>' in page
    assert "script-src 'self' 'wasm-unsafe-eval'" in resp.headers["Content-Security-Policy"]
    assert "'unsafe-eval'" not in resp.headers["Content-Security-Policy"]  # JavaScript eval

    anchored = await (await client.get(f"/sessions/{sid}?recording={rec.id}&at=2.5")).text()
    assert 'data-start-at="2.5"' in anchored
    resp = await client.get("/sessions")  # other pages keep the strict policy
    assert "wasm" not in resp.headers["Content-Security-Policy"]


async def test_session_page_warns_when_the_recording_was_changed(
    world: World, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    rec = await recording_of(world.db, sid)
    path = world.storage.root / rec.storage_key
    path.chmod(0o640)
    path.write_bytes(path.read_bytes().replace(b"4.2.1", b"4.2.2"))
    await as_security(client, make_staff, login)
    page = await (await client.get(f"/sessions/{sid}")).text()
    assert "differs from the SHA-256 recorded when it was sealed" in page


async def test_unknown_session_is_refused_with_a_reason(
    world: World, client: Client, make_staff: MakeStaff, login: Login, audit_events: AuditEvents
) -> None:
    await as_security(client, make_staff, login)
    resp = await client.get(f"/sessions/{'0' * 32}")
    assert resp.status == 404
    assert f"session {'0' * 32} does not exist" in await resp.text()
    # an id that cannot be one is refused alike; the audit keeps it as a detail
    resp = await client.get(f"/sessions/{'x' * 300}")
    assert resp.status == 404
    resp = await client.get(f"/sessions/{'x' * 300}/recordings/1.cast")
    assert resp.status == 404
    refusals = await audit_events("web:review:refused")
    assert [(a, d["code"]) for _t, a, d in refusals] == [
        ("staff:sec", "session-unknown"),
        ("staff:sec", "session-unknown"),
        ("staff:sec", "recording-unknown"),
    ]
    assert refusals[1][2]["requested_session"] == "x" * 100
    async with world.db() as s:
        refs = await s.scalars(
            select(AuditEvent.session_id)
            .where(AuditEvent.tag == "web:review:refused")
            .order_by(AuditEvent.id)
        )
        assert list(refs) == ["0" * 32, None, None]


# -- the recording the player replays ----------------------------------------------------


async def test_cast_endpoint_serves_the_stored_recording(
    world: World, client: Client, make_staff: MakeStaff, login: Login, audit_events: AuditEvents
) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    other = await world.session(login="mon1", device="monitor-3", script=SHELL)
    rec = await recording_of(world.db, sid)
    await as_security(client, make_staff, login)

    resp = await client.get(f"/sessions/{sid}/recordings/{rec.id}.cast")
    assert resp.status == 200
    assert resp.content_type == "application/x-asciicast"
    body = await resp.read()
    assert body == (world.storage.root / rec.storage_key).read_bytes()
    assert hashlib.sha256(body).hexdigest() == rec.sha256
    assert resp.headers["Cache-Control"] == "no-store"

    # a recording is only reachable under its own session
    resp = await client.get(f"/sessions/{other}/recordings/{rec.id}.cast")
    assert resp.status == 404
    assert f"session {other} has no recording {rec.id}" in await resp.text()
    resp = await client.get(f"/sessions/{sid}/recordings/999999.cast")
    assert resp.status == 404
    codes = [d["code"] for _t, _a, d in await audit_events("web:review:refused")]
    assert codes == ["recording-unknown", "recording-unknown"]


async def test_cast_of_a_recording_without_a_terminal_is_refused(
    world: World, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    sid = await world.session(
        kind="exec", command="uptime", terminal=False, script=[(0.1, "o", "up 3 days\n")]
    )
    rec = await recording_of(world.db, sid)
    await as_security(client, make_staff, login)
    page = await (await client.get(f"/sessions/{sid}")).text()
    assert "data-src" not in page and "No terminal in this recording" in page
    resp = await client.get(f"/sessions/{sid}/recordings/{rec.id}.cast")
    assert resp.status == 400
    assert "has no terminal" in await resp.text()


async def test_player_files_are_the_installed_package(
    web_app: WebApp, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    anonymous = web_app.browser()
    resp = await anonymous.get("/static/player/asciinema-player.min.js", allow_redirects=False)
    assert resp.status == 303  # served to signed-in users only
    resp = await anonymous.get("/static/player.js")
    assert resp.status == 200 and "AsciinemaPlayer.create" in await resp.text()
    await as_security(client, make_staff, login)
    for name, path in PLAYER_FILES.items():
        resp = await client.get(f"/static/player/{name}")
        assert resp.status == 200
        assert await resp.read() == path.read_bytes()
        javascript = ("text/javascript", "application/javascript")
        assert resp.content_type in (("text/css",) if name.endswith(".css") else javascript)
    resp = await client.get("/static/player/asciinema-player-worker.min.js")
    assert resp.status == 404  # only the two files the page uses


# -- the evidence bundle -----------------------------------------------------------------


async def test_bundle_download_verifies_offline_and_is_audited(
    world: World,
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    audit_events: AuditEvents,
    tmp_path: Path,
) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    await web_app.ctx.audit.record("broker:session:start", actor="vendor1", session_id=sid)
    await as_security(client, make_staff, login)

    resp = await client.get(f"/sessions/{sid}/bundle.zip")
    assert resp.status == 200
    assert resp.content_type == "application/zip"
    disposition = resp.headers["Content-Disposition"]
    assert disposition == f'attachment; filename="sallyport-session-{sid}.zip"'
    body = await resp.read()
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(body)
    key = load_signing_key(web_app.ctx.settings.audit_key_path).public_key()
    result = verify_bundle(bundle, key)
    assert result.ok, result.first_bad
    assert result.events >= 1 and result.checkpoints >= 1

    [(_tag, actor, detail)] = await audit_events("web:evidence:exported")
    assert actor == "staff:sec"
    assert detail["sha256"] == hashlib.sha256(body).hexdigest()
    assert detail["recordings"] == 1 and detail["warnings"] == []

    resp = await client.get(f"/sessions/{'f' * 32}/bundle.zip")
    assert resp.status == 404
    [(_tag, _actor, refused)] = await audit_events("web:evidence:refused")
    assert refused["code"] == "session-unknown"


# -- search ------------------------------------------------------------------------------


async def test_search_finds_a_typed_command_and_says_what_it_skipped(
    world: World, client: Client, make_staff: MakeStaff, login: Login, audit_events: AuditEvents
) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    rec = await recording_of(world.db, sid)
    await as_security(client, make_staff, login)

    resp = await client.get("/search", params={"q": "PUMP/VERSION"})
    page = await resp.text()
    assert resp.status == 200, page
    link = f"/sessions/{sid}?recording={rec.id}&amp;at=2.0#recording-{rec.id}"
    assert f'<a href="{link}"><code>cat /etc/pump/version</code></a>' in page
    assert "typed command" in page and "vendor1 on pump-12" in page
    assert "Searched 1 of 1 sessions." in page and "not complete" not in page

    lost = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    lost_rec = await recording_of(world.db, lost)
    (world.storage.root / lost_rec.storage_key).unlink()
    page = await (await client.get("/search", params={"q": "pump/version"})).text()
    assert "The search is not complete" in page
    assert lost_rec.storage_key in page  # the recording it could not read, named
    assert "Searched 2 of 2 sessions." in page

    page = await (await client.get("/search", params={"q": "no such text anywhere"})).text()
    assert "No matches" in page

    resp = await client.get("/search", params={"q": " ", "from": "2025-03-14"})
    assert resp.status == 400 and "type something to search for" in await resp.text()
    [(_tag, _actor, detail)] = await audit_events("web:review:refused")
    assert detail["code"] == "search-query-empty"


# -- live sessions and kills -------------------------------------------------------------


async def test_kill_from_the_live_list_is_recorded_and_audited(
    world: World,
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    audit_events: AuditEvents,
    db: Sessions,
) -> None:
    ended = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    live = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    await as_security(client, make_staff, login)

    async def kills() -> list[tuple[str, str, dict[str, Any]]]:
        return [e for e in await audit_events("web:session:kill") if e[0] == "web:session:kill"]

    page = await (await client.get("/live")).text()
    assert session_links(page) == [live]
    assert f'action="/sessions/{live}/kill"' in page

    token = csrf_from(page)
    resp = await client.post(f"/sessions/{live}/kill", data={"_csrf": token})
    assert resp.status == 200 and resp.url.path == "/live"
    page = await resp.text()
    assert f"Session {live}: kill requested" in page
    assert "Kill requested by staff:sec" in page
    async with db() as s:
        row = await s.get(Session, live)
        assert row is not None and row.kill_requested_by == "staff:sec"
        assert row.kill_requested_at is not None
    [(_tag, actor, _detail)] = await kills()
    assert actor == "staff:sec"

    # too late for an ended session, and unknown ones: refused with the reason, audited
    resp = await client.post(f"/sessions/{ended}/kill", data={"_csrf": token})
    assert resp.status == 400
    assert f"session {ended} has already ended" in await resp.text()
    resp = await client.post(f"/sessions/{'0' * 32}/kill", data={"_csrf": token})
    assert resp.status == 404
    refusals = await audit_events("web:session:kill-refused")
    assert [d["code"] for _t, _a, d in refusals] == ["session-ended", "session-unknown"]
    async with db() as s:
        row = await s.get(Session, ended)
        assert row is not None and row.kill_requested_by is None

    # without the form's token nothing happens
    resp = await client.post(f"/sessions/{live}/kill", data={})
    assert resp.status == 403
    assert len(await kills()) == 1


@pytest.mark.integration
async def test_the_gateway_ends_a_session_killed_in_the_web(
    vendor: VendorLogin,
    pump: Device,
    gateway: Gateway,
    db: Sessions,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    tmp_path: Path,
) -> None:
    await grant(db, devices=["pump-12"])
    await as_security(client, make_staff, login)
    with pty_ssh(vendor, gateway, tmp_path / "pty") as term:
        await term.wait_for_async("Last login")
        page = await (await client.get("/live")).text()
        [live] = session_links(page)
        await client.post(f"/sessions/{live}/kill", data={"_csrf": csrf_from(page)})
        await term.wait_for_async("session ended by staff:sec")
        assert await wait_exit(term) != 0
    await settled(db)
    async with db() as s:
        row = await s.get(Session, live)
        assert row is not None
        assert (row.end_reason, row.kill_requested_by) == ("killed", "staff:sec")
    page = await (await client.get(f"/sessions/{live}")).text()
    assert "by staff:sec" in page and ">killed" in page


# -- a device's page ---------------------------------------------------------------------


async def test_device_page_lists_sessions_requests_and_events(
    world: World,
    web_app: WebApp,
    client: Client,
    make_staff: MakeStaff,
    login: Login,
    audit_events: AuditEvents,
) -> None:
    mine = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    theirs = await world.session(login="mon1", device="monitor-3", script=SHELL)
    await web_app.ctx.audit.record(
        "policy:device:updated", actor="staff:adm", device="pump-12", firmware="4.2.1"
    )
    await web_app.ctx.audit.record("policy:device:updated", actor="staff:adm", device="monitor-3")
    await as_security(client, make_staff, login)

    resp = await client.get("/devices/pump-12")
    page = await resp.text()
    assert resp.status == 200, page
    assert "<h1>Device pump-12</h1>" in page and "<code>10.1.0.12</code>" in page
    assert session_links(page) == [mine] and theirs not in page
    assert "replace the pump firmware" in page  # its access request
    assert "approve by sec1 (security)" in page
    assert page.count("<code>policy:device:updated</code>") == 1
    assert "&#34;firmware&#34;: &#34;4.2.1&#34;" in page

    resp = await client.get("/devices/no-such-device")
    assert resp.status == 404 and "there is no device no-such-device" in await resp.text()
    [(_tag, _actor, detail)] = await audit_events("web:review:refused")
    assert detail["code"] == "device-unknown"


# -- who may see what --------------------------------------------------------------------


async def test_vendors_and_biomed_are_refused_the_review_pages(
    world: World,
    web_app: WebApp,
    make_staff: MakeStaff,
    make_vendor_user: MakeVendorUser,
    login: Login,
    audit_events: AuditEvents,
    db: Sessions,
) -> None:
    sid = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    rec = await recording_of(world.db, sid)
    review_pages = [
        "/sessions",
        f"/sessions/{sid}",
        f"/sessions/{sid}/recordings/{rec.id}.cast",
        f"/sessions/{sid}/bundle.zip",
        "/search?q=pump",
        "/live",
    ]
    _vendor, password, secret = await make_vendor_user("vera")
    vendor_browser = web_app.browser()
    await login(vendor_browser, "vera", password, secret, kind="vendor")
    for path in [*review_pages, "/devices/pump-12"]:
        resp = await vendor_browser.get(path)
        assert resp.status == 403, path
        assert "this needs the " in await resp.text()
    token = csrf_from(await (await vendor_browser.get("/keys")).text())
    resp = await vendor_browser.post(f"/sessions/{sid}/kill", data={"_csrf": token})
    assert resp.status == 403

    _bio, password, secret = await make_staff("bea", ["biomed"])
    biomed = web_app.browser()
    await login(biomed, "bea", password, secret)
    for path in review_pages[:-1]:
        resp = await biomed.get(path)
        assert resp.status == 403, path
    live = await biomed.get("/live")  # biomed watches live sessions (web.terminal)
    assert live.status == 200 and "Kill</button>" not in await live.text()
    resp = await biomed.get("/devices/pump-12")
    page = await resp.text()
    assert resp.status == 200 and f"<code>{sid}</code>" in page
    assert f'href="/sessions/{sid}"' not in page  # listed, not linked: they cannot open it

    refused = await audit_events("web:access:refused")
    assert len(refused) == len(review_pages) * 2 + 1
    assert {a for _t, a, _d in refused} == {"vendor:vera", "staff:bea"}
    async with db() as s:
        row = await s.get(Session, sid)
        assert row is not None and row.kill_requested_at is None
    assert await audit_events("web:evidence:exported") == []


async def test_admin_may_review(
    world: World, client: Client, make_staff: MakeStaff, login: Login
) -> None:
    sid = await world.session(script=SHELL, ended=T0 + timedelta(minutes=5), end_reason="exit")
    _user, password, secret = await make_staff("adm", ["admin"])
    await login(client, "adm", password, secret)
    for path in ("/sessions", f"/sessions/{sid}", "/live", "/search?q=exit", "/devices/pump-12"):
        resp = await client.get(path)
        assert resp.status == 200, path
