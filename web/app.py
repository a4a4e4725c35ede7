"""The web tier: health and the API description (the portal pages come with the workflow).

The web process never imports ``broker``; it shares the database with the gateway.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.metrics import add_metrics_route

SESSIONS: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessions")

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "sallyport API", "version": "1"},
    "paths": {
        "/api/v1/health": {
            "get": {
                "summary": "Liveness and database reachability",
                "responses": {
                    "200": {
                        "description": "healthy",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                        },
                    },
                    "503": {
                        "description": "database unreachable",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
        }
    },
    "components": {
        "schemas": {
            "Health": {
                "type": "object",
                "required": ["status", "database"],
                "properties": {"status": {"type": "string"}, "database": {"type": "string"}},
            },
            "Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
        }
    },
}


async def health(request: web.Request) -> web.Response:
    try:
        async with request.app[SESSIONS]() as db:
            await db.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        return web.json_response(
            {"code": "database-unreachable", "message": "the database does not answer"}, status=503
        )
    return web.json_response({"status": "ok", "database": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def create_app(sessions: async_sessionmaker[AsyncSession]) -> web.Application:
    app = web.Application()
    app[SESSIONS] = sessions
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/openapi.json", openapi)
    add_metrics_route(app)
    return app


async def start_web(
    sessions: async_sessionmaker[AsyncSession], host: str, port: int
) -> web.AppRunner:
    runner = web.AppRunner(create_app(sessions), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
