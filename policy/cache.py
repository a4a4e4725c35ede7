"""The gateway's cache of what its decisions read: vendor logins, devices, grants.

Every entry belongs to one *policy generation*: the counter in ``policy_generation`` that
database triggers advance in the same transaction as any write to those tables (migration
0006), whoever writes. Each lookup first reads the counter and empties the cache when it
moved, so a decision never rests on anything older than the last committed policy change: a
grant revoked (or a key removed, a user disabled, a device re-pinned) before the lookup
began is always seen. The counter is read where it costs least: on SQLite from a connection
of this process's own (a local file read, no thread hop), on PostgreSQL over one dedicated
connection with a prepared statement. If it cannot be read, the lookup goes to the
database as if there were no cache, and nothing read then is kept.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import asyncpg
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import store
from policy.decide import GrantView
from policy.models import Device

log = structlog.get_logger(__name__)

GENERATION_SQL = "SELECT value FROM policy_generation WHERE id = 1"
MAX_ENTRIES = 20_000  # per map; beyond it the map starts over (unknown logins cannot grow it)

T = TypeVar("T")


class GenerationReader(Protocol):
    async def read(self) -> int: ...

    async def close(self) -> None: ...


class SqliteGeneration:
    """Reads the counter from the database file on the event loop's thread: a WAL read
    does not wait for writers, and the row is one page."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    async def read(self) -> int:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        rows = self._conn.execute(GENERATION_SQL).fetchall()  # all: the statement ends here
        row = rows[0] if rows else None
        if row is None:
            raise LookupError("policy_generation has no row (is the database migrated?)")
        return int(row[0])

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresGeneration:
    """One connection of its own, one query at a time (a lookup waits for the one before
    it rather than sharing its answer: that answer may predate this lookup)."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def read(self) -> int:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                u = self.url
                self._conn = await asyncpg.connect(
                    host=u.host, port=u.port, user=u.username,
                    password=u.password, database=u.database,
                )  # fmt: skip
            try:
                value = await self._conn.fetchval(GENERATION_SQL)
            except BaseException:
                await self._drop()
                raise
        if value is None:
            raise LookupError("policy_generation has no row (is the database migrated?)")
        return int(value)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()


def generation_reader(url: str) -> GenerationReader | None:
    """None where the counter cannot be read from outside the engine (in-memory SQLite)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return PostgresGeneration(url)
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        return SqliteGeneration(parsed.database)
    return None


class PolicyCache:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reader: GenerationReader | None,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.sessions = sessions
        self.reader = reader
        self.max_entries = max_entries
        self.generation: int | None = None
        self.hits = self.misses = self.resets = 0
        self._logins: dict[str, store.VendorLogin | None] = {}
        self._devices: dict[str, Device | None] = {}
        self._grants: dict[int, tuple[GrantView, ...]] = {}

    @classmethod
    def for_url(cls, sessions: async_sessionmaker[AsyncSession], url: str) -> PolicyCache:
        return cls(sessions, generation_reader(url))

    async def vendor_login(self, login: str) -> store.VendorLogin | None:
        return await self._lookup(self._logins, login, store.vendor_login)

    async def device(self, name: str) -> Device | None:
        """The device with services and segment loaded; shared: read, never change it."""
        return await self._lookup(self._devices, name, store.device)

    async def grants(self, vendor_user_id: int) -> tuple[GrantView, ...]:
        async def load(db: AsyncSession, user_id: int) -> tuple[GrantView, ...]:
            return tuple(await store.grants_for(db, user_id))

        return await self._lookup(self._grants, vendor_user_id, load)

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()

    def clear(self) -> None:
        self._logins.clear()
        self._devices.clear()
        self._grants.clear()

    async def _current(self) -> int | None:
        """The counter now (emptying the cache if it moved); None: do not use the cache."""
        if self.reader is None:
            return None
        try:
            value = await self.reader.read()
        except (OSError, sqlite3.Error, asyncpg.PostgresError, LookupError) as exc:
            log.warning("policy cache bypassed: generation unreadable", error=str(exc))
            self.generation = None
            self.clear()
            return None
        if value != self.generation:
            if self.generation is not None:
                self.resets += 1
            self.clear()
            self.generation = value
        return value

    async def _lookup(
        self,
        entries: dict[Any, T],
        key: Any,
        load: Callable[[AsyncSession, Any], Awaitable[T]],
    ) -> T:
        generation = await self._current()
        if generation is not None and key in entries:
            self.hits += 1
            return entries[key]
        self.misses += 1
        async with self.sessions() as db:
            value = await load(db, key)
        # keep it only if no newer generation was seen while loading: what was loaded is at
        # least as new as ``generation``, not necessarily as new as a later one
        if generation is not None and self.generation == generation:
            if len(entries) >= self.max_entries:
                entries.clear()
            entries[key] = value
        return value
