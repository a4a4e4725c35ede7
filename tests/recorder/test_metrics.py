"""The telemetry API (recorder/metrics.py): each call moves exactly its own metric."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from recorder import metrics as metrics_module
from recorder.metrics import Metrics


def value(m: Metrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_sessions_live_and_total_by_kind() -> None:
    m = Metrics()
    m.session_started("shell")
    m.session_started("shell")
    m.session_started("sftp")
    assert value(m, "sallyport_sessions_live") == 3
    assert value(m, "sallyport_sessions_total", kind="shell") == 2
    assert value(m, "sallyport_sessions_total", kind="sftp") == 1
    m.session_ended()
    assert value(m, "sallyport_sessions_live") == 2
    assert value(m, "sallyport_sessions_total", kind="shell") == 2  # a total never drops


def test_refusals_by_reason() -> None:
    m = Metrics()
    m.refused("remote-forward")
    m.refused("remote-forward")
    m.refused("proxy-untrusted-peer")
    assert value(m, "sallyport_refusals_total", reason="remote-forward") == 2
    assert value(m, "sallyport_refusals_total", reason="proxy-untrusted-peer") == 1


def test_recording_bytes_add_up() -> None:
    m = Metrics()
    m.recorded(1000)
    m.recorded(24)
    assert value(m, "sallyport_recording_bytes_total") == 1024
    with pytest.raises(ValueError):
        m.recorded(-1)
    assert value(m, "sallyport_recording_bytes_total") == 1024


def test_revocation_latency_lands_in_buckets() -> None:
    m = Metrics()
    m.revocation_latency(0.2)
    m.revocation_latency(0.9)
    m.revocation_latency(-0.01)  # node clocks a little apart: counted as zero
    name = "sallyport_revocation_latency_seconds"
    assert value(m, f"{name}_count") == 3
    assert value(m, f"{name}_bucket", le="0.05") == 1
    assert value(m, f"{name}_bucket", le="0.25") == 2
    assert value(m, f"{name}_bucket", le="1.0") == 3
    assert value(m, f"{name}_sum") == pytest.approx(1.1)


def test_two_instances_do_not_share_numbers() -> None:
    a, b = Metrics(), Metrics(CollectorRegistry())
    a.refused("x")
    assert value(a, "sallyport_refusals_total", reason="x") == 1
    assert value(b, "sallyport_refusals_total", reason="x") == 0


def test_module_functions_move_the_process_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = Metrics()
    monkeypatch.setattr(metrics_module, "METRICS", fresh)
    metrics_module.session_started("jump")
    metrics_module.refused("agent-forwarding")
    metrics_module.recorded(7)
    metrics_module.revocation_latency(0.5)
    metrics_module.session_ended()
    assert value(fresh, "sallyport_sessions_total", kind="jump") == 1
    assert value(fresh, "sallyport_sessions_live") == 0
    assert value(fresh, "sallyport_refusals_total", reason="agent-forwarding") == 1
    assert value(fresh, "sallyport_recording_bytes_total") == 7
    assert value(fresh, "sallyport_revocation_latency_seconds_count") == 1


def test_the_process_registry_reports_process_memory() -> None:
    assert metrics_module.METRICS.registry.get_sample_value("process_resident_memory_bytes")
