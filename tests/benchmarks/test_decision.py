"""Policy decision latency on the suite's database: timed, and checked against the seed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from benchmarks import decision
from benchmarks.stats import MeasurementError
from broker.cli import run_loop
from policy.cache import PolicyCache

pytestmark = pytest.mark.integration

BACKEND = os.environ.get("SALLYPORT_TEST_DB", "sqlite")
PG = os.environ.get("SALLYPORT_TEST_PG", decision.PG_SERVER)
SMALL = decision.Config(devices=60, grants=300, users=30, decisions=80, warmup=5, changes=5)


@pytest.mark.parametrize("mode", decision.MODES)
def test_every_decision_is_timed_by_part_and_both_outcomes_occur(tmp_path: Path, mode: str) -> None:
    result = decision.run(SMALL, tmp_path, (BACKEND,), PG)
    [run] = [r for r in result.runs if r.mode == mode]
    assert [r.mode for r in result.runs] == list(decision.MODES)
    assert run.backend == BACKEND
    assert len(run.seconds) == SMALL.decisions
    # only the warm run checks revocations; each was seen by the next decision
    assert len(run.after_change) == (SMALL.changes if mode == "warm" else 0)
    assert run.allowed + run.denied == SMALL.decisions
    assert run.allowed > 0 and run.denied > 0
    for part in decision.PARTS:
        assert len(run.parts[part]) == SMALL.decisions
        assert all(t > 0 for t in run.parts[part])
    # the parts are inside the whole: each decision took at least its queries' time
    assert all(
        whole >= login + grants
        for whole, login, grants in zip(
            run.seconds, run.parts["login"], run.parts["grants"], strict=True
        )
    )
    assert 0 < run.p(50) <= run.p(99) <= max(run.seconds)


@contextmanager
def seeded(tmp_path: Path) -> Iterator[tuple[str, decision.World]]:
    """A fresh database seeded with SMALL: its async URL and what was seeded."""
    with decision.database(BACKEND, tmp_path, PG) as (url, sync_url):
        engine = create_engine(sync_url)
        try:
            world = decision.seed(engine, SMALL)
        finally:
            engine.dispose()
        yield url, world


def test_seeding_matches_what_the_gateway_reads(tmp_path: Path) -> None:
    with seeded(tmp_path) as (_url, world):
        assert sum(len(g) for g in world.user_grants) == SMALL.grants
        live = sum(live for grants in world.user_grants for _g, _d, live in grants)
        assert 0 < live < SMALL.grants  # live and not-live grants both exist


def test_a_decision_that_disagrees_with_the_seed_stops_the_run(tmp_path: Path) -> None:
    with seeded(tmp_path) as (url, world):
        # a broken expectation (every grant's liveness flipped) must not become a figure
        world.user_grants = [[(i, d, not live) for i, d, live in g] for g in world.user_grants]
        run = decision.Run(BACKEND, SMALL, "cold")
        with pytest.raises(MeasurementError, match="the seeded grants say"):
            run_loop(decision.measure(url, world, {"cold": run}))
        assert run.seconds == []


def test_a_cache_that_missed_a_revocation_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the cache ignored the generation (served stale grants), the revocation check
    must catch it rather than report a fast, wrong figure."""

    async def stale(self: PolicyCache) -> int | None:
        return 0

    monkeypatch.setattr(PolicyCache, "_current", stale)
    with seeded(tmp_path) as (url, world):
        run = decision.Run(BACKEND, SMALL, "warm")
        with pytest.raises(MeasurementError, match=r"the seeded grants say|did not empty"):
            run_loop(decision.measure(url, world, {"warm": run}))
        assert run.after_change == []
