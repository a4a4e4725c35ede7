"""Evidence bundles: export from the real database, verify offline, and every tamper fails."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.config import Settings
from policy.vault import Vault
from recorder import bundle, chain
from recorder.evidence import EvidenceError, export_bundle
from tests.support.evidence_world import World, build_world

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def world(db: Sessions, vault: Vault, settings: Settings) -> World:
    return await build_world(db, vault, settings)


async def export(world: World, out: Path, **scope: str) -> Path:
    async with world.db() as s:
        await export_bundle(s, world.storage, world.key, out, audit=world.audit, **scope)
    return out


def rewrite(src: Path, dst: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    """A copy of the bundle with one member's bytes changed (the zip itself consistent)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, change(data) if info.filename == name else data)
    return dst


def flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


async def test_session_bundle_verifies_offline_and_holds_the_evidence(
    world: World, tmp_path: Path
) -> None:
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    result = bundle.verify_bundle(path, world.key.public_key())
    assert result.ok, result.first_bad
    files = members(path)
    assert set(files) >= {"manifest.json", "manifest.sig", "public-key.pem", "sessions.json",
                          "access.json", "audit/events.jsonl", "audit/checkpoints.json",
                          "report.html"}  # fmt: skip
    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "sallyport-evidence/1"
    assert manifest["scope"] == {"kind": "session", "value": world.session_id}
    (rec_name,) = [n for n in files if n.startswith("recordings/")]
    assert files[rec_name] == world.storage.read(world.recording_key)
    session = json.loads(files["sessions.json"])["sessions"][0]
    assert session["vendor_user"]["vendor"] == "Infusia Medical"
    assert session["device"]["firmware"] == "4.2.1"  # the snapshot, not today's record
    assert session["recordings"][0]["sha256"] == hashlib.sha256(files[rec_name]).hexdigest()
    grant = json.loads(files["access.json"])["grants"][0]
    assert [a["approver"] for a in grant["request"]["approvals"]] == [
        "bea.biomed", "sam.security",
    ]  # fmt: skip

    events = [json.loads(line) for line in files["audit/events.jsonl"].splitlines()]
    shown = [e for e in events if not e.get("redacted")]
    hidden = [e for e in events if e.get("redacted")]
    assert {e["tag"] for e in shown} == {
        "broker:login:success", "policy:request:approve", "broker:session:start",
        "broker:transfer:file", "broker:recording:final", "broker:session:end",
    }  # fmt: skip
    assert all(e["actor"] != "vendor2" for e in shown)
    assert hidden and all(set(e) == {"id", "redacted", "content_hash", "prev_hash", "hash"}
                          for e in hidden)  # fmt: skip
    assert b"vendor2" not in files["audit/events.jsonl"]
    assert b"INC0000999" not in files["audit/events.jsonl"]

    report = files["report.html"].decode()
    for needle in ("vendor1", "pump-12", "CHG0001234", "bea.biomed", "sam.security",
                   "status", "cat /etc/pump.conf", "/var/log/pump.log", "exit"):  # fmt: skip
        assert needle in report, needle
    assert "<pre>status\ncat /etc/pump.conf</pre>" in report  # backspaces applied
    assert "<script>" not in report


async def test_ticket_bundle_covers_grant_and_sessions(world: World, tmp_path: Path) -> None:
    path = await export(world, tmp_path / "t.zip", ticket="CHG0001234")
    assert bundle.verify_bundle(path, world.key.public_key()).ok
    files = members(path)
    assert [s["id"] for s in json.loads(files["sessions.json"])["sessions"]] == ["a" * 32]
    assert json.loads(files["manifest.json"])["scope"] == {"kind": "ticket", "value": "CHG0001234"}


async def test_unknown_scope_is_refused(world: World, tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="no sessions or grants"):
        await export(world, tmp_path / "x.zip", ticket="CHG-NOPE")


MEMBERS = [
    "manifest.json", "manifest.sig", "public-key.pem", "sessions.json", "access.json",
    "audit/events.jsonl", "audit/checkpoints.json", "report.html", "recordings/",
]  # fmt: skip


@pytest.mark.parametrize("member", MEMBERS)
async def test_one_flipped_byte_in_any_file_fails_naming_it(
    world: World, tmp_path: Path, member: str
) -> None:
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    name = next(n for n in members(path) if n.startswith(member))
    bad = rewrite(path, tmp_path / "bad.zip", name, flip)
    for key in (None, world.key.public_key()):
        result = bundle.verify_bundle(bad, key)
        assert not result.ok
        assert result.first_bad is not None and name in result.first_bad, result.first_bad


async def test_flipped_byte_in_the_zip_data_fails_naming_the_file(
    world: World, tmp_path: Path
) -> None:
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("recordings/"))
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    result = bundle.verify_bundle(path)
    assert result.first_bad is not None and info.filename in result.first_bad


async def test_added_file_fails(world: World, tmp_path: Path) -> None:
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("recordings/extra.cast", b"planted")
    assert bundle.verify_bundle(path).first_bad == (
        "recordings/extra.cast: not listed in the manifest (added)"
    )


def resign(src: Path, dst: Path, attacker: Ed25519PrivateKey, recording: bytes) -> Path:
    """Everything a forger can do without the real key: new recording, checkpoints and
    manifest all signed with their own key."""
    files = members(src)
    manifest = json.loads(files["manifest.json"])
    rec_name = next(n for n in files if n.startswith("recordings/"))
    files[rec_name] = recording
    kid = chain.key_id(attacker.public_key())
    cps = json.loads(files["audit/checkpoints.json"])
    for cp in cps:
        cp["key_id"] = kid
        message = chain.checkpoint_message(
            cp["id"], cp["event_id"], cp["hash"], chain.parse_iso(cp["at"]), kid
        )
        cp["signature"] = chain.sign(attacker, message)
    files["audit/checkpoints.json"] = json.dumps(cps).encode()
    sessions = json.loads(files["sessions.json"])
    sessions["sessions"][0]["recordings"][0]["sha256"] = hashlib.sha256(recording).hexdigest()
    files["sessions.json"] = json.dumps(sessions).encode()
    for name in ("manifest.json", "manifest.sig", "public-key.pem"):
        del files[name]
    bundle.write_bundle(dst, files, key=attacker, scope=manifest["scope"],
                        audit=manifest["audit"], created_at=manifest["created_at"])  # fmt: skip
    return dst


async def test_bundle_resigned_with_another_key_fails_against_the_real_key(
    world: World, tmp_path: Path
) -> None:
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    attacker = Ed25519PrivateKey.generate()
    forged = resign(path, tmp_path / "forged.zip", attacker, b'{"version": 2}\n')
    # Self-consistent except that the audit chain says what the recording hashed to:
    rec_check = bundle.verify_bundle(forged)
    assert rec_check.first_bad is not None and "differs from audit event" in rec_check.first_bad
    result = bundle.verify_bundle(forged, world.key.public_key())
    assert not result.ok
    assert result.first_bad is not None
    assert result.first_bad.startswith("public-key.pem: the bundle is signed by key")
    same = resign(path, tmp_path / "same.zip", attacker, members(path)[
        next(n for n in members(path) if n.startswith("recordings/"))])  # fmt: skip
    assert bundle.verify_bundle(same).ok  # only the trusted key tells this one apart
    assert not bundle.verify_bundle(same, world.key.public_key()).ok


async def test_event_edited_in_the_database_before_export_fails_the_bundle(
    world: World, tmp_path: Path
) -> None:
    async with world.db() as s:
        await s.execute(
            text("UPDATE audit_event SET detail = :d WHERE tag = 'broker:transfer:file'"),
            {"d": json.dumps({"path": "/nothing", "size": 1})},
        )
        event_id = await s.scalar(
            text("SELECT id FROM audit_event WHERE tag = 'broker:transfer:file'")
        )
        await s.commit()
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    result = bundle.verify_bundle(path, world.key.public_key())
    assert result.first_bad == f"audit event {event_id}: content does not match its hash"


async def test_recording_changed_in_storage_fails_the_bundle(world: World, tmp_path: Path) -> None:
    target = world.storage.path(world.recording_key)
    target.chmod(0o640)
    target.write_bytes(target.read_bytes().replace(b"cat /etc/pump.conf", b"ls /tmp/nothing!!"))
    async with world.db() as s:
        out = tmp_path / "ev.zip"
        result = await export_bundle(
            s, world.storage, world.key, out, session_id=world.session_id, audit=world.audit
        )
    assert any("changed after the session" in w for w in result.warnings)
    check = bundle.verify_bundle(out, world.key.public_key())
    assert check.first_bad is not None
    assert "SHA-256 differs from the one recorded at session end" in check.first_bad


async def test_expired_recording_is_explained_and_the_bundle_verifies(
    world: World, tmp_path: Path
) -> None:
    from recorder.retention import expire_recordings

    later = datetime.now(UTC) + timedelta(days=31)
    expired = await expire_recordings(world.db, world.storage, world.audit, 30, now=later)
    assert [e.key for e in expired] == [world.recording_key]
    path = await export(world, tmp_path / "ev.zip", session_id=world.session_id)
    assert bundle.verify_bundle(path, world.key.public_key()).ok
    files = members(path)
    assert not [n for n in files if n.startswith("recordings/")]
    rec = json.loads(files["sessions.json"])["sessions"][0]["recordings"][0]
    assert rec["status"] == "expired" and rec["missing"].startswith("expired by retention")
    assert b"recorder:recording:expire" in files["audit/events.jsonl"]
