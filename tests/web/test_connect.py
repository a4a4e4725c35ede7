"""The "how to connect" page (web/requests.py, GET /connect): exact lines, and they work."""

from __future__ import annotations

import asyncio
import html
import re
import shlex
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncssh
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.ca import load_ca
from broker.gateway import Gateway
from policy import admin
from policy.config import Settings
from policy.models import Device
from policy.vault import Vault
from policy.windows import Weekly
from tests.conftest import VendorLogin, grant
from tests.support.openssh import SshResult, client_env, make_askpass
from tests.web.conftest import Login, MakeVendorUser, WebApp
from tests.web.test_vendor_requests import add_inventory

Client = TestClient[Any, Any]
Sessions = async_sessionmaker[AsyncSession]


def lines_of(page: str, kind: str) -> list[str]:
    """The text of each copy-paste block of ``kind`` on the page."""
    found = re.findall(rf'<code class="\w+" data-kind="{kind}">(.*?)</code>', page, re.S)
    return [html.unescape(text) for text in found]


def when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def public_line(path: Path) -> str:
    algorithm, blob = asyncssh.read_private_key(path).export_public_key().decode().split()[:2]
    return f"{algorithm} {blob}"


@pytest.fixture
async def eng(
    web_app: WebApp,
    client: Client,
    db: Sessions,
    vault: Vault,
    make_vendor_user: MakeVendorUser,
    login: Login,
) -> Client:
    """eng1 of Infusia Medical, signed in; the gateway is gw.example.org port 2222."""
    await add_inventory(web_app, db, vault)
    web_app.ctx.settings = replace(
        web_app.ctx.settings, gateway_public_host="gw.example.org", gateway_public_port=2222
    )
    _user, password, secret = await make_vendor_user("eng1")
    await login(client, "eng1", password, secret, kind="vendor")
    return client


async def add_grant(db: Sessions, **values: Any) -> int:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "login": "eng1",
        "services": ["ssh"],
        "start": now - timedelta(minutes=1),
        "end": now + timedelta(hours=2),
        "approved_by": "biomed:bea",
        **values,
    }
    async with db() as s:
        return (await admin.add_grant(s, **fields)).id


async def test_the_lines_for_a_grant_are_exact(
    web_app: WebApp,
    eng: Client,
    db: Sessions,
    settings: Settings,
    make_vendor_user: MakeVendorUser,
) -> None:
    now = datetime.now(UTC)
    await add_grant(db, devices=["pump-12"], services=["ssh", "https"], ticket="CHG0000001")
    later = now + timedelta(hours=3)
    await add_grant(
        db,
        devices=["pump-13"],
        ticket="CHG0000002",
        transfers="none",
        start=later,
        end=later + timedelta(hours=1),
    )
    # none of these is the vendor user's live grant
    await make_vendor_user("eng2")
    await add_grant(db, login="eng2", devices=["pump-13"], ticket="CHG0000097")
    await add_grant(
        db, devices=["pump-13"], ticket="CHG0000098", start=now - timedelta(hours=3), end=now
    )
    revoked = await add_grant(db, devices=["pump-13"], ticket="CHG0000099")
    async with db() as s:
        await admin.revoke_grant(s, revoked, "staff:bea", "ticket closed")

    page = await (await eng.get("/connect")).text()
    assert "CHG0000001" in page and "CHG0000002" in page
    for ticket in ("CHG0000097", "CHG0000098", "CHG0000099"):
        assert ticket not in page
    assert lines_of(page, "ssh") == [
        "ssh -p 2222 eng1:pump-12@gw.example.org",
        "ssh -p 2222 eng1:pump-13@gw.example.org",
    ]
    assert lines_of(page, "jump") == [
        "ssh -J eng1@gw.example.org:2222 eng1@pump-12",
        "ssh -J eng1@gw.example.org:2222 eng1@pump-13",
    ]
    # the grant without file transfers gets no sftp line
    assert lines_of(page, "sftp") == ["sftp -o User=eng1:pump-12 -P 2222 gw.example.org"]
    assert lines_of(page, "forward") == ["ssh -p 2222 -N -L 8443:pump-12:443 eng1@gw.example.org"]
    assert "use <code>https://localhost:8443/</code>" in page
    assert lines_of(page, "ssh-config") == [
        "Host sallyport\n"
        "    HostName gw.example.org\n"
        "    Port 2222\n"
        "    User eng1\n"
        "\n"
        "Host pump-12\n"
        "    User eng1\n"
        "    ProxyJump sallyport\n"
        "\n"
        "Host sallyport-pump-12\n"
        "    HostName gw.example.org\n"
        "    Port 2222\n"
        "    User eng1:pump-12\n"
        "\n"
        "Host pump-13\n"
        "    User eng1\n"
        "    ProxyJump sallyport\n"
        "\n"
        "Host sallyport-pump-13\n"
        "    HostName gw.example.org\n"
        "    Port 2222\n"
        "    User eng1:pump-13\n"
    ]
    # the gateway's keys from the data dir: what `sallyport ca known-hosts` prints, too
    ca = load_ca(settings.ca_key_path, settings.host_key_path)
    assert lines_of(page, "known-hosts") == [
        f"[gw.example.org]:2222 {public_line(settings.host_key_path)}\n{ca.known_hosts_line()}\n"
    ]
    fingerprint = ca.host_key.get_fingerprint("sha256")
    assert f'<code id="fingerprint">{fingerprint}</code>' in page
    assert f"<strong>open</strong>, until {when(now + timedelta(hours=2))}" in page
    assert f"closed; <strong>opens {when(later)}</strong>" in page
    assert "<dt>File transfers</dt><dd>none</dd>" in page


async def test_a_weekly_grant_says_when_it_opens_next(
    web_app: WebApp, eng: Client, db: Sessions
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = datetime.now(UTC).astimezone(berlin).date() + timedelta(days=2)
    weekly = Weekly(frozenset({day.weekday()}), time(10), time(11), "Europe/Berlin")
    now = datetime.now(UTC)
    await add_grant(
        db,
        devices=["pump-12"],
        ticket="CHG0000003",
        recurrence=weekly,
        end=now + timedelta(days=20),
    )
    opening = datetime.combine(day, time(10), berlin)
    page = await (await eng.get("/connect")).text()
    assert f"<dd>only {weekly.describe()}</dd>" in page
    local = f"{opening:%a %d %b} 10:00 Europe/Berlin"
    assert f"closed; <strong>opens {when(opening)}</strong> ({local})" in page
    assert lines_of(page, "ssh") == ["ssh -p 2222 eng1:pump-12@gw.example.org"]


async def test_without_grants_the_page_says_where_to_go(eng: Client) -> None:
    page = await (await eng.get("/connect")).text()
    assert "You have no grant that is running or still to come." in page
    assert lines_of(page, "ssh") == [] and lines_of(page, "ssh-config") == []


async def test_the_host_key_is_left_out_when_the_web_cannot_read_it(
    web_app: WebApp, eng: Client, db: Sessions, tmp_path: Path
) -> None:
    elsewhere = replace(web_app.ctx.settings, data_dir=tmp_path / "web-only-node")
    web_app.ctx.settings = elsewhere
    await add_grant(db, devices=["pump-12"], ticket="CHG0000004")
    page = await (await eng.get("/connect")).text()
    assert lines_of(page, "known-hosts") == []
    assert "This portal cannot read the gateway's host key." in page
    assert not (tmp_path / "web-only-node").exists()  # it never makes keys of its own


# --- the real client --------------------------------------------------------------------


async def run_client(
    argv: list[str], config: Path, vendor: VendorLogin, stdin: bytes = b""
) -> SshResult:
    """Run the command as copied from the page, with the vendor's own ``-F`` config (key,
    known hosts) put first; the TOTP prompt is answered with a fresh code."""
    askpass = make_askpass(vendor.workdir, [vendor.code()])
    proc = await asyncio.create_subprocess_exec(
        argv[0],
        "-F",
        str(config),
        *argv[1:],
        env=client_env(askpass.env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert any("Verification code" in p for p in askpass.prompts())
    return SshResult(proc.returncode or 0, out, err.decode(errors="replace"))


@pytest.mark.integration
async def test_the_commands_on_the_page_work_with_openssh(
    web_app: WebApp,
    client: Client,
    login: Login,
    vendor: VendorLogin,
    pump: Device,
    gateway: Gateway,
    db: Sessions,
    tmp_path: Path,
) -> None:
    web_app.ctx.settings = replace(
        web_app.ctx.settings, gateway_public_host="127.0.0.1", gateway_public_port=gateway.port
    )
    await grant(db, devices=["pump-12"])
    assert vendor.password is not None
    await login(client, "vendor1", vendor.password, vendor.secret, kind="vendor")
    page = await (await client.get("/connect")).text()
    (ssh_line,) = lines_of(page, "ssh")
    (jump_line,) = lines_of(page, "jump")
    (sftp_line,) = lines_of(page, "sftp")
    (known,) = lines_of(page, "known-hosts")
    (snippet,) = lines_of(page, "ssh-config")
    assert ssh_line == f"ssh -p {gateway.port} vendor1:pump-12@127.0.0.1"

    # the vendor's machine: the page's known_hosts lines and config snippet, their key
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known)
    config = tmp_path / "ssh_config"
    config.write_text(
        snippet
        + "\nHost *\n"
        + f"    IdentityFile {vendor.identity.private_key}\n"
        + "    IdentitiesOnly yes\n"
        + f"    UserKnownHostsFile {known_hosts}\n"
        + "    GlobalKnownHostsFile /dev/null\n"
        + "    StrictHostKeyChecking yes\n"
        + "    PreferredAuthentications publickey,keyboard-interactive\n"
    )
    runs = [
        ([*shlex.split(ssh_line), "echo via-ssh-line"], b"", "via-ssh-line"),
        ([*shlex.split(jump_line), "echo via-jump-line"], b"", "via-jump-line"),
        (shlex.split(sftp_line), b"pwd\nbye\n", "Remote working directory: /"),
        (["ssh", "pump-12", "echo via-config-jump"], b"", "via-config-jump"),
        (["ssh", "sallyport-pump-12", "echo via-config"], b"", "via-config"),
        (["sftp", "sallyport-pump-12"], b"pwd\nbye\n", "Remote working directory: /"),
    ]
    for argv, stdin, expected in runs:
        result = await run_client(argv, config, vendor, stdin)
        assert result.returncode == 0, (argv, result.stderr)
        assert expected in result.stdout.decode(), (argv, result.stdout)
