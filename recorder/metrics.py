"""Telemetry: the Prometheus metrics one sallyport process exposes, and the calls that move them.

It lives in ``recorder`` (evidence *and* telemetry: what happened, counted) because both
sides need it and the dependency rule allows only this: ``broker`` (the gateway) moves the
numbers, ``web`` serves them at ``/metrics`` (``web/metrics.py``), and ``web`` never imports
``broker``. ``sallyport serve`` runs gateway and web in one process, so the web port of
each node shows that node's gateway; scrape every node.

The broker calls the module-level functions (``session_started(kind)``,
``session_ended()``, ``refused(reason)``, ``recorded(nbytes)``,
``revocation_latency(seconds)``), which move the process-wide ``METRICS``. Tests build
their own ``Metrics()`` on a fresh registry. Label values are fixed codes from the code
(``shell``, ``remote-forward``), never text a vendor typed: each distinct value is a new
time series.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

# Revocation to disconnect: the target is p99 under one second (DESIGN.md), so the
# buckets are fine below a second and coarse above it.
REVOCATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The collectors, registered on one registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:  # resident memory, CPU, open fds, GC: what sizing watches
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.sessions_live = Gauge(
            "sallyport_sessions_live",
            "Vendor sessions open on this gateway process now",
            registry=self.registry,
        )
        self.sessions = Counter(
            "sallyport_sessions",
            "Vendor sessions started, by kind (shell, exec, sftp, scp, forward, jump)",
            ["kind"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "sallyport_refusals",
            "Requests the gateway refused, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.recording_bytes = Counter(
            "sallyport_recording_bytes",
            "Bytes of recordings handed to storage",
            registry=self.registry,
        )
        self.revocation_seconds = Histogram(
            "sallyport_revocation_latency_seconds",
            "Time from a revocation or kill being written to the session being ended",
            buckets=REVOCATION_BUCKETS,
            registry=self.registry,
        )

    def session_started(self, kind: str) -> None:
        self.sessions.labels(kind=kind).inc()
        self.sessions_live.inc()

    def session_ended(self) -> None:
        self.sessions_live.dec()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def recorded(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError("a recording cannot shrink")
        self.recording_bytes.inc(nbytes)

    def revocation_latency(self, seconds: float) -> None:
        # Clocks of two nodes may disagree a little: a negative latency is a zero.
        self.revocation_seconds.observe(max(seconds, 0.0))


METRICS = Metrics(process=True)
"""This process's metrics: what ``/metrics`` serves unless told otherwise."""


def session_started(kind: str) -> None:
    """A vendor channel began (``kind``: shell, exec, sftp, scp, forward, jump)."""
    METRICS.session_started(kind)


def session_ended() -> None:
    """A session counted by ``session_started`` ended (call exactly once for each)."""
    METRICS.session_ended()


def refused(reason: str) -> None:
    """The gateway refused something; ``reason`` is the refusal's code."""
    METRICS.refused(reason)


def recorded(nbytes: int) -> None:
    """``nbytes`` of recording were handed to storage."""
    METRICS.recorded(nbytes)


def revocation_latency(seconds: float) -> None:
    """A revoked or killed session was ended ``seconds`` after the request was written."""
    METRICS.revocation_latency(seconds)
