"""Server-rendered pages: ``render``, ``flash`` and ``redirect`` for every handler.

Templates live in ``web/templates`` and extend ``base.html``::

    {% extends "base.html" %}
    {% block title %}Queue{% endblock %}
    {% block content %}
      <form method="post" action="/queue/12/approve">
        <input type="hidden" name="_csrf" value="{{ csrf_token() }}">
        ...
      </form>
    {% endblock %}

Autoescaping is on for every template. ``render(request, "queue.html", items=...)`` adds
to the context: ``principal`` (``web.context.Principal`` or None), ``nav`` (the links
this principal's roles may use), ``flashes`` (messages queued with ``flash`` by the
previous request, as ``(kind, text)``), ``error`` (None unless given) and ``request``.
``csrf_token()`` is a template global. Pages other modules add appear in the navigation
as soon as a GET route with the path in ``NAV`` exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from web.context import PRINCIPAL, Principal
from web.security import csrf_token
from web.sessions import session

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
FLASH_KINDS = ("info", "success", "error")


@dataclass(frozen=True)
class NavLink:
    label: str
    path: str
    roles: frozenset[str]


def _links(roles: set[str], *pairs: tuple[str, str]) -> list[NavLink]:
    return [NavLink(label, path, frozenset(roles)) for label, path in pairs]


# Every page a role uses, in menu order; a link shows only once its GET route exists.
NAV: tuple[NavLink, ...] = (
    *_links(
        {"vendor"},
        ("My requests", "/requests"),
        ("New request", "/requests/new"),
        ("How to connect", "/connect"),
        ("SSH keys", "/keys"),
    ),
    *_links({"biomed", "security"}, ("Queue", "/queue"), ("Grants", "/grants")),
    *_links({"security", "admin"}, ("Sessions", "/sessions"), ("Search", "/search")),
    *_links({"security", "admin", "biomed"}, ("Live", "/live")),
    *_links({"admin", "biomed"}, ("Devices", "/admin/devices"), ("Vendors", "/admin/vendors")),
    *_links(
        {"admin"},
        ("Segments", "/admin/segments"),
        ("Staff", "/admin/staff"),
        ("Tokens", "/admin/tokens"),
    ),
)


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["csrf_token"] = _csrf_global


@jinja2.pass_context
def _csrf_global(context: jinja2.runtime.Context) -> str:
    request = context.get("request")
    if not isinstance(request, web.Request):
        raise RuntimeError("csrf_token() needs the request in the template context")
    return csrf_token(request)


def nav_for(request: web.Request, who: Principal | None) -> list[dict[str, Any]]:
    """The menu for ``who``: links whose roles they hold and whose page exists."""
    if who is None:
        return []
    existing = _get_paths(request.app)
    return [
        {"label": link.label, "path": link.path, "current": request.path == link.path}
        for link in NAV
        if who.roles & link.roles and link.path in existing
    ]


def _get_paths(app: web.Application) -> set[str]:
    paths = set()
    for route in app.router.routes():
        if route.method in ("GET", "*"):
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path")
            if isinstance(path, str):
                paths.add(path)
    return paths


def flash(request: web.Request, message: str, kind: str = "info") -> None:
    """Queue ``message`` for the next page this browser renders (after a redirect)."""
    if kind not in FLASH_KINDS:
        raise ValueError(f"flash kind {kind!r} is not one of {FLASH_KINDS}")
    current = session(request)
    current["flash"] = [*current.get("flash", []), [kind, message]]


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    """Render ``template`` with ``context`` plus principal, nav, flashes and the CSRF token."""
    who = request.get(PRINCIPAL)
    current = session(request)
    flashes = [tuple(item) for item in current.pop("flash", [])]
    full = {
        "request": request,
        "principal": who,
        "nav": nav_for(request, who),
        "flashes": flashes,
        "error": None,
        **context,
    }
    return aiohttp_jinja2.render_template(template, request, full, status=status)


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs ``location`` (no resubmission)."""
    return web.Response(status=303, headers={"Location": location})


def safe_next(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site, else ``default`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ch in target for ch in "\r\n\t\\"):
        return default
    return target
