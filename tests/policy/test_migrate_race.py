"""Several nodes starting at once on an empty PostgreSQL database: one migrates, the others
wait for it and find the schema current (none crashes on a half-made schema)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_SERVER


@pytest.fixture
def empty_pg() -> Iterator[str]:
    name = f"sallyport_race_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        f"postgresql+psycopg://{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_concurrent_migrations_on_postgresql_all_succeed(empty_pg: str) -> None:
    code = f"from policy.migrate import upgrade; upgrade({empty_pg!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
