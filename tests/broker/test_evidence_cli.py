"""The evidence commands against a real database, and one real session end to end:
OpenSSH -> gateway -> sshd, exported, verified offline, tampered, refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy.config import Settings, render_settings
from policy.models import AuditEvent, Device
from policy.vault import Vault
from tests.broker.test_cli import run_cli
from tests.broker.test_gateway import only_session, pty_ssh, wait_exit
from tests.conftest import VendorLogin, grant
from tests.support.evidence_world import World, build_world

Sessions = async_sessionmaker[AsyncSession]


def cli(argv: list[str]) -> int:
    """``sallyport ARGV``, through the real entry point."""
    return run_cli(argv)


@pytest.fixture
def config(settings: Settings, tmp_path: Path) -> list[str]:
    path = tmp_path / "sallyport.toml"
    path.write_text(render_settings(settings))
    return ["--config", str(path)]


@pytest.fixture
async def world(db: Sessions, vault: Vault, settings: Settings) -> World:
    return await build_world(db, vault, settings)


def sql(settings: Settings, statement: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(
        settings.database_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    )
    with engine.begin() as conn:
        conn.execute(text(statement))
    engine.dispose()


def test_audit_verify_passes_then_names_the_edited_event(
    world: World, settings: Settings, config: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["audit", "verify", *config]) == 0
    assert "audit chain intact: 9 events" in capsys.readouterr().out
    sql(settings, "UPDATE audit_event SET actor = 'nobody' WHERE id = 6")
    assert cli(["audit", "verify", *config]) == 1
    err = capsys.readouterr().err
    assert "audit event 6: content does not match its hash (edited)" in err


def test_audit_verify_against_another_public_key_fails(
    world: World, config: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from recorder.chain import public_key_pem

    other = tmp_path / "other.pem"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    assert cli(["audit", "verify", "--public-key", str(other), *config]) == 1
    assert "signed by key" in capsys.readouterr().err


def test_export_verify_and_tamper(
    world: World, config: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pem = tmp_path / "ev.zip", tmp_path / "audit.pem"
    assert cli(["audit", "public-key", "-o", str(pem), *config]) == 0
    assert cli(["evidence", "export", "--ticket", "CHG0001234", "-o", str(out), *config]) == 0
    assert "1 sessions, 1 recordings" in capsys.readouterr().out
    assert cli(["evidence", "verify", str(out), "--public-key", str(pem)]) == 0
    assert "evidence bundle intact" in capsys.readouterr().out
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr("notes.txt", b"added later")
    assert cli(["evidence", "verify", str(out)]) == 1
    assert "notes.txt: not listed in the manifest" in capsys.readouterr().err


def test_export_of_an_unknown_session_is_an_error(
    world: World, config: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.zip"
    assert cli(["evidence", "export", "--session", "f" * 32, "-o", str(out), *config]) == 2
    assert "no sessions or grants" in capsys.readouterr().err
    assert not out.exists()


def test_sessions_list_table_and_json(
    world: World, config: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["sessions", "list", "--json", *config]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    mine = rows[world.session_id]
    assert (mine["vendor_user"], mine["device"], mine["ticket"]) == (
        "vendor1",
        "pump-12",
        "CHG0001234",
    )
    assert mine["recordings"][0]["key"] == world.recording_key
    digest = hashlib.sha256(world.storage.read(world.recording_key)).hexdigest()
    assert mine["recordings"][0]["sha256"] == digest
    assert cli(["sessions", "list", "--ticket", "CHG0001234", *config]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SESSION", "VENDOR", "USER"]
    assert len(table) == 2 and world.session_id in table[1] and digest[:16] in table[1]


def test_recordings_expire_keeps_the_evidence_verifiable(
    world: World,
    settings: Settings,
    config: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(["recordings", "expire", *config]) == 2  # no retention configured
    assert cli(["recordings", "expire", "--days", "30", *config]) == 0
    assert "0 recordings" in capsys.readouterr().out
    sql(settings, "UPDATE recording SET finished_at = '2020-01-01 00:00:00'")
    assert cli(["recordings", "expire", "--days", "30", *config]) == 0
    assert f"expired {world.recording_key}" in capsys.readouterr().out
    assert cli(["audit", "verify", *config]) == 0
    out = tmp_path / "after.zip"
    assert cli(["evidence", "export", "--session", world.session_id, "-o", str(out), *config]) == 0
    assert cli(["evidence", "verify", str(out)]) == 0


async def test_real_session_exported_and_verified_offline(
    vendor: VendorLogin,
    pump: Device,
    db: Sessions,
    gateway: Gateway,
    config: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await grant(db, devices=["pump-12"])
    with pty_ssh(vendor, gateway, tmp_path / "pty") as term:
        term.sendline("echo evidence-$((6*7))")
        await term.wait_for_async("evidence-42")
        term.sendline("exit 0")
        assert await wait_exit(term) == 0
    session, recording = await only_session(db)
    for _ in range(100):  # the end of the session is audited just after the rows settle
        async with db() as s:
            if await s.scalar(select(AuditEvent.id).where(AuditEvent.tag == "broker:session:end")):
                break
        await asyncio.sleep(0.05)

    out, pem = tmp_path / "session.zip", tmp_path / "audit.pem"
    export = ["evidence", "export", "--session", session.id, "-o", str(out), *config]
    assert await asyncio.to_thread(cli, export) == 0
    assert await asyncio.to_thread(cli, ["audit", "public-key", "-o", str(pem), *config]) == 0
    capsys.readouterr()
    assert cli(["evidence", "verify", str(out), "--public-key", str(pem)]) == 0

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        (rec_name,) = [n for n in names if n.startswith("recordings/")]
        data = zf.read(rec_name)
        report = zf.read("report.html").decode()
        events = [json.loads(line) for line in zf.read("audit/events.jsonl").splitlines()]
    assert data == gateway.ctx.storage.read(recording.storage_key)
    assert hashlib.sha256(data).hexdigest() == recording.sha256
    assert "echo evidence-$((6*7))" in report and "vendor1" in report and "pump-12" in report
    tags = {e["tag"] for e in events if not e.get("redacted")}
    assert {
        "broker:login:success",
        "broker:session:start",
        "broker:recording:final",
        "broker:session:end",
    } <= tags

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(out) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info.filename)
            if info.filename == rec_name:
                body = body.replace(b"evidence-42", b"evidence-43")
            zout.writestr(info.filename, body)
    capsys.readouterr()
    assert cli(["evidence", "verify", str(tampered), "--public-key", str(pem)]) == 1
    assert f"{rec_name}: SHA-256 differs from the manifest" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, ["audit", "verify", *config]) == 0
