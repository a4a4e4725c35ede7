"""The web tier: the portal's pages, the JSON API, health, metrics.

The web process never imports ``broker``; it shares the database with the gateway.

How a page module plugs in (the contract for every module in ``ROUTE_MODULES``):

* It exposes ``setup(app: web.Application) -> None`` that adds its routes
  (``app.router.add_get("/queue", queue)``). Routes under ``/api/v1`` are declared as
  ``web.openapi.Operation`` specs and added with ``web.openapi.add_operations``, which
  documents each one in ``app[OPENAPI]`` as it registers it (tests/web/test_openapi.py
  checks that the served routes and the document agree).
* Every route is private: ``web.auth.auth_middleware`` refuses anonymous requests to any
  route not in ``web.auth.PUBLIC``. Handlers narrow it with ``@requires("admin")``
  (``web.auth``); ``principal(request)`` says who is asking, ``actor(request)`` gives the
  ``policy.actor.Actor`` the workflow functions take, and ``ctx(request)``
  (``web.context``) the database, settings, vault, audit log, clock and notifier.
* Pages: ``render(request, "x.html", **values)``, ``flash(request, text, kind)`` and
  ``redirect(path)`` (``web.render``); forms carry ``{{ csrf_token() }}`` in ``_csrf``.
  Raise ``policy.errors`` exceptions for refusals (``web.errors`` turns them into 400,
  403, 404, 409 pages or JSON ``{code, message}`` under ``/api/``) and audit them where
  decided. API handlers answer ``web.openapi.json_reply``.
* Responses get the security headers (``web.security``); POST/PUT/PATCH/DELETE from a
  browser need the CSRF token, API calls with a bearer token do not.

Middleware order, outermost first: errors (exceptions to responses), auth (session,
principal, refusal of anonymous requests), CSRF.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web import (
    admin_import,
    admin_inventory,
    admin_people,
    api,
    auth,
    onboarding,
    queue,
    requests,
    review,
    terminal,
)
from web.context import CTX, WebContext
from web.errors import errors_middleware
from web.metrics import add_metrics_route
from web.openapi import OPENAPI, base_document
from web.render import STATIC, render, setup_templates
from web.security import add_security_headers, csrf_middleware

SESSIONS: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessions")

# Each module's setup(app) adds its routes; the order is the order of registration.
ROUTE_MODULES: Sequence[Callable[[web.Application], None]] = (
    auth.setup,
    onboarding.setup,
    admin_inventory.setup,
    admin_import.setup,
    admin_people.setup,
    queue.setup,
    review.setup,
    requests.setup,
    terminal.setup,
    api.setup,
)


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
    return web.json_response(request.app[OPENAPI])


async def home(request: web.Request) -> web.StreamResponse:
    """The signed-in landing page: who you are and where your work is."""
    return render(request, "home.html")


def _add_probes(app: web.Application, sessions: async_sessionmaker[AsyncSession]) -> None:
    """Health, the API document and metrics: public, served without a session."""
    app[SESSIONS] = sessions
    app[OPENAPI] = base_document()
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/openapi.json", openapi)
    add_metrics_route(app)
    app.on_response_prepare.append(add_security_headers)


def create_app(ctx: WebContext | async_sessionmaker[AsyncSession]) -> web.Application:
    """The whole portal for a ``WebContext``.

    Given only a session factory it serves the probes alone (health, the API document,
    metrics): what a monitoring-only listener needs, and what older callers pass.
    """
    if not isinstance(ctx, WebContext):
        probes = web.Application()
        _add_probes(probes, ctx)
        return probes
    app = web.Application(
        middlewares=[errors_middleware, auth.auth_middleware, csrf_middleware],
        client_max_size=16 * 1024**2,  # a CMMS export of tens of thousands of devices
    )
    app[CTX] = ctx
    _add_probes(app, ctx.sessions)
    setup_templates(app)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/", home)
    for setup in ROUTE_MODULES:
        setup(app)
    return app


async def start_web(
    ctx: WebContext | async_sessionmaker[AsyncSession], host: str, port: int
) -> web.AppRunner:
    runner = web.AppRunner(create_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
