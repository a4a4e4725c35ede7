"""Several nodes starting at once on an empty PostgreSQL database: one migrates, the others
wait for it and find the schema current (none crashes on a half-made schema)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.pgdb import scratch_database


@pytest.fixture
def empty_pg() -> Iterator[str]:
    with scratch_database("sallyport_race") as url:
        yield url


def test_concurrent_migrations_on_postgresql_all_succeed(empty_pg: str) -> None:
    code = f"from policy.migrate import upgrade; upgrade({empty_pg!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
