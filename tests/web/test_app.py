"""The web tier's health endpoint and API description, served by a real aiohttp server."""

from __future__ import annotations

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.db import create_engine, session_factory
from web.app import start_web


async def test_health_reports_the_database(db: async_sessionmaker[AsyncSession]) -> None:
    runner = await start_web(db, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/api/v1/health") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ok", "database": "ok"}
            async with http.get(f"http://127.0.0.1:{port}/api/v1/openapi.json") as resp:
                doc = await resp.json()
                assert doc["openapi"].startswith("3.")
                assert "/api/v1/health" in doc["paths"]
    finally:
        await runner.cleanup()


async def test_health_says_when_the_database_is_gone() -> None:
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    runner = await start_web(session_factory(engine), "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/api/v1/health") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["code"] == "database-unreachable"
    finally:
        await runner.cleanup()
        await engine.dispose()
