"""The admin CLI against a real database: what it prints, and refusals that change nothing."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import asyncssh
import pytest
from sqlalchemy import func, select

from broker.cli import main
from policy.config import Settings, render_settings
from policy.db import create_engine, session_factory
from policy.models import Device, Grant, VendorUser


@pytest.fixture
def config(settings: Settings, tmp_path: Path) -> Path:
    path = tmp_path / "sallyport.toml"
    path.write_text(render_settings(settings))
    return path


def run_cli(argv: list[str]) -> int:
    """The exit code, whether main returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def count(settings: Settings, model: type) -> int:
    async def run() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with session_factory(engine)() as db:
                return int(await db.scalar(select(func.count()).select_from(model)) or 0)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_admin_commands_build_an_inventory(
    config: Path,
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("device-secret\n"))
    host_key = tmp_path / "dev.pub"
    host_key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    vendor_key = tmp_path / "vendor.pub"
    vendor_key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    c = ["--config", str(config)]
    assert main(["segment", "add", "icu", *c]) == 0
    assert main(["device", "add", "pump-1", "--segment", "icu", "--address", "10.0.0.5",
                 "--service", "ssh:22", "--username", "svc", "--password-stdin",
                 "--host-key-file", str(host_key), *c]) == 0  # fmt: skip
    assert main(["vendor", "add", "Infusia", *c]) == 0
    assert main(["vendor-user", "add", "v1", "--vendor", "Infusia",
                 "--key-file", str(vendor_key), *c]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "otpauth://totp/sallyport:v1?secret=" in out
    assert main(["grant", "add", "--login", "v1", "--device", "pump-1", "--ticket", "CHG7",
                 "--hours", "2", *c]) == 0  # fmt: skip
    assert "CHG7" in capsys.readouterr().out
    assert main(["grant", "add", "--login", "v1", "--device", "pump-1", "--ticket", "CHG8",
                 "--hours", "2", "--moderated", *c]) == 0  # fmt: skip
    assert "(CHG8)" in (out := capsys.readouterr().out) and "moderated" in out
    assert count(settings, Device) == 1
    assert count(settings, VendorUser) == 1
    assert count(settings, Grant) == 2
    assert moderated_tickets(settings) == ["CHG8"]


def moderated_tickets(settings: Settings) -> list[str]:
    async def run() -> list[str]:
        engine = create_engine(settings.database_url)
        try:
            async with session_factory(engine)() as db:
                rows = await db.scalars(
                    select(Grant.ticket_ref).where(Grant.observer_required.is_(True))
                )
                return list(rows)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["device", "add", "pump-2", "--segment", "nowhere", "--address", "10.0.0.6"],
         "segment 'nowhere' does not exist"),
        (["device", "add", "pump-2", "--segment", "icu", "--address", "pump2.example.org"],
         "must be an IP address"),
        (["device", "add", "bad name", "--segment", "icu", "--address", "10.0.0.6"],
         "device name 'bad name'"),
        (["grant", "add", "--login", "ghost", "--device", "pump-1", "--ticket", "CHG1",
          "--hours", "1"], "vendor user 'ghost' does not exist"),
        (["grant", "add", "--login", "ghost", "--device", "pump-1", "--ticket", "CHG1",
          "--start", "2026-01-01T10:00", "--hours", "1"], "has no time zone"),
    ],
)  # fmt: skip
def test_refusals_say_why_and_write_nothing(
    config: Path,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert main(["segment", "add", "icu", "--config", str(config)]) == 0
    assert run_cli([*argv, "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert count(settings, Device) == 0
    assert count(settings, Grant) == 0


def test_commands_need_a_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SALLYPORT_CONFIG", raising=False)
    monkeypatch.delenv("SALLYPORT_DATA_DIR", raising=False)
    assert main(["segment", "add", "icu"]) == 2
    assert "give --config FILE" in capsys.readouterr().err


def test_ca_known_hosts_prints_the_cert_authority_line(
    config: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["ca", "known-hosts", "--config", str(config)]) == 0
    line = capsys.readouterr().out.strip()
    kind, pattern, algorithm, key, comment = line.split()
    assert (kind, pattern, algorithm, comment) == (
        "@cert-authority",
        "*",
        "ssh-ed25519",
        "sallyport-ca",
    )
    public = asyncssh.import_private_key(settings.ca_key_path.read_bytes()).export_public_key()
    assert key == public.decode().split()[1]
