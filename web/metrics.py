"""``GET /metrics``: this process's Prometheus metrics (``recorder.metrics``).

Served by prometheus_client's own aiohttp handler, which picks the exposition format from
the scraper's ``Accept`` header (Prometheus text, or OpenMetrics when asked) and
compresses when the scraper accepts it. The endpoint carries counts, no names or
addresses; still, expose it only to the monitoring network (see docs/DEPLOYMENT.md).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from recorder.metrics import METRICS, Metrics

PATH = "/metrics"


def add_metrics_route(app: web.Application, metrics: Metrics | None = None) -> None:
    """Serve ``metrics`` (default: the process-wide ``METRICS``) at ``/metrics``."""
    registry = (metrics if metrics is not None else METRICS).registry
    app.router.add_get(PATH, make_aiohttp_handler(registry))
