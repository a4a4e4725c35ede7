"""Browser-facing protections: CSRF tokens and the security headers on every response.

CSRF. Every POST, PUT, PATCH and DELETE from a browser must carry the CSRF token, as the
hidden form field ``_csrf`` (templates: ``<input type="hidden" name="_csrf"
value="{{ csrf_token() }}">``) or the ``X-CSRF-Token`` header. The token is the secret
kept in the stored session; a browser without a stored session (the login and invite
forms) gets it in the ``sallyport_csrf`` cookie instead and must echo it (double submit).
Requests authenticated by an API token (``Authorization: Bearer``) are exempt: a browser
never attaches that header on its own, so a forged cross-site request cannot carry it.
A refusal is 403 with a message and the audit event ``web:csrf:refused``.

The middleware reads the form with ``await request.post()``, which aiohttp caches, so the
handler reads it again for free. A handler that streams a multipart body itself
(``request.multipart()``) must be called with the header instead of the form field.

Headers. ``add_security_headers`` runs for every response (pages, errors, static files,
the API): a strict Content-Security-Policy (no inline script or style; images may be
``data:`` URIs for the TOTP QR code), no framing, no MIME sniffing, no referrer, and
``Cache-Control: no-store`` on everything but static files, so a signed-in page never
lands in a shared or back-button cache.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from policy.errors import Forbidden
from web.context import CTX, PRINCIPAL
from web.sessions import CSRF_COOKIE, session

FIELD = "_csrf"
HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_NEW_COOKIE: web.RequestKey[str] = web.RequestKey("sallyport_new_csrf_cookie", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def csrf_token(request: web.Request) -> str:
    """The token forms on this page must send back (templates call ``csrf_token()``)."""
    current = session(request)
    token = current.get("csrf")
    if isinstance(token, str):
        return token
    cookie = request.cookies.get(CSRF_COOKIE) or request.get(_NEW_COOKIE)
    if cookie:
        return cookie
    fresh = secrets.token_urlsafe(32)
    request[_NEW_COOKIE] = fresh  # set on the response by the middleware
    return fresh


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: the headers above on every response."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"


def _expected(request: web.Request) -> str | None:
    token = session(request).get("csrf")
    if isinstance(token, str):
        return token
    return request.cookies.get(CSRF_COOKIE)


async def _presented(request: web.Request) -> str | None:
    header = request.headers.get(HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(FIELD)
        return value if isinstance(value, str) else None
    return None


async def check_csrf(request: web.Request) -> None:
    """Raise ``Forbidden`` (after auditing it) unless the request carries the right token."""
    expected = _expected(request)
    presented = await _presented(request)
    if expected and presented and hmac.compare_digest(expected.encode(), presented.encode()):
        return
    reason = "no-secret" if not expected else "missing" if not presented else "mismatch"
    who = request.get(PRINCIPAL)
    await request.app[CTX].audit.record(
        "web:csrf:refused",
        actor=who.name if who else "",
        method=request.method,
        path=request.path,
        reason=reason,
        address=request.remote or "",
    )
    if reason == "no-secret":
        message = (
            "this form needs a cookie your browser did not send; allow cookies for this "
            "site, reload the page and try again"
        )
    else:
        message = (
            "the form's security token is missing or out of date (the page may be from "
            "an earlier session); reload the page and try again"
        )
    raise Forbidden("csrf-refused", message)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token on unsafe methods from browsers; hand out the anonymous cookie."""
    who = request.get(PRINCIPAL)
    routed = request.match_info.http_exception is None  # a 404/405 reaches no handler
    if routed and request.method in UNSAFE and not (who is not None and who.via == "token"):
        await check_csrf(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _set_new_cookie(request, exc)
        raise
    _set_new_cookie(request, response)
    return response


def _set_new_cookie(request: web.Request, response: web.StreamResponse) -> None:
    token = request.get(_NEW_COOKIE)
    if token is not None:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path="/",
            httponly=True,
            secure=request.app[CTX].settings.web_cookie_secure,
            samesite="Lax",
        )
