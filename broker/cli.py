"""``sallyport``: the command line and composition root."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from broker import evidence_cli
from broker import logging as splog
from broker.ca import load_ca
from broker.errors import BrokerError
from broker.gateway import Gateway, build_context, start_gateway
from broker.keys import load_host_key
from broker.tasks import TaskSet
from policy import admin, migrate, totp
from policy.config import Settings, load_settings
from policy.db import create_engine, session_factory
from policy.errors import InvalidInput, PolicyError
from policy.keyfiles import load_signing_key, load_vault
from policy.models import CredentialKind, Criticality
from policy.notify import Notifier
from policy.windows import Weekly
from recorder.audit import AuditLog
from recorder.errors import RecorderError
from web.app import start_web
from web.context import WebContext

DESCRIPTION = """\
sallyport is the gate between outside medical-device vendors and a hospital's device
networks: a vendor gets a time-bound, MFA-gated session to specific devices, per an
approved ticket, with stock OpenSSH or a browser; every session is recorded and every
decision is evidence in a tamper-evident audit chain.

Start with `sallyport demo` (a demo hospital on SQLite) or `sallyport serve --config FILE`
(gateway and portal). Each command below has its own --help."""

T = TypeVar("T")


class CliError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except (PolicyError, RecorderError, BrokerError) as exc:
        print(f"sallyport: error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"sallyport: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SALLYPORT_CONFIG"),
        help="TOML config file (default: $SALLYPORT_CONFIG)",
    )
    parser = argparse.ArgumentParser(
        prog="sallyport",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Docs: README.md, docs/DEPLOYMENT.md, docs/ARCHITECTURE.md, docs/SECURITY.md",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("serve", parents=[common], help="run the SSH gateway and the web server")
    p.add_argument(
        "--only",
        choices=("gateway", "web"),
        default=None,
        help="run one of the two (several gateway nodes behind one web node, say)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", parents=[common], help="run a demo hospital on SQLite")
    p.add_argument("--data", type=Path, default=Path("sallyport-demo"), help="demo data directory")
    p.add_argument("--ssh-port", type=int, default=2222)
    p.add_argument("--web-port", type=int, default=8080)
    p.add_argument("--browser-port", type=int, default=8022, help="the browser door's port")
    p.add_argument("--code", action="store_true", help="print the demo vendor's current code")
    p.add_argument(
        "--who", default=None, help="with --code: a demo staff login (biomed1, security1, admin1)"
    )
    p.set_defaults(func=cmd_demo)

    _admin_parsers(sub, common)
    evidence_cli.register(sub, common)
    return parser


def _admin_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    seg = sub.add_parser("segment", help="network segments").add_subparsers(metavar="ACTION")
    p = seg.add_parser("add", parents=[common], help="add a segment")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument(
        "--network", action="append", default=[], help="CIDR of the segment (repeatable)"
    )
    p.set_defaults(func=cmd_segment_add)

    dev = sub.add_parser("device", help="device inventory").add_subparsers(metavar="ACTION")
    p = dev.add_parser("add", parents=[common], help="add a device")
    p.add_argument("name")
    p.add_argument("--segment", required=True)
    p.add_argument("--address", required=True, help="IP address (names are never resolved)")
    p.add_argument("--service", action="append", default=[], help="NAME:PORT, e.g. ssh:22")
    p.add_argument("--criticality", choices=[c.value for c in Criticality], default="medium")
    p.add_argument("--username", help="device account the gateway logs in with")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--password-env", metavar="VAR", help="read the device password from $VAR")
    cred.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    cred.add_argument("--key-file", type=Path, help="private key file for the device account")
    hk = p.add_mutually_exclusive_group()
    hk.add_argument("--host-key", help='pinned host key, "ssh-ed25519 AAAA..."')
    hk.add_argument("--host-key-file", type=Path, help="file holding the pinned host key")
    for field in ("asset-tag", "manufacturer", "model", "firmware", "location"):
        p.add_argument(f"--{field}", default="")
    p.set_defaults(func=cmd_device_add)

    ven = sub.add_parser("vendor", help="vendor organizations").add_subparsers(metavar="ACTION")
    p = ven.add_parser("add", parents=[common], help="add a vendor organization")
    p.add_argument("name")
    p.set_defaults(func=cmd_vendor_add)

    vu = sub.add_parser("vendor-user", help="vendor users").add_subparsers(metavar="ACTION")
    p = vu.add_parser("add", parents=[common], help="add a vendor user (prints TOTP enrollment)")
    p.add_argument("login")
    p.add_argument("--vendor", required=True)
    p.add_argument("--key-file", type=Path, action="append", default=[], help="SSH public key")
    p.add_argument("--password-env", metavar="VAR", help="read a login password from $VAR")
    p.add_argument("--name", default="")
    p.add_argument("--email", default="")
    p.set_defaults(func=cmd_vendor_user_add)

    ca = sub.add_parser("ca", help="the gateway's SSH certificate authority")
    p = ca.add_subparsers(metavar="ACTION").add_parser(
        "known-hosts", parents=[common], help="print the @cert-authority line vendors add"
    )
    p.set_defaults(func=cmd_ca_known_hosts)

    gr = sub.add_parser("grant", help="approved grants").add_subparsers(metavar="ACTION")
    p = gr.add_parser("revoke", parents=[common], help="revoke a grant; live sessions end")
    p.add_argument("grant_id", type=int)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_grant_revoke)
    p = gr.add_parser("add", parents=[common], help="add an approved grant")
    p.add_argument("--login", required=True)
    p.add_argument("--device", action="append", required=True)
    p.add_argument("--service", action="append", default=[])
    p.add_argument("--ticket", required=True)
    p.add_argument("--start", type=parse_time, help="ISO 8601 with zone (default: now)")
    win = p.add_mutually_exclusive_group(required=True)
    win.add_argument("--end", type=parse_time, help="ISO 8601 with zone")
    win.add_argument("--hours", type=float, help="window length from start")
    p.add_argument(
        "--transfers",
        choices=["read-write", "download-only", "upload-only", "none"],
        default="read-write",
        help="what sftp/scp may do on the granted devices",
    )
    p.add_argument(
        "--recurring",
        type=parse_recurring,
        metavar="DAYS,HH:MM-HH:MM,TZ",
        help="sessions only inside this weekly window, e.g. mon-fri,22:00-02:00,Europe/Berlin"
        " (an end before the start runs past midnight)",
    )
    p.add_argument("--approved-by", default=None)
    p.add_argument(
        "--moderated",
        action="store_true",
        help="sessions take input only while a biomed or security observer watches",
    )
    p.set_defaults(func=cmd_grant_add)


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z or +HH:MM")
    return value.astimezone(UTC)


def parse_recurring(text: str) -> Weekly:
    try:
        return Weekly.from_spec(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def settings_from(args: argparse.Namespace) -> Settings:
    config: Path | None = args.config
    if config is None and "SALLYPORT_DATA_DIR" not in os.environ:
        raise CliError("give --config FILE (sallyport demo writes one) or set SALLYPORT_DATA_DIR")
    return load_settings(config)


def prepare(settings: Settings) -> None:
    """Create the data dir and its keys (0600, first run only) and migrate the schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.recordings_dir.mkdir(parents=True, exist_ok=True)
    load_vault(settings.vault_key_path)
    load_signing_key(settings.audit_key_path)
    load_host_key(settings.host_key_path)
    load_host_key(settings.ca_key_path)
    migrate.upgrade(settings.database_url)


def with_db(
    settings: Settings,
    work: Callable[[AsyncSession], Awaitable[T]],
    audit: str | None = None,
    **detail: Any,
) -> T:
    """Run ``work`` in a database session; with ``audit``, record the change as an event
    (tag ``policy:SUBJECT:ACTION``) by the operating-system user who ran the command."""

    async def run() -> T:
        engine = create_engine(settings.database_url)
        try:
            sessions = session_factory(engine)
            async with sessions() as db:
                result = await work(db)
            if audit is not None:
                await AuditLog(sessions).record(audit, actor=f"cli:{getpass.getuser()}", **detail)
            return result
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    prepare(settings)
    print(f"database at {settings.database_url.split('@')[-1]} is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    splog.configure(settings.log_format, settings.log_level)
    prepare(settings)
    run_loop(serve(settings, only=args.only))
    return 0


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (the ``fast`` extra), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve(
    settings: Settings,
    ready: Callable[[int, int], None] | None = None,
    only: str | None = None,
) -> None:
    """Run gateway and web (or ``only`` one of them) until SIGINT/SIGTERM."""
    gateway: Gateway | None = None
    web_only: WebOnly | None = None
    if only != "web":
        ctx = build_context(settings)
        gateway = await start_gateway(ctx)
        web_ctx = WebContext(
            sessions=ctx.sessions,
            settings=settings,
            vault=ctx.vault,
            audit=ctx.audit,
            clock=ctx.clock,
            notifier=ctx.notifier,
        )
    else:
        web_only = WebOnly(settings)
        web_ctx = web_only.context
    runner = None
    try:
        if only != "gateway":
            runner = await start_web(web_ctx, settings.web_host, settings.web_port)
    except OSError as exc:
        await _close(gateway, web_only)
        raise BrokerError(
            "listen-failed",
            f"cannot listen on {settings.web_host}:{settings.web_port}: {exc.strerror or exc}",
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(gateway.port if gateway else 0, settings.web_port if runner else 0)
    try:
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await _close(gateway, web_only)


class WebOnly:
    """What a web node runs without a gateway: its database pool, audit log (with the
    spool upkeep and checkpoints) and notifier."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings.database_url)
        sessions = session_factory(self.engine)
        audit = AuditLog.from_settings(sessions, settings)
        notifier = Notifier.from_settings(settings, audit)
        notifier.start()
        self.tasks = TaskSet()
        self.tasks.spawn(audit.run_checkpoints(), name="checkpoints")
        self.context = WebContext(
            sessions=sessions,
            settings=settings,
            vault=load_vault(settings.vault_key_path),
            audit=audit,
            notifier=notifier,
        )

    async def close(self) -> None:
        if self.context.notifier is not None:
            await self.context.notifier.close()
        await self.tasks.cancel_all()
        await self.engine.dispose()


async def _close(gateway: Gateway | None, web_only: WebOnly | None) -> None:
    if gateway is not None:
        await gateway.close()
    if web_only is not None:
        await web_only.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from broker import demo

    if args.code:
        print(demo.current_code(args.data, args.who))
        return 0
    return demo.run(args.data, args.ssh_port, args.web_port, args.browser_port)


def cmd_ca_known_hosts(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    print(load_ca(settings.ca_key_path, settings.host_key_path).known_hosts_line())
    return 0


def cmd_segment_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    segment = with_db(
        settings,
        lambda db: admin.add_segment(db, args.name, args.description, args.network),
        "policy:segment:add",
        segment=args.name,
        networks=args.network,
    )
    print(f"segment {segment.name} added")
    return 0


def _device_credential(args: argparse.Namespace) -> admin.Credential | None:
    if args.username is None:
        if args.password_env or args.password_stdin or args.key_file:
            raise CliError("a device credential needs --username")
        return None
    if args.key_file is not None:
        return admin.Credential(args.username, CredentialKind.KEY, args.key_file.read_text())
    if args.password_env:
        if args.password_env not in os.environ:
            raise CliError(f"${args.password_env} is not set")
        secret = os.environ[args.password_env]
    elif args.password_stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        raise CliError("give the device password (--password-env/--password-stdin) or --key-file")
    return admin.Credential(args.username, CredentialKind.PASSWORD, secret)


def cmd_device_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    services = [admin.ServiceSpec.parse(s) for s in args.service]
    credential = _device_credential(args)
    host_key = args.host_key_file.read_text() if args.host_key_file else args.host_key
    vault = load_vault(settings.vault_key_path)
    device = with_db(
        settings,
        lambda db: admin.add_device(
            db,
            vault,
            name=args.name,
            segment=args.segment,
            address=args.address,
            services=services,
            credential=credential,
            host_key=host_key,
            criticality=Criticality(args.criticality),
            asset_tag=args.asset_tag,
            manufacturer=args.manufacturer,
            model=args.model,
            firmware=args.firmware,
            location=args.location,
        ),
        "policy:device:add",
        device=args.name,
        address=args.address,
        services=args.service,
    )
    print(f"device {device.name} added")
    return 0


def cmd_vendor_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    vendor = with_db(
        settings, lambda db: admin.add_vendor(db, args.name), "policy:vendor:add", vendor=args.name
    )
    print(f"vendor {vendor.name} added")
    return 0


def cmd_vendor_user_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    keys = [path.read_text() for path in args.key_file]
    password = None
    if args.password_env:
        if args.password_env not in os.environ:
            raise CliError(f"${args.password_env} is not set")
        password = os.environ[args.password_env]
    vault = load_vault(settings.vault_key_path)
    user, secret = with_db(
        settings,
        lambda db: admin.add_vendor_user(
            db,
            vault,
            login=args.login,
            vendor=args.vendor,
            public_keys=keys,
            password=password,
            display_name=args.name,
            email=args.email,
        ),
        "policy:vendor-user:add",
        login=args.login,
        vendor=args.vendor,
    )
    print(f"vendor user {user.login} added")
    uri = totp.provisioning_uri(secret, user.login)
    print(f"TOTP enrollment URI (show once, then discard): {uri}")
    return 0


def cmd_grant_revoke(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    by = f"cli:{getpass.getuser()}"
    with_db(
        settings,
        lambda db: admin.revoke_grant(db, args.grant_id, by, args.reason),
        "policy:grant:revoke",
        grant=args.grant_id,
        reason=args.reason,
    )
    print(f"grant {args.grant_id} revoked; its live sessions end within a second")
    return 0


def cmd_grant_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    start = args.start or datetime.now(UTC)
    end = args.end or start + timedelta(hours=args.hours)
    grant = with_db(
        settings,
        lambda db: admin.add_grant(
            db,
            login=args.login,
            devices=args.device,
            services=args.service or ["ssh"],
            ticket=args.ticket,
            start=start,
            end=end,
            approved_by=args.approved_by or f"cli:{getpass.getuser()}",
            transfers=args.transfers,
            recurrence=args.recurring,
            observer_required=args.moderated,
        ),
        "policy:grant:add",
        login=args.login,
        devices=args.device,
        services=args.service or ["ssh"],
        ticket=args.ticket,
        window=[start.isoformat(), end.isoformat()],
        transfers=args.transfers,
        recurrence=args.recurring.to_json() if args.recurring else None,
        observer_required=args.moderated,
    )
    weekly = f", recurring {args.recurring.describe()}" if args.recurring else ""
    moderated = ", moderated (needs a staff observer)" if args.moderated else ""
    print(
        f"grant {grant.id} for {args.login} on {', '.join(args.device)} "
        f"({grant.ticket_ref}) {start:%Y-%m-%d %H:%M}Z - {end:%Y-%m-%d %H:%M}Z{weekly}{moderated}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
