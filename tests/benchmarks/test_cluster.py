"""Revocation across two gateway processes on PostgreSQL, on small sizes: the session on
gateway B really ends, and the revocation reached it (not a timeout passed off as one)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from benchmarks import measure, report
from benchmarks.cluster import cluster_rig

pytestmark = pytest.mark.integration


def test_a_revocation_closes_the_session_on_the_other_gateway(tmp_path: Path) -> None:
    with cluster_rig(tmp_path, users=2) as r:
        sample = measure.revocation(r, runs=2)
        engine = create_engine(r.database_url.replace("+asyncpg", "+psycopg"))
        deadline = time.monotonic() + 15
        while True:  # the gateway writes a session's end just after the client has gone
            with engine.connect() as conn:
                ends = conn.execute(
                    text("SELECT gateway_node, end_reason FROM session ORDER BY started_at")
                ).all()
            if all(row.end_reason for row in ends) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        engine.dispose()
    assert [tuple(row) for row in ends] == [("bench-gw-b", "revoked")] * 2
    assert len(sample.seconds) == 2 and all(0 < t < 30 for t in sample.seconds)
    section = report.Revocation(sample, cluster=True).markdown()
    assert "two gateway processes on PostgreSQL" in section and "| p50 | p99 | max |" in section
