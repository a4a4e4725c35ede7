"""``sallyport demo``: a working demo hospital on SQLite in one command.

Seeds segments, devices (one simulated pump reachable over SSH on loopback), a vendor
with an SSH key and TOTP, staff, and one approved grant; starts the simulated device,
the gateway and the web; prints how to connect and writes ``demo-credentials.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy import insert, select

from broker import logging as splog
from broker.cli import prepare, serve
from broker.fakedevice import FakeDeviceInfo, host_public_key_line, start_fake_device
from broker.keys import load_host_key
from policy import admin, totp
from policy.config import Settings, default_database_url, render_settings
from policy.db import create_engine, session_factory
from policy.decide import decide_target
from policy.keyfiles import load_vault
from policy.models import CredentialKind, Criticality, Device, utcnow, vendor_device
from policy.store import grants_for, vendor_login

CREDENTIALS = "demo-credentials.json"
VENDOR_LOGIN = "vendor1"
DEVICE = "pump-12"
DEVICE_USER = "service"
TICKET = "CHG0042001"
PUMP = FakeDeviceInfo(name=DEVICE, model="Infusia IP-7", firmware="4.2.1", serial="IP7-00412")
STAFF = [("biomed1", ["biomed"]), ("security1", ["security"]), ("admin1", ["admin"])]


def run(data: Path, ssh_port: int, web_port: int, browser_port: int = 8022) -> int:
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = Settings(
        data_dir=data,
        database_url=default_database_url(data),
        gateway_host="127.0.0.1",
        gateway_port=ssh_port,
        web_host="127.0.0.1",
        web_port=web_port,
        recordings_dir=data / "recordings",
        log_format="console",
        web_public_url=f"http://127.0.0.1:{web_port}",
        web_cookie_secure=False,  # plain HTTP on loopback; a deployment serves HTTPS
        gateway_public_host="127.0.0.1",
        gateway_public_port=ssh_port,
        browser_host="127.0.0.1",
        browser_port=browser_port,
    )
    (data / "sallyport.toml").write_text(render_settings(settings))
    splog.configure("console", "info")
    prepare(settings)
    return asyncio.run(_run(data, settings))


async def _run(data: Path, settings: Settings) -> int:
    creds = await _seed(data, settings)
    device_key = data / "keys" / "demo-device-host-key"
    device_port = creds["devices"][0]["port"]
    acceptor = await start_fake_device(
        PUMP, "127.0.0.1", device_port, device_key, DEVICE_USER, creds["_device_password"]
    )
    public = {k: v for k, v in creds.items() if not k.startswith("_")}
    path = data / CREDENTIALS
    _write_private(path, json.dumps(public, indent=2))
    _write_private(data / "keys" / "demo-device-password", creds["_device_password"])
    host_key = load_host_key(settings.host_key_path).export_public_key().decode().strip()
    known_hosts = data / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{settings.gateway_port} {host_key}\n")
    try:

        def ready(gw_port: int, w_port: int) -> None:
            print(_instructions(data, public), flush=True)

        await serve(settings, ready)
    finally:
        acceptor.close()
        await acceptor.wait_closed()
    return 0


async def _seed(data: Path, settings: Settings) -> dict[str, Any]:
    """Seed on first run; on later runs reuse what is there and renew the grant if needed."""
    vault = load_vault(settings.vault_key_path)
    path = data / CREDENTIALS
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as db:
            existing = await vendor_login(db, VENDOR_LOGIN)
            if existing is None:
                creds = await _first_seed(db, vault, data)
            else:
                creds = json.loads(path.read_text())
                creds["_device_password"] = (data / "keys" / "demo-device-password").read_text()
            await _ensure_grant(db)
    finally:
        await engine.dispose()
    creds["ssh"] = {"host": "127.0.0.1", "port": settings.gateway_port}
    creds["web"] = {"url": f"http://127.0.0.1:{settings.web_port}"}
    creds["browser_door"] = {"url": settings.browser_door_url()}
    return creds


async def _first_seed(db: Any, vault: Any, data: Path) -> dict[str, Any]:
    device_port = _free_port()
    host_key = host_public_key_line(data / "keys" / "demo-device-host-key")
    device_password = secrets.token_urlsafe(18)
    await admin.add_segment(db, "icu-infusion", "ICU infusion pumps, VLAN 210")
    await admin.add_segment(db, "radiology", "Imaging modalities, VLAN 320")
    await admin.add_device(
        db,
        vault,
        name=DEVICE,
        segment="icu-infusion",
        address="127.0.0.1",
        services=[admin.ServiceSpec("ssh", device_port)],
        credential=admin.Credential(DEVICE_USER, CredentialKind.PASSWORD, device_password),
        host_key=host_key,
        criticality=Criticality.MEDIUM,
        asset_tag="BME-004412",
        manufacturer="Infusia Medical",
        model=PUMP.model,
        firmware=PUMP.firmware,
        location="ICU bed 12",
    )
    await admin.add_device(
        db,
        vault,
        name="ct-3",
        segment="radiology",
        address="192.0.2.30",
        services=[admin.ServiceSpec("ssh", 22), admin.ServiceSpec("https", 443)],
        credential=None,
        host_key=None,
        criticality=Criticality.HIGH,
        asset_tag="BME-000301",
        manufacturer="Radiant Imaging",
        model="RX CT 64",
        firmware="11.0",
        location="Radiology room 3",
    )
    org = await admin.add_vendor(db, "Infusia Medical")
    serviced = await db.scalars(select(Device.id).where(Device.name.in_([DEVICE, "ct-3"])))
    await db.execute(
        insert(vendor_device), [{"vendor_id": org.id, "device_id": d} for d in serviced]
    )
    await db.commit()
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{VENDOR_LOGIN}@demo")
    key_path = data / f"{VENDOR_LOGIN}_ed25519"
    key.write_private_key(key_path)
    key_path.chmod(0o600)
    key.write_public_key(key_path.with_suffix(".pub"))
    vendor_password = secrets.token_urlsafe(12)
    _user, secret = await admin.add_vendor_user(
        db,
        vault,
        login=VENDOR_LOGIN,
        vendor="Infusia Medical",
        public_keys=[key.export_public_key().decode()],
        password=vendor_password,
        display_name="Dana Field (Infusia field engineer)",
    )
    staff = []
    for login, roles in STAFF:
        password = secrets.token_urlsafe(12)
        _staff, staff_secret = await admin.add_staff_user(
            db, vault, login=login, roles=roles, password=password
        )
        staff.append(
            {"login": login, "password": password, "totp_secret": staff_secret, "roles": roles}
        )
    return {
        "vendor": {
            "login": VENDOR_LOGIN,
            "password": vendor_password,
            "totp_secret": secret,
            "private_key": str(key_path),
        },
        "devices": [{"name": DEVICE, "services": ["ssh"], "port": device_port}],
        "staff": staff,
        "_device_password": device_password,
    }


async def _ensure_grant(db: Any) -> None:
    user = await vendor_login(db, VENDOR_LOGIN)
    assert user is not None
    now = utcnow()
    if decide_target(DEVICE, True, "ssh", await grants_for(db, user.id), now).allow:
        return
    await admin.add_grant(
        db,
        login=VENDOR_LOGIN,
        devices=[DEVICE],
        services=["ssh"],
        ticket=TICKET,
        start=now - timedelta(minutes=5),
        end=now + timedelta(hours=8),
        approved_by="demo-seed",
    )


def current_code(data: Path, who: str | None = None) -> str:
    """The current TOTP code of the demo vendor, or of the demo staff user ``who``."""
    path = data.resolve() / CREDENTIALS
    if not path.exists():
        print(f"sallyport: no demo at {data} (run sallyport demo first)", file=sys.stderr)
        raise SystemExit(2)
    creds = json.loads(path.read_text())
    if who is None:
        return totp.code_at(creds["vendor"]["totp_secret"], utcnow())
    for person in creds["staff"]:
        if person["login"] == who:
            return totp.code_at(person["totp_secret"], utcnow())
    logins = ", ".join(p["login"] for p in creds["staff"])
    print(f"sallyport: no demo staff user {who!r} (one of: {logins})", file=sys.stderr)
    raise SystemExit(2)


def _instructions(data: Path, creds: dict[str, Any]) -> str:
    ssh, vendor = creds["ssh"], creds["vendor"]
    staff = ", ".join(f"{p['login']} ({'/'.join(p['roles'])})" for p in creds["staff"])
    key = vendor["private_key"]
    exe = sys.argv[0] if sys.argv and sys.argv[0].endswith("sallyport") else "sallyport"
    known = data / "known_hosts"
    base = f"ssh -p {ssh['port']} -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known}"
    return f"""
sallyport demo is running  (data: {data}; stop with Ctrl-C)
  SSH gateway  {ssh["host"]}:{ssh["port"]}
  web          {creds["web"]["url"]}  (health: /api/v1/health)
  browser door {creds["browser_door"]["url"]}  (the portal's terminal pages use it)

Connect as the demo vendor ({vendor["login"]}); you will be asked for a Verification code:
  code:      {exe} demo --data {data} --code
  shell:     {base} {vendor["login"]}:{DEVICE}@{ssh["host"]}
  command:   {base} {vendor["login"]}:{DEVICE}@{ssh["host"]} status
  my grants: {base} {vendor["login"]}@{ssh["host"]}

Web portal {creds["web"]["url"]}/login  (password + code; passwords are in the file below)
  vendor:    {vendor["login"]}  code: {exe} demo --data {data} --code
  staff:     {staff}  code: {exe} demo --data {data} --code --who LOGIN
  terminal:  {creds["web"]["url"]}/connect/{DEVICE}/terminal  (as {vendor["login"]}, after a code)
  watch:     {creds["web"]["url"]}/live  (as security1 or biomed1)

Credentials for scripts: {data / CREDENTIALS}
"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
