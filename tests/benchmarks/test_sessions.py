"""Latency and memory around a small recorded session pool: every figure really measured."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from benchmarks import echo, render, sessions
from benchmarks.loadgen import LoadGenerator, Opened, Spec
from benchmarks.rig import DEVICE, Rig, rig
from benchmarks.sessions import DIRECT, GATEWAY
from benchmarks.stats import MeasurementError
from policy import totp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory.mktemp("rig"), users=2) as r:
        yield r


def _cast(path: Path) -> tuple[str, int]:
    """(title, characters of output) of an asciicast recording."""
    header, *lines = path.read_text().splitlines()
    chars = sum(len(event[2]) for event in map(json.loads, lines) if event[1] == "o")
    return json.loads(header)["title"], chars


def test_probes_pool_and_memory_through_the_gateway(bench: Rig) -> None:
    # fast typists and 30 probes: enough CPU in the watched window to show in clock ticks
    config = sessions.Config(
        sessions=3, probes=30, idle_runs=2, rate=100, settle=0.2, typing_warmup=0.5
    )
    casts_before = set(bench.recordings_dir.rglob("*.cast"))
    result = sessions.run(bench, config)
    assert result.loaded is not None and result.typed is not None and result.opened
    for run in [*result.idle, result.loaded]:
        assert len(run.seconds[DIRECT]) == len(run.seconds[GATEWAY]) == 30
        assert all(t > 0 for path in (DIRECT, GATEWAY) for t in run.seconds[path])
    assert result.opened.sessions == 3 and result.opened.failed == 0
    assert result.typed.sessions == 3 and result.typed.keystrokes > 0
    assert result.typed.missed == 0 and result.typed.lost == 0
    assert result.fds_per_session() >= 2  # vendor and device sockets, at least
    assert result.memory_per_session() > 0
    assert result.cpu is not None and result.cpu.gateway > 0 and result.cpu.machine > 0
    assert result.cpu.loadgen > 0  # the pool typed in its own process
    # the probe's and the pool's sessions went through the gateway and were recorded,
    # each keystroke's echo included
    casts = [_cast(c) for c in set(bench.recordings_dir.rglob("*.cast")) - casts_before]
    assert sorted(title.split()[0][:4] for title, _chars in casts) == ["benc", *["load"] * 3]
    echoed = sum(chars - len(echo.READY) for title, chars in casts if title.startswith("load"))
    assert echoed >= result.typed.keystrokes
    text = render.latency_markdown(result) + render.memory_markdown(result)
    assert "| loaded | sallyport |" in text and "fds per session" in text


def test_a_pool_that_cannot_log_in_reports_why(bench: Rig, tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    stranger = {"login": "nobody", "secret": totp.new_secret(), "private_key": key}
    spec = Spec(bench.gateway_port, bench.gateway_host_key, DEVICE, [stranger, stranger])
    load = LoadGenerator(spec, tmp_path)
    try:
        opened = load.opened()
    finally:
        load.stop()
    assert opened.sessions == 0 and opened.failed == 2
    assert any("refused" in e for e in opened.errors)
    assert load.proc.returncode == 0  # stdin closed: it stopped by itself


def test_fds_that_did_not_grow_mean_the_wrong_process() -> None:
    result = sessions.SessionsResult(sessions.Config(sessions=5), [])
    result.opened = Opened(5, 0, 1.0)
    result.fds_before, result.fds_open = 10, 12
    result.rss_before, result.rss_open = 100, 200
    with pytest.raises(MeasurementError, match="does not hold them"):
        sessions.check_gateway_holds(result)
    result.fds_open, result.rss_open = 30, 100
    with pytest.raises(MeasurementError, match="did not grow"):
        sessions.check_gateway_holds(result)


def test_a_pool_stops_typing_by_itself_at_its_time_limit(bench: Rig, tmp_path: Path) -> None:
    [user] = bench.add_load_users(1)
    spec = Spec(bench.gateway_port, bench.gateway_host_key, DEVICE, [vars(user)], type_limit=0.5)
    load = LoadGenerator(spec, tmp_path)
    try:
        assert load.opened().sessions == 1
        load.start_typing()
        time.sleep(1.0)
        typed = load.typed()
    finally:
        load.stop()
    assert typed.time_limit  # the parent learns the load ended early, so the run can refuse
    assert 0 < typed.seconds < 1.0 and typed.keystrokes > 0
