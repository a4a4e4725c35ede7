"""BENCHMARKS.md: sections merge by name, verdicts follow the figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import decision, render, report
from benchmarks.loadgen import Opened, Typed
from benchmarks.sessions import DIRECT, GATEWAY, Config, CpuShare, LatencyRun, SessionsResult

ROOT = Path(__file__).resolve().parents[2]


def _old_file() -> str:
    return (
        "# Benchmarks\n\nold header\n\n"
        f"{report.SECTION.format('bulk')}\n## Bulk transfer\n\nold bulk figures\n\n"
        f"{report.SECTION.format('revocation')}\n## Revocation\n\nold revocation\n\n"
        f"{report.NOTES_MARKER}\n## Notes\n\nhand-written\n"
    )


def test_merge_replaces_measured_sections_and_keeps_the_rest() -> None:
    merged = report.merge(_old_file(), {"bulk": "## Bulk transfer\n\nnew bulk\n", "policy": "P\n"})
    assert "new bulk" in merged and "old bulk figures" not in merged
    assert "old revocation" in merged  # not measured this time: kept
    assert merged.endswith(f"{report.NOTES_MARKER}\n## Notes\n\nhand-written\n")
    assert "old header" not in merged and "Machine:" in merged  # header regenerated
    order = [merged.index(report.SECTION.format(n)) for n in ("bulk", "policy", "revocation")]
    assert order == sorted(order)
    sections, _notes = report.split(merged)
    assert sections["policy"] == "P\n"


def test_merge_refuses_a_section_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown"):
        report.merge("", {"throughput": "x"})


def test_the_checked_in_file_splits_into_known_sections() -> None:
    sections, notes = report.split((ROOT / "BENCHMARKS.md").read_text())
    assert {"bulk", "setup", "revocation"} <= set(sections) <= set(report.ORDER)
    assert notes.startswith(report.NOTES_MARKER)


def _run(label: str, direct_ms: list[float], gateway_ms: list[float]) -> LatencyRun:
    return LatencyRun(
        label,
        {DIRECT: [v / 1000 for v in direct_ms], GATEWAY: [v / 1000 for v in gateway_ms]},
        0.1,
        0.1,
    )


def _result(idle_added: float, loaded_added: float, opened: int = 10) -> SessionsResult:
    result = SessionsResult(
        Config(sessions=10, probes=3),
        [
            _run("idle 1", [1, 1, 9], [2, 2, 9 + 50]),  # disturbed: direct p99 9 ms
            _run("idle 2", [1, 1, 1], [2, 2, 1 + idle_added]),
        ],
    )
    result.loaded = _run("loaded", [1, 1, 2], [2, 2, 2 + loaded_added])
    result.opened = Opened(opened, 10 - opened, 4.0, ["ChannelOpenError: refused"] * (opened < 10))
    result.typed = Typed(opened, 500, 0, 0, 10.0, 5.0 * opened, 0.002, 0.004)
    result.rss_before, result.rss_open = 100 * 2**20, 100 * 2**20 + 10 * 300 * 1024
    result.fds_before, result.fds_open = 20, 50
    result.cpu = CpuShare(seconds=10.0, gateway=9.5, loadgen=4.0, machine=19.0)
    return result


def test_latency_verdicts_use_the_least_disturbed_idle_run() -> None:
    met = render.latency_markdown(_result(idle_added=1.5, loaded_added=19))
    assert "(idle 2)" in met  # idle 1's direct p99 was 9 ms
    assert "**met** (1.50 ms)" in met and "**met** (19.00 ms)" in met
    missed = render.latency_markdown(_result(idle_added=2.5, loaded_added=25))
    assert "**not met** (2.50 ms)" in missed and "**not met** (25.00 ms)" in missed


def test_the_cpu_line_says_who_was_busy() -> None:
    text = render.latency_markdown(_result(1.0, 5.0))
    assert "gateway process used 0.95 CPU seconds per second" in text
    assert "load generator 0.40, the whole machine 1.90" in text
    # 0.95 CPU s/s over 50 pool keys/s and 3 probe keys in 10 s
    assert "about 18887 us of gateway CPU per echoed keystroke" in text


def test_a_load_that_was_not_reached_is_said() -> None:
    text = render.latency_markdown(_result(1.0, 5.0, opened=7))
    assert "only 7 of 10 sessions opened (ChannelOpenError: refused)" in text
    assert "reached 7 of the 35 keystrokes/s" not in text  # 500/10 s = 50/s >= 90% of 35
    memory = render.memory_markdown(_result(1.0, 5.0, opened=7))
    assert "Only 7 of 10 sessions opened" in memory


def test_memory_per_session_is_the_growth_over_the_sessions() -> None:
    result = _result(1.0, 5.0)
    assert result.memory_per_session() == 300 * 1024
    assert result.fds_per_session() == 3.0
    text = render.memory_markdown(result)
    assert "**300 KiB**" in text and "**met** (0.293 MiB)" in text
    result.rss_open = result.rss_before + 10 * 2 * 2**20
    assert "**not met** (2.000 MiB)" in render.memory_markdown(result)


def test_policy_verdict_per_database_and_mode() -> None:
    config = decision.Config(devices=10, grants=20, users=5, decisions=3)
    fast = decision.Run("sqlite", config, "warm", [0.0002, 0.0004, 0.0009], [0.004, 0.005, 0.006])
    slow = decision.Run("postgresql", config, "cold", [0.0005, 0.0009, 0.0031])
    for run in (fast, slow):
        run.parts = {p: list(run.seconds) for p in decision.PARTS}
    text = render.policy_markdown(decision.Result(config, [fast, slow]))
    assert "sqlite warm **met** (0.90 ms)" in text
    assert "postgresql cold **not met** (3.10 ms)" in text
    assert "| sqlite | warm |" in text
    assert (
        "sqlite: 3 revocations, each seen by the next decision (p50 5.00 ms, max 6.00 ms)" in text
    )
    assert "postgresql: 0 revocations" not in text  # no after-change figures for cold
