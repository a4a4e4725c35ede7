"""Search across what vendors typed and saw, and which files they moved.

Design: a scan, not an index. Each search reads the recordings of the newest sessions
(``max_sessions``, optionally inside a time range) through the Storage protocol,
rebuilds their commands (``recorder.commands``) and their plain output (escape sequences
stripped), and matches case-insensitively. File transfers come from the audit events.
The scan stops once ``limit`` hits are found. What it did not cover is reported
(``SearchResult.complete``, ``skipped``), so a page can say "narrow the time range"
instead of implying there is nothing older. Reading and matching run in a worker thread
one recording at a time: memory is bounded by the largest recording scanned
(``MAX_SCAN_BYTES``), and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import bisect
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policy.errors import InvalidInput
from policy.models import AuditEvent, Recording, RecordingStatus, Session
from recorder.commands import Command, commands_from_recording, exec_command
from recorder.errors import RecorderError
from recorder.readers import parse
from recorder.storage import Storage

MAX_SESSIONS = 500  # sessions scanned per search, newest first
MAX_SCAN_BYTES = 64 * 1024 * 1024  # larger recordings are skipped (bulk transfers)
MAX_QUERY = 200
OUTPUT_HITS_PER_RECORDING = 5
SNIPPET = 40  # characters of context each side of a match
ECHO_SECONDS = 1.0  # output this soon after a matching command is its echo: no second hit
TRANSFER_TAGS = ("broker:transfer:file", "broker:transfer:deny")

Kind = Literal["command", "output", "transfer"]

# Terminal escape sequences: OSC (ESC ] ... BEL/ST), DCS/SOS/PM/APC (ESC P|X|^|_ ... ST),
# CSI (ESC [ params final), and two-character escapes (ESC x, ESC ( B ...); C1 CSI.
_ANSI = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_].*?(?:\x1b\\|\Z)"
    r"|\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]",
    re.DOTALL,
)
_CONTROL = re.compile(r"[\x00-\x07\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Hit:
    session_id: str
    recording_id: int | None  # None for an exec command or a transfer (session row, audit)
    kind: Kind
    at: float  # seconds into the recording (a transfer: since the session started)
    snippet: str


@dataclass
class SearchResult:
    hits: list[Hit] = field(default_factory=list)
    sessions_scanned: int = 0
    sessions_in_range: int = 0
    complete: bool = True  # False: older sessions or skipped recordings were not searched
    skipped: list[str] = field(default_factory=list)  # recordings not searched, and why


def strip_ansi(text: str) -> str:
    """Terminal output as plain text: escape sequences removed, ``\\r\\n`` as ``\\n``,
    Backspace erasing the character before it, other control characters dropped."""
    return _plain(text)[0]


def _plain(raw: str) -> tuple[str, list[int]]:
    """Plain text and, for each plain character, its index in ``raw``."""
    out: list[str] = []
    where: list[int] = []
    pos = 0
    for match in _ANSI.finditer(raw):
        _plain_run(raw, pos, match.start(), out, where)
        pos = match.end()
    _plain_run(raw, pos, len(raw), out, where)
    return "".join(out), where


def _plain_run(raw: str, start: int, end: int, out: list[str], where: list[int]) -> None:
    for i in range(start, end):
        ch = raw[i]
        if ch == "\b":
            if out and out[-1] != "\n":
                out.pop()
                where.pop()
        elif ch == "\r" or _CONTROL.match(ch):
            continue
        else:
            out.append(ch)
            where.append(i)


def _snippet(text: str, start: int, end: int) -> str:
    lo, hi = max(0, start - SNIPPET), min(len(text), end + SNIPPET)
    body = _SPACE.sub(" ", text[lo:hi]).strip()
    return ("…" if lo else "") + body + ("…" if hi < len(text) else "")


def compile_query(query: str) -> re.Pattern[str]:
    """The query as a case-insensitive literal pattern (match positions stay those of the
    text, which case folding the text would not keep)."""
    needle = query.strip()
    if not needle:
        raise InvalidInput("search-query-empty", "type something to search for")
    if len(needle) > MAX_QUERY:
        raise InvalidInput("search-query-too-long", f"search for at most {MAX_QUERY} characters")
    return re.compile(re.escape(needle), re.IGNORECASE)


def match_commands(
    commands: list[Command], needle: re.Pattern[str], session_id: str, recording_id: int | None
) -> list[Hit]:
    hits = []
    for c in commands:
        found = needle.search(c.text)
        if found:
            snippet = _snippet(c.text, found.start(), found.end())
            hits.append(Hit(session_id, recording_id, "command", c.at, snippet))
    return hits


def match_output(
    data: bytes,
    needle: re.Pattern[str],
    session_id: str,
    recording_id: int,
    echoes: list[Command],
) -> list[Hit]:
    """Output hits in a recording, leaving out the echo of ``echoes`` (commands that
    matched too: their command hit already points there)."""
    times: list[float] = []
    starts: list[int] = []
    pieces: list[str] = []
    size = 0
    for event in parse(data).events:
        if event.code in ("o", "e"):
            text = event.data.decode("utf-8", "replace")
            starts.append(size)
            times.append(event.time)
            pieces.append(text)
            size += len(text)
    plain, where = _plain("".join(pieces))
    hits: list[Hit] = []
    for found in needle.finditer(plain):
        at = times[bisect.bisect_right(starts, where[found.start()]) - 1]
        if any((c.typed_at or c.at) <= at <= c.at + ECHO_SECONDS for c in echoes):
            continue
        snippet = _snippet(plain, found.start(), found.end())
        hits.append(Hit(session_id, recording_id, "output", at, snippet))
        if len(hits) >= OUTPUT_HITS_PER_RECORDING:
            break
    return hits


def _searchable(session: Session) -> bool:
    """File-transfer channels carry file data and protocol, not terminal output."""
    return session.kind != "sftp" and not (session.command or "").startswith("scp ")


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _scan_recording(
    storage: Storage, session: Session, rec: Recording, needle: re.Pattern[str]
) -> list[Hit]:
    """Read one recording and match it (runs in a worker thread)."""
    data = storage.read(rec.storage_key)
    if len(data) > MAX_SCAN_BYTES:
        raise _TooLarge(len(data))
    commands = commands_from_recording(data, rec.started_at)
    hits = match_commands(commands, needle, session.id, rec.id)
    if _searchable(session):
        echoes = [c for c in commands if needle.search(c.text)]
        hits += match_output(data, needle, session.id, rec.id, echoes)
    return sorted(hits, key=lambda h: h.at)


async def search(
    db: AsyncSession,
    storage: Storage,
    query: str,
    *,
    limit: int = 50,
    since: datetime | None = None,
    until: datetime | None = None,
    max_sessions: int = MAX_SESSIONS,
) -> SearchResult:
    """Sessions newest first (started in ``[since, until)`` when given); in each, the
    exec command, then typed commands and output in time order, then files moved."""
    needle = compile_query(query)
    if limit < 1 or max_sessions < 1:
        raise InvalidInput("search-limit-invalid", "limit and max_sessions must be positive")
    if since is not None and until is not None and since >= until:
        raise InvalidInput(
            "time-range-invalid", "the start of the time range is not before its end"
        )
    where = []
    if since is not None:
        where.append(Session.started_at >= since)
    if until is not None:
        where.append(Session.started_at < until)
    result = SearchResult()
    result.sessions_in_range = int(
        await db.scalar(select(func.count()).select_from(Session).where(*where)) or 0
    )
    sessions = list(
        await db.scalars(
            select(Session)
            .where(*where)
            .options(selectinload(Session.recordings))
            .order_by(Session.started_at.desc(), Session.id)
            .limit(max_sessions)
        )
    )
    transfers = await _transfer_events(db, [s.id for s in sessions])
    for session in sessions:
        if len(result.hits) >= limit:
            break
        result.sessions_scanned += 1
        result.hits += await _search_session(session, storage, needle, result)
        result.hits += _match_transfers(session, transfers.get(session.id, []), needle)
    result.complete = result.sessions_scanned == result.sessions_in_range and not result.skipped
    del result.hits[limit:]
    return result


async def _search_session(
    session: Session, storage: Storage, needle: re.Pattern[str], result: SearchResult
) -> list[Hit]:
    command = exec_command(session.command, session.started_at)
    hits = match_commands(command, needle, session.id, None)
    for rec in sorted(session.recordings, key=lambda r: r.id):
        if rec.status is RecordingStatus.EXPIRED:
            continue  # removed by retention (audited); nothing left to search
        if rec.size is not None and rec.size > MAX_SCAN_BYTES:
            result.skipped.append(f"{rec.storage_key}: {rec.size} bytes, over the scan limit")
            continue
        try:
            hits += await asyncio.to_thread(_scan_recording, storage, session, rec, needle)
        except _TooLarge as exc:
            result.skipped.append(f"{rec.storage_key}: {exc.size} bytes, over the scan limit")
        except RecorderError as exc:
            result.skipped.append(f"{rec.storage_key}: {exc.message}")
    return hits


async def _transfer_events(db: AsyncSession, session_ids: list[str]) -> dict[str, list[AuditEvent]]:
    found: dict[str, list[AuditEvent]] = {}
    for start in range(0, len(session_ids), 500):
        rows = await db.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.session_id.in_(session_ids[start : start + 500]),
                AuditEvent.tag.in_(TRANSFER_TAGS),
            )
            .order_by(AuditEvent.id)
        )
        for row in rows:
            if row.session_id is not None:
                found.setdefault(row.session_id, []).append(row)
    return found


def _match_transfers(
    session: Session, events: list[AuditEvent], needle: re.Pattern[str]
) -> list[Hit]:
    hits = []
    for event in events:
        path = str(event.detail.get("path") or "")
        if needle.search(path):
            what = event.detail.get("direction") or event.detail.get("operation") or ""
            refused = " (refused)" if event.tag.endswith(":deny") else ""
            at = max(0.0, (event.at - session.started_at).total_seconds())
            hits.append(Hit(session.id, None, "transfer", at, f"{what} {path}{refused}".strip()))
    return hits
