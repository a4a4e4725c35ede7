"""Device import from a CMMS export (CSV): create new devices, update existing ones by name.

The import is all or nothing. Every row is checked first and every problem is reported
with its line number as in the file (the header is line 1), so one round of fixes in the
spreadsheet is enough; only a clean file is written, in one transaction.

Columns (header names, any order, case-blind): name, segment, address, criticality,
manufacturer, model, firmware, location, asset_tag, services (``ssh:22;https:443``), and
optionally maintenance (``mon-fri 06:00-18:00 America/Chicago``, several separated by
``;``) and observer_required (empty: by criticality, ``true``: sessions always need a
staff observer, ``false``: never; ``policy.moderation``). Without a maintenance column,
existing devices keep their windows; an empty cell in it clears them. Without an
observer_required column, existing devices keep their rule. Credentials and host keys
never come from a file: they are set per device.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy import admin
from policy.actor import Actor, AuditSink, record_refusal, require_staff
from policy.errors import Conflict, InvalidInput, PolicyError
from policy.inventory import (
    RECORD_FIELDS,
    check_record,
    parse_criticality,
    parse_services,
    parse_window_text,
    sync_services,
)
from policy.models import Criticality, Device, DeviceService, Segment, utcnow
from policy.moderation import parse_observer_rule
from policy.vault import Vault

REQUIRED = ("name", "segment", "address", "criticality", *RECORD_FIELDS, "services")
OPTIONAL = ("maintenance", "observer_required")
REFUSED = "policy:device:refused"
MAX_ERRORS_AUDITED = 20


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int = 0


@dataclass(frozen=True)
class _Row:
    line: int
    name: str
    segment: Segment
    address: str
    criticality: Criticality
    record: dict[str, str]
    services: list[admin.ServiceSpec]
    maintenance: list[dict[str, Any]] | None  # None: no maintenance column
    observer: bool | None = None  # device.observer_required
    has_observer: bool = False  # the file has an observer_required column


def _header(fields: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    names = [f.strip().lower().lstrip("\ufeff") for f in fields]
    errors = [
        (1, f"unknown column {n!r}; the columns are {', '.join(REQUIRED + OPTIONAL)}")
        for n in names
        if n not in REQUIRED + OPTIONAL
    ]
    errors += [(1, f"column {n!r} appears twice") for n in sorted(set(names)) if names.count(n) > 1]
    errors += [(1, f"column {n!r} is missing") for n in REQUIRED if n not in names]
    return names, errors


def _lines(text: str) -> tuple[list[str], list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """The header, each non-blank row with the line it starts on, and CSV syntax errors."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            if header is None:
                header = fields
            elif any(f.strip() for f in fields):
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        return header or [], rows, [(start, f"cannot read the CSV: {exc}")]
    return header or [], rows, []


class _RowChecker:
    """Checks one row's fields, collecting every problem rather than stopping at the first."""

    def __init__(self, line: int, values: dict[str, str]) -> None:
        self.line, self.values = line, values
        self.errors: list[tuple[int, str]] = []

    def get(self, column: str) -> str:
        return self.values.get(column, "").strip()

    def check(self, column: str, parse: Any) -> Any:
        try:
            return parse(self.get(column))
        except PolicyError as exc:
            self.errors.append((self.line, f"{column}: {exc.message}"))
            return None

    def check_all(self, parse: Any) -> Any:
        try:
            return parse()
        except PolicyError as exc:
            self.errors.append((self.line, exc.message))
            return None


def _maintenance(cell: str) -> list[dict[str, Any]]:
    windows = [parse_window_text(part).to_json() for part in cell.split(";") if part.strip()]
    return [w for i, w in enumerate(windows) if w not in windows[:i]]


def _check_row(
    line: int, values: dict[str, str], segments: dict[str, Segment]
) -> tuple[_Row | None, list[tuple[int, str]]]:
    c = _RowChecker(line, values)

    def segment(name: str) -> Segment:
        if name not in segments:
            raise InvalidInput("segment-unknown", f"segment {name!r} does not exist")
        return segments[name]

    def criticality(text: str) -> Criticality:
        if not text:
            raise InvalidInput("criticality-missing", "criticality is required")
        return parse_criticality(text)

    name = c.check("name", lambda n: admin.check_name("device", n))
    seg = c.check("segment", segment)
    address = c.check("address", admin.check_address)
    level = c.check("criticality", criticality)
    services = c.check("services", lambda s: parse_services(p for p in s.split(";") if p.strip()))
    maintenance = c.check("maintenance", _maintenance) if "maintenance" in values else None
    has_observer = "observer_required" in values
    observer = c.check("observer_required", parse_observer_rule) if has_observer else None
    record = c.check_all(lambda: check_record({k: values[k] for k in RECORD_FIELDS}))
    if c.errors:
        return None, c.errors
    row = _Row(line, name, seg, address, level, record, services, maintenance)
    return replace(row, observer=observer, has_observer=has_observer), []


def check_csv(text: str, segments: dict[str, Segment]) -> tuple[list[_Row], list[tuple[int, str]]]:
    """Every row checked; the rows, or every problem found with its line number."""
    fields, raw_rows, errors = _lines(text)
    names, header_errors = _header(fields)
    errors = header_errors + errors
    if not fields:
        return [], [(1, "the file is empty; it needs a header line and device rows")]
    if header_errors:
        return [], errors
    rows: list[_Row] = []
    first_line: dict[str, int] = {}
    for line, values in raw_rows:
        if len(values) != len(names):
            errors.append((line, f"expected {len(names)} fields, found {len(values)}"))
            continue
        row, row_errors = _check_row(line, dict(zip(names, values, strict=True)), segments)
        errors += row_errors
        if row is None:
            continue
        if row.name in first_line:
            errors.append(
                (line, f"name: device {row.name!r} is already on line {first_line[row.name]}")
            )
            continue
        first_line[row.name] = line
        rows.append(row)
    if not raw_rows and not errors:
        errors.append((1, "the file has a header but no device rows"))
    return rows, sorted(errors)


def _update(device: Device, row: _Row) -> bool:
    """Bring an existing device in line with its row; was anything different?"""
    before = (
        device.segment_id,
        device.address,
        device.criticality,
        device.maintenance_windows,
        device.observer_required,
    )
    record_before = {k: getattr(device, k) for k in RECORD_FIELDS}
    device.segment = row.segment
    device.address = row.address
    device.criticality = row.criticality
    for key, value in row.record.items():
        setattr(device, key, value)
    if row.maintenance is not None:
        device.maintenance_windows = row.maintenance
    if row.has_observer:
        device.observer_required = row.observer
    service_changes = sync_services(device, row.services)
    after = (
        row.segment.id,
        device.address,
        device.criticality,
        device.maintenance_windows,
        device.observer_required,
    )
    return before != after or record_before != row.record or bool(service_changes)


def _new(row: _Row, now: datetime) -> Device:
    return Device(
        name=row.name,
        segment=row.segment,
        address=row.address,
        criticality=row.criticality,
        services=[DeviceService(name=s.name, port=s.port) for s in row.services],
        maintenance_windows=row.maintenance or [],
        observer_required=row.observer,
        created_at=now,
        updated_at=now,
        **row.record,
    )


async def import_devices(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor,
    vault: Vault,
    text: str,
    *,
    now: datetime | None = None,
) -> ImportResult:
    """Import a CMMS device export (admin). ``vault`` would seal credentials, and no
    column carries one (a file is no place for device passwords): it is taken so callers
    pass the same things as to ``create_device``."""
    now = now or utcnow()
    digest = hashlib.sha256(text.encode()).hexdigest()
    try:
        await require_staff(db, actor, {"admin"}, "importing devices")
        segments = {s.name: s for s in await db.scalars(select(Segment))}
        rows, errors = check_csv(text, segments)
        if errors:
            shown = "; ".join(f"line {n}: {m}" for n, m in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise InvalidInput("csv-invalid", f"nothing imported: {shown}{more}", errors)
    except PolicyError as exc:
        listed = [f"line {n}: {m}" for n, m in getattr(exc, "errors", [])[:MAX_ERRORS_AUDITED]]
        await record_refusal(
            db, audit, actor, REFUSED, exc, action="import", sha256=digest, errors=listed
        )
        raise
    existing = {
        d.name: d
        for d in await db.scalars(
            select(Device)
            .where(Device.name.in_([r.name for r in rows]))
            .options(selectinload(Device.services))
        )
    }
    created = updated = 0
    for row in rows:
        device = existing.get(row.name)
        if device is None:
            db.add(_new(row, now))
            created += 1
        elif _update(device, row):
            device.updated_at = now
            updated += 1
    try:
        await db.commit()
    except IntegrityError:
        conflict = Conflict("conflict", "another change to these devices won the race; try again")
        await record_refusal(db, audit, actor, REFUSED, conflict, action="import", sha256=digest)
        raise conflict from None
    result = ImportResult(created, updated, len(rows) - created - updated)
    await audit.record(
        "policy:device:imported",
        actor=actor.label,
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
        sha256=digest,
    )
    return result
