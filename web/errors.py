"""Errors as responses: JSON ``{code, message}`` under ``/api/``, an error page elsewhere.

Handlers raise ``policy.errors`` exceptions and this middleware answers with the status
that fits: ``InvalidInput`` 400, ``Forbidden`` 403, ``NotFound`` 404, ``Conflict`` 409,
any other ``PolicyError`` 400 (``VaultError`` and ``ConfigError`` are the server's fault:
500). A form that should come back with its input and the message beside it catches the
``PolicyError`` itself and calls ``render(..., error=exc.message, status=400)``.

Refusals are audited where they are decided (the policy function, ``@requires``, the CSRF
check, the login handler), not here: this layer only shapes the answer.

A database that does not answer is 503 with that reason; any other exception is 500 with
a generic message and a reference that is also in the log next to the traceback.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from policy.errors import PolicyError
from web.render import render

log = structlog.get_logger("web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_BY_CLASS = {
    "InvalidInput": 400,
    "Forbidden": 403,
    "NotFound": 404,
    "Conflict": 409,
    "RateLimited": 429,
    "VaultError": 500,
    "ConfigError": 500,
}
TITLES = {
    400: "The request cannot be carried out",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many attempts",
    413: "Too large",
    500: "Internal error",
    503: "Service unavailable",
}


def json_error(code: str, message: str, status: int) -> web.Response:
    """The API's error body: ``{"code": ..., "message": ...}``."""
    return web.json_response({"code": code, "message": message}, status=status)


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def status_for(exc: PolicyError) -> int:
    """The HTTP status for a policy error, by its class (or the nearest mapped base)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in STATUS_BY_CLASS:
            return STATUS_BY_CLASS[cls.__name__]
    return 400


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """JSON under ``/api/``, else the error page, both saying ``message``."""
    if is_api(request):
        return json_error(code, message, status)
    return render(
        request,
        "error.html",
        status=status,
        title=TITLES.get(status, "Error"),
        code=code,
        message=message,
    )


def _internal(request: web.Request, exc: BaseException) -> web.Response:
    reference = secrets.token_hex(6)
    log.error(
        "web request failed",
        reference=reference,
        method=request.method,
        path=request.path,
        exc_info=exc,
    )
    message = f"something went wrong on the server; reference {reference} is in its log"
    return error_response(request, 500, "internal-error", message)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PolicyError as exc:
        status = status_for(exc)
        if status >= 500:
            return _internal(request, exc)
        log.info("web request refused", code=exc.code, status=status, path=request.path)
        return error_response(request, status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status in (404, 405) and (is_api(request) or exc.status == 404):
            code = "not-found" if exc.status == 404 else "method-not-allowed"
            message = (
                f"there is nothing at {request.path}"
                if exc.status == 404
                else f"{request.method} is not allowed on {request.path}"
            )
            response = error_response(request, exc.status, code, message)
            if "Allow" in exc.headers:  # RFC 9110: a 405 names the methods that work
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        if exc.status == 413:
            return error_response(request, 413, "too-large", "the request body is too large")
        raise
    except (SQLAlchemyError, OSError) as exc:
        log.error("web request failed: database", path=request.path, error=str(exc))
        return error_response(
            request, 503, "database-unreachable", "the database does not answer; try again soon"
        )
    except Exception as exc:
        return _internal(request, exc)
