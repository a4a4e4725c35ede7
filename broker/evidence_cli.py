"""Evidence commands: ``audit verify``, ``evidence export|verify``, ``sessions list``,
``recordings expire``, ``audit public-key``.

``register(sub, common)`` adds them to the ``sallyport`` parser. Verification commands
exit 0 when intact and 1 naming the first bad item; usage and setup errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from policy import admin
from policy.models import Device, Session, VendorUser
from recorder import chain

BROKEN = 1


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="the audit hash chain").add_subparsers(metavar="ACTION")
    p = audit.add_parser("verify", parents=[common], help="verify the audit chain")
    p.add_argument("--public-key", type=Path, help="trusted PEM public key (default: own key)")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("public-key", parents=[common], help="print the audit public key")
    p.add_argument("-o", "--output", type=Path, help="write the PEM to FILE")
    p.set_defaults(func=cmd_audit_public_key)

    ev = sub.add_parser("evidence", help="signed evidence bundles").add_subparsers(metavar="ACTION")
    p = ev.add_parser("export", parents=[common], help="export a bundle for a session/ticket")
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--session", metavar="ID")
    scope.add_argument("--ticket", metavar="REF")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=cmd_evidence_export)
    p = ev.add_parser("verify", parents=[common], help="verify a bundle offline")
    p.add_argument("bundle", type=Path, metavar="FILE")
    p.add_argument("--public-key", type=Path, help="trusted PEM public key the bundle must use")
    p.set_defaults(func=cmd_evidence_verify)

    ses = sub.add_parser("sessions", help="recorded sessions").add_subparsers(metavar="ACTION")
    p = ses.add_parser("list", parents=[common], help="list sessions, newest first")
    p.add_argument("--ticket", help="only this ticket")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_sessions_list)
    p = ses.add_parser("kill", parents=[common], help="end a live session (any gateway node)")
    p.add_argument("session_id")
    p.set_defaults(func=cmd_sessions_kill)

    rec = sub.add_parser("recordings", help="recording storage").add_subparsers(metavar="ACTION")
    p = rec.add_parser("expire", parents=[common], help="delete recordings past retention")
    p.add_argument("--days", type=int, help="override [recordings] retention_days")
    p.set_defaults(func=cmd_recordings_expire)


def _public_key(path: Path | None, settings_key: Path | None) -> Any:
    from broker.cli import CliError
    from policy.keyfiles import load_signing_key

    if path is not None:
        try:
            return chain.load_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CliError(f"{path}: {exc}") from None
    assert settings_key is not None
    return load_signing_key(settings_key).public_key()


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from broker.cli import settings_from, with_db
    from recorder.verify import verify_chain

    settings = settings_from(args)
    key = _public_key(args.public_key, settings.audit_key_path)
    result = with_db(settings, lambda db: verify_chain(db, key))
    if not result.ok:
        print(
            f"audit chain BROKEN after {result.checked} good events: {result.first_bad}",
            file=sys.stderr,
        )
        return BROKEN
    print(
        f"audit chain intact: {result.checked} events, {result.checkpoints} signed "
        f"checkpoints, {result.uncovered} events after the newest checkpoint "
        f"(key {chain.key_id(key)[:16]}...)"
    )
    return 0


def cmd_audit_public_key(args: argparse.Namespace) -> int:
    from broker.cli import settings_from

    settings = settings_from(args)
    pem = chain.public_key_pem(_public_key(None, settings.audit_key_path))
    if args.output is not None:
        args.output.write_bytes(pem)
    else:
        sys.stdout.write(pem.decode())
    return 0


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from broker.cli import settings_from, with_db
    from policy.keyfiles import load_signing_key
    from recorder.audit import AuditLog
    from recorder.backends import open_storage
    from recorder.evidence import ExportResult, export_bundle

    settings = settings_from(args)
    key = load_signing_key(settings.audit_key_path)
    storage = open_storage(settings)

    async def work(db: AsyncSession) -> ExportResult:
        sessions = async_sessionmaker(db.bind, expire_on_commit=False)
        audit = AuditLog.from_settings(sessions, settings)
        return await export_bundle(
            db, storage, key, args.output, session_id=args.session, ticket=args.ticket, audit=audit
        )

    try:
        result = with_db(settings, work)
    finally:
        storage.close()
    for warning in result.warnings:
        print(f"sallyport: warning: {warning}", file=sys.stderr)
    span = f"audit events {result.slice[0]}..{result.slice[1]}" if result.slice else "no events"
    print(
        f"wrote {result.path}: {result.sessions} sessions, {result.recordings} recordings, "
        f"{result.events_in_scope} audit events in scope ({span})"
    )
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from recorder.bundle import verify_bundle

    key = _public_key(args.public_key, None) if args.public_key is not None else None
    result = verify_bundle(args.bundle, key)
    if not result.ok:
        print(f"evidence bundle BROKEN: {result.first_bad}", file=sys.stderr)
        return BROKEN
    trust = "the given public key" if key is not None else "its own bundled key (no --public-key)"
    print(
        f"evidence bundle intact: {result.files} files, {result.events} audit events, "
        f"{result.checkpoints} checkpoints, signed by {trust} {result.key_id[:16]}..."
    )
    return 0


async def _sessions(db: AsyncSession, ticket: str | None, limit: int) -> list[dict[str, Any]]:
    query = (
        select(Session, VendorUser.login, Device.name)
        .join(VendorUser, VendorUser.id == Session.vendor_user_id)
        .join(Device, Device.id == Session.device_id)
        .options(selectinload(Session.recordings))
        .order_by(Session.started_at.desc(), Session.id)
        .limit(limit)
    )
    if ticket is not None:
        query = query.where(Session.ticket_ref == ticket)
    out = []
    for session, login, device in (await db.execute(query)).all():
        out.append(
            {
                "id": session.id,
                "vendor_user": login,
                "device": device,
                "ticket": session.ticket_ref,
                "kind": session.kind,
                "started_at": chain.iso(session.started_at),
                "ended_at": chain.iso(session.ended_at) if session.ended_at else None,
                "end_reason": session.end_reason,
                "recordings": [
                    {"key": r.storage_key, "status": str(r.status), "sha256": r.sha256}
                    for r in sorted(session.recordings, key=lambda r: r.id)
                ],
            }
        )
    return out


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from broker.cli import settings_from, with_db

    settings = settings_from(args)
    rows = with_db(settings, lambda db: _sessions(db, args.ticket, args.limit))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("SESSION", "VENDOR USER", "DEVICE", "TICKET", "START", "END", "REASON", "SHA-256")
    table = [header]
    for r in rows:
        hashes = ",".join((x["sha256"] or x["status"])[:16] for x in r["recordings"]) or "-"
        table.append(
            (
                r["id"],
                r["vendor_user"],
                r["device"],
                r["ticket"],
                r["started_at"][:19],
                (r["ended_at"] or "open")[:19],
                r["end_reason"] or "-",
                hashes,
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_recordings_expire(args: argparse.Namespace) -> int:
    from broker.cli import CliError, settings_from
    from policy.db import create_engine, session_factory
    from recorder.audit import AuditLog
    from recorder.backends import open_storage
    from recorder.retention import Expired, expire_recordings

    settings = settings_from(args)
    days = args.days if args.days is not None else settings.recordings_retention_days
    if days <= 0:
        raise CliError("no retention configured: set [recordings] retention_days or --days N")

    async def run() -> list[Expired]:
        engine = create_engine(settings.database_url)
        storage = open_storage(settings)
        try:
            sessions = session_factory(engine)
            audit = AuditLog.from_settings(sessions, settings)
            return await expire_recordings(sessions, storage, audit, days)
        finally:
            storage.close()
            await engine.dispose()

    expired = asyncio.run(run())
    for item in expired:
        print(f"expired {item.key} (sha256 {item.sha256})")
    print(f"{len(expired)} recordings older than {days} days expired")
    return 0


def cmd_sessions_kill(args: argparse.Namespace) -> int:
    from broker.cli import settings_from, with_db

    settings = settings_from(args)
    by = f"cli:{getpass.getuser()}"
    with_db(
        settings,
        lambda db: admin.request_kill(db, args.session_id, by),
        "policy:session:kill",
        session_id=args.session_id,
    )
    print(f"session {args.session_id}: kill requested; the gateway holding it ends it")
    return 0
