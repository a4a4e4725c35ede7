"""Throwaway PostgreSQL databases on the test server, for tests that need one of their own
(a migration from empty, a cluster of nodes, the shared migrated template), so that no
test can leave a database behind for the next run to trip over."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

PG_SERVER = os.environ.get("SALLYPORT_TEST_PG", "postgres@127.0.0.1:5432")


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new empty database named ``PREFIX_<random>``: yields its asyncpg URL, then drops
    it, forcing out any connection a failed test left open."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    server = create_engine(
        f"postgresql+psycopg://{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT"
    )
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_SERVER}/{name}"
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
