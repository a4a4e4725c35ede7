"""``GET /metrics`` (web/metrics.py) served by a real aiohttp server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.metrics import METRICS, Metrics
from web.app import create_app
from web.metrics import add_metrics_route

NAMES = {
    "sallyport_sessions_live",
    "sallyport_sessions",
    "sallyport_refusals",
    "sallyport_recording_bytes",
    "sallyport_revocation_latency_seconds",
}


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def base_url(metrics: Metrics) -> AsyncIterator[str]:
    app = web.Application()
    add_metrics_route(app, metrics)
    async for url in serve(app):
        yield url


async def scrape(url: str, accept: str | None = None) -> tuple[str, dict[str, float]]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics", headers=headers) as resp:
            assert resp.status == 200
            content_type = resp.headers["Content-Type"]
            body = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{label}}}"] = s.value
    return content_type, samples


async def test_metrics_are_prometheus_text_with_our_names(base_url: str) -> None:
    content_type, _ = await scrape(base_url)
    assert content_type.startswith("text/plain; version=0.0.4")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/metrics") as resp:
            families = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert families >= NAMES


async def test_values_follow_the_api(base_url: str, metrics: Metrics) -> None:
    _, before = await scrape(base_url)
    assert before["sallyport_sessions_live{}"] == 0
    assert before["sallyport_recording_bytes_total{}"] == 0

    metrics.session_started("shell")
    metrics.session_started("forward")
    metrics.session_ended()
    metrics.refused("remote-forward")
    metrics.recorded(4096)
    metrics.revocation_latency(0.4)

    _, after = await scrape(base_url)
    assert after["sallyport_sessions_live{}"] == 1
    assert after["sallyport_sessions_total{kind=shell}"] == 1
    assert after["sallyport_sessions_total{kind=forward}"] == 1
    assert after["sallyport_refusals_total{reason=remote-forward}"] == 1
    assert after["sallyport_recording_bytes_total{}"] == 4096
    assert after["sallyport_revocation_latency_seconds_count{}"] == 1
    assert after["sallyport_revocation_latency_seconds_bucket{le=0.5}"] == 1
    assert after["sallyport_revocation_latency_seconds_bucket{le=0.25}"] == 0


async def test_openmetrics_when_the_scraper_asks(base_url: str, metrics: Metrics) -> None:
    metrics.refused("x")
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{base_url}/metrics", headers={"Accept": "application/openmetrics-text"}
        ) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            body = await resp.text()
    assert body.rstrip().endswith("# EOF")
    assert 'sallyport_refusals_total{reason="x"} 1.0' in body


async def test_the_app_serves_the_process_metrics() -> None:
    app = create_app(async_sessionmaker())  # /metrics never touches the database
    async for url in serve(app):
        _, samples = await scrape(url)
        live = METRICS.registry.get_sample_value("sallyport_sessions_live")
        assert samples["sallyport_sessions_live{}"] == live
        assert "process_resident_memory_bytes{}" in samples
