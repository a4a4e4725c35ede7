"""CMMS device import (policy/csvimport.py): every bad line reported, nothing half-written."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from policy import admin
from policy.actor import Actor
from policy.csvimport import ImportResult, check_csv, import_devices
from policy.errors import InvalidInput, PolicyError
from policy.models import AuditEvent, Criticality, Device, Segment, StaffUser
from policy.vault import Vault
from recorder.audit import AuditLog

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HEADER = "name,segment,address,criticality,manufacturer,model,firmware,location,asset_tag,services"
CHICAGO_DAY = "mon-fri 06:00-18:00 America/Chicago"
WEEKEND_NIGHTS = "sat 22:00-02:00 America/Chicago;sun 22:00-02:00 America/Chicago"
GOOD = "\n".join(
    [
        f"{HEADER},maintenance",
        f"pump-1,icu,10.1.0.5,high,BD,Alaris 8015,9.33,ICU bed 4,A-1001,ssh:22;https:443,"
        f"{CHICAGO_DAY}",
        "monitor-2,icu,10.1.0.6,medium,Philips,MX800,M.01,Ward 7,A-1002,ssh:22,",
        '"vent-3",lab,fd00::3,life-sustaining,"Dräger, AG","Evita V800",2.51,"ICU, bay 2",'
        f"A-1003,ssh:2222,{WEEKEND_NIGHTS}",
        "",
    ]
)


@pytest.fixture
async def admin_actor(db: Sessions, vault: Vault) -> Actor:
    async with db() as s:
        await admin.add_segment(s, "icu")
        await admin.add_segment(s, "lab")
        ada, bea = StaffUser(login="ada", roles=["admin"]), StaffUser(login="bea", roles=["biomed"])
        s.add_all([ada, bea])
        await s.commit()
        return Actor("staff", ada.id, "ada", frozenset({"admin"}))


async def run(db: Sessions, vault: Vault, actor: Actor, text: str) -> ImportResult:
    async with db() as s:
        return await import_devices(s, AuditLog(db), actor, vault, text, now=NOW)


async def devices(db: Sessions) -> dict[str, Device]:
    async with db() as s:
        found = await s.scalars(
            select(Device).options(selectinload(Device.services), selectinload(Device.segment))
        )
        return {d.name: d for d in found}


def summary(found: dict[str, Device]) -> list[Any]:
    return sorted(
        (d.name, d.segment.name, d.address, d.criticality, d.model, d.location,
         d.maintenance_windows, [(s.name, s.port) for s in d.services])
        for d in found.values()
    )  # fmt: skip


async def events(db: Sessions) -> list[AuditEvent]:
    async with db() as s:
        return list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


async def test_a_clean_export_creates_every_device(
    db: Sessions, vault: Vault, admin_actor: Actor
) -> None:
    result = await run(db, vault, admin_actor, GOOD)
    assert result == ImportResult(created=3, updated=0, unchanged=0)
    found = await devices(db)
    pump, vent = found["pump-1"], found["vent-3"]
    assert pump.criticality is Criticality.HIGH and pump.asset_tag == "A-1001"
    assert [(s.name, s.port) for s in pump.services] == [("ssh", 22), ("https", 443)]
    assert pump.maintenance_windows[0]["tz"] == "America/Chicago"
    assert vent.manufacturer == "Dräger, AG" and vent.location == "ICU, bay 2"
    assert vent.address == "fd00::3" and vent.segment.name == "lab"
    assert [w["days"] for w in vent.maintenance_windows] == [[5], [6]]
    assert found["monitor-2"].maintenance_windows == []
    [event] = [e for e in await events(db) if e.tag == "policy:device:imported"]
    assert (event.detail["created"], event.detail["updated"]) == (3, 0)
    assert len(event.detail["sha256"]) == 64


async def test_a_second_import_updates_by_name_in_place(
    db: Sessions, vault: Vault, admin_actor: Actor
) -> None:
    await run(db, vault, admin_actor, GOOD)
    ssh_row = next(s.id for s in (await devices(db))["pump-1"].services if s.name == "ssh")
    changed = GOOD.replace("Alaris 8015,9.33", "Alaris 8015,9.40").replace(
        "ssh:22;https:443", "ssh:22"
    )
    assert await run(db, vault, admin_actor, changed) == ImportResult(0, 1, 2)
    pump = (await devices(db))["pump-1"]
    assert pump.firmware == "9.40" and [s.name for s in pump.services] == ["ssh"]
    assert pump.services[0].id == ssh_row and pump.updated_at == NOW


async def test_without_a_maintenance_column_existing_windows_stay(
    db: Sessions, vault: Vault, admin_actor: Actor
) -> None:
    await run(db, vault, admin_actor, GOOD)
    lines = [line.rsplit(",", 1)[0] for line in GOOD.splitlines()[:3]]
    lines[0] = HEADER
    assert await run(db, vault, admin_actor, "\n".join(lines) + "\n") == ImportResult(0, 0, 2)
    assert (await devices(db))["pump-1"].maintenance_windows != []


async def refused(
    db: Sessions, vault: Vault, actor: Actor, text: str, code: str = "csv-invalid"
) -> PolicyError:
    before = summary(await devices(db))
    count = len(await events(db))
    with pytest.raises(PolicyError) as info:
        await run(db, vault, actor, text)
    assert info.value.code == code, info.value.message
    assert summary(await devices(db)) == before
    new = (await events(db))[count:]
    assert [e.tag for e in new] == ["policy:device:refused"]
    assert new[0].detail["code"] == code
    return info.value


BAD = f"""{HEADER}
pump-1,icu,10.1.0.5,high,BD,Alaris,9.40,ICU,A-1,ssh:22
new-9,nowhere,10.1.0.9,low,,,,,,ssh:22
bad-addr,icu,pump.example.org,low,,,,,,ssh:22

bad-crit,icu,10.1.0.10,critical,,,,,,ssh:22
bad-svc,icu,10.1.0.11,low,,,,,,ssh
pump-1,icu,10.1.0.12,low,,,,,,ssh:22
"multi
line",icu,10.1.0.13,,,,,,,telnet:99999
short,icu
"""


async def test_every_bad_line_is_reported_and_nothing_is_written(
    db: Sessions, vault: Vault, admin_actor: Actor
) -> None:
    await run(db, vault, admin_actor, GOOD)
    exc = await refused(db, vault, admin_actor, BAD)
    assert isinstance(exc, InvalidInput)
    lines = [line for line, _ in exc.errors]
    assert lines == [3, 4, 6, 7, 8, 9, 9, 9, 11]
    text = dict(exc.errors)
    assert "segment 'nowhere'" in text[3] and "IP address" in text[4]
    assert "critical" in text[6] and "ssh" in text[7]
    assert "already on line 2" in text[8] and "expected 10 fields" in text[11]
    assert "line 3" in exc.message and "more" in exc.message
    # the valid first row did not change pump-1 either
    assert (await devices(db))["pump-1"].firmware == "9.33"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER.replace("asset_tag", "asset") + "\n", "unknown column 'asset'"),
        (HEADER.replace(",services", "") + "\n", "column 'services' is missing"),
        (HEADER + ",name\n", "column 'name' appears twice"),
        ("", "empty"),
        (HEADER + "\n\n", "no device rows"),
        (HEADER + '\n"pump-1,icu\n', "cannot read the CSV"),
    ],
)
async def test_header_and_file_problems(
    db: Sessions, vault: Vault, admin_actor: Actor, text: str, message: str
) -> None:
    await run(db, vault, admin_actor, GOOD)
    exc = await refused(db, vault, admin_actor, text)
    assert isinstance(exc, InvalidInput) and exc.errors
    assert any(message in m for _, m in exc.errors), exc.errors


async def test_excel_bom_and_header_case_are_accepted(
    db: Sessions, vault: Vault, admin_actor: Actor
) -> None:
    text = "\ufeff" + GOOD.replace("name,segment", "Name, Segment", 1)
    assert (await run(db, vault, admin_actor, text)).created == 3


async def test_only_admins_import(db: Sessions, vault: Vault, admin_actor: Actor) -> None:
    async with db() as s:
        bea = await s.scalar(select(StaffUser).where(StaffUser.login == "bea"))
        assert bea is not None
    biomed = Actor("staff", bea.id, "bea", frozenset({"biomed"}))
    await refused(db, vault, biomed, GOOD, code="role-required")


CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(CELL, min_size=0, max_size=12), max_size=6))
def test_check_csv_never_crashes_and_reports_lines_in_the_file(rows: list[list[str]]) -> None:
    """Whatever the cells hold (quotes, commas, newlines), the checker returns rows or
    errors whose line numbers exist in the file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER.split(","))
    writer.writerows(rows)
    text = buffer.getvalue()
    segments = {"icu": Segment(id=1, name="icu")}
    checked, errors = check_csv(text, segments)
    total_lines = len(io.StringIO(text, newline="").readlines())
    assert all(1 <= line <= total_lines for line, _ in errors)
    assert bool(checked) or bool(errors)
    if not errors:
        assert len(checked) == sum(1 for r in rows if any(c.strip() for c in r))
