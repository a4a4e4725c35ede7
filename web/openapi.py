"""The API's OpenAPI 3.1 document, built from the same specs that register the routes.

An API route is declared once, as an ``Operation``: method, path, roles, parameters,
request body and responses. ``add_operations`` registers the route with aiohttp *and*
writes its entry in ``app[OPENAPI]``, so the document cannot list a route that is not
served, miss one that is, or describe a body the handler does not take:

* ``Operation.roles`` is enforced with ``web.auth.requires`` and stated in the document;
* path and query parameters are parsed and checked against their schemas before the
  handler runs (``param-invalid``, or ``time-invalid`` for a time without an offset);
* a JSON body is checked against the schema the document shows (``body-invalid``, with
  ``field`` naming the offending field) by ``web.api_input.check``, which refuses at
  start-up a schema using a keyword it does not enforce;
* the handler gets the parsed values in a ``web.api_input.Call``.

Refusals of bad input are audited here as ``web:api:refused``; so is any refusal of a
read (GET): the read helpers in ``policy`` do not audit. Writes go through policy
functions that audit their own refusals; a write handler that refuses something itself
calls ``refused`` to audit it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from policy.errors import PolicyError
from web.api_input import (
    YEARS,
    BadInput,
    Body,
    Call,
    CsvBody,
    Param,
    Schema,
    assert_supported,
    obj,
    ref,
    resolve,
    text,
)
from web.auth import principal, requires
from web.context import ctx

OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)
API = "/api/v1"
REFUSED = "web:api:refused"
ALL_ROLES = frozenset({"vendor", "biomed", "security", "admin"})
STAFF = frozenset({"biomed", "security", "admin"})

ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": text("stable and machine-readable, e.g. request-not-pending"),
        "message": text("for people: what is wrong and what to change"),
        "field": text("the request field or parameter at fault (body-invalid, ...)"),
        "errors": {
            "type": "array",
            "description": "every problem found, by line (CSV import)",
            "items": obj({"line": {"type": "integer"}, "message": {"type": "string"}}),
        },
    },
    "additionalProperties": False,
}


def base_document() -> dict[str, Any]:
    """The document before any module adds operations: health and the document itself,
    which ``web.app`` serves on every listener (also the probes-only one)."""

    def answer(description: str, schema: Schema) -> Schema:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sallyport API",
            "version": "1",
            "description": (
                "Access requests, approvals, grants, devices and gateway sessions; vendor SSH "
                "keys; segments, vendor organizations, invites, staff and API tokens. "
                "Authenticate with an API token (Authorization: Bearer spt_...) made by an "
                "administrator; the token acts as its user, with that user's roles at each "
                "call. A signed-in browser may call the API too, sending its CSRF token in "
                "X-CSRF-Token on writes. Errors are JSON {code, message}. Times are RFC 3339 "
                f"with an offset, in the years {YEARS[0]} to {YEARS[1]}. Text may not hold"
                " NUL characters."
            ),
        },
        "paths": {
            f"{API}/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and database reachability",
                    "tags": ["probes"],
                    "security": [],
                    "responses": {
                        "200": answer("healthy", ref("Health")),
                        "503": answer("database unreachable", ref("Error")),
                    },
                }
            },
            f"{API}/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "tags": ["probes"],
                    "security": [],
                    "responses": {
                        "200": answer("the OpenAPI document", {"type": "object"}),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token (spt_...) made by an administrator",
                }
            },
            "schemas": {
                "Health": obj({"status": text(), "database": text()}),
                "Error": copy.deepcopy(ERROR_SCHEMA),
            },
        },
        "security": [{"token": []}],
    }


# --- operations -----------------------------------------------------------------------------

ApiHandler = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]

ERROR_STATUSES = {
    400: "the input is not valid (body-invalid, param-invalid, time-invalid, or a rule)",
    401: "no credentials, or an unknown, revoked or disabled API token",
    403: "the caller's roles do not allow this (role-required, not-yours, ...)",
    404: "no such thing, or one the caller may not see",
    409: "the thing is in the wrong state for this (e.g. request-not-pending)",
    415: "the body is not of the media type this operation takes",
    429: "too many invalid API tokens from this address lately (Retry-After says how long)",
}


@dataclass(frozen=True)
class Operation:
    """One API route: what it takes, who may call it, what it answers.

    ``reply`` names the component schema of the success answer (``status``); the error
    answers (``Error``) follow from the rest: 400 when it takes input, 404 when its path
    names a thing (or ``names``: its body does, e.g. a vendor to invite), 409 when
    ``conflicts``, 415 for a CSV body, 401, 403 and 429 always.
    """

    method: str
    path: str
    handler: ApiHandler
    summary: str
    roles: frozenset[str]
    reply: str  # the component schema of the success answer
    tag: str
    status: int = 200
    params: tuple[Param, ...] = ()
    body: Body | CsvBody | None = None
    conflicts: bool = False  # may answer 409
    names: bool = False  # the body names things that may not exist: may answer 404
    description: str = ""
    reply_description: str = "done"

    @property
    def reads(self) -> bool:
        return self.method == "GET"

    def check_schemas(self, components: Mapping[str, Schema]) -> None:
        where = f"{self.method} {self.path}"
        schemas = [p.schema for p in self.params]
        if isinstance(self.body, Body):
            schemas.append(self.body.schema())
        for schema in [*schemas, ref(self.reply)]:
            assert_supported(schema, where)
            resolve(schema, components)
        names = set(re.findall(r"\{(\w+)\}", self.path))
        declared = {p.name for p in self.params if p.where == "path"}
        if names != declared:
            raise ValueError(f"{where}: path parameters {names} but declared {declared}")

    def document(self) -> Schema:
        roles = ", ".join(sorted(self.roles))
        entry: Schema = {
            "operationId": self.handler.__name__.strip("_"),
            "summary": self.summary,
            "description": f"{self.description}\n\nRoles: {roles}.".strip(),
            "tags": [self.tag],
        }
        if self.params:
            entry["parameters"] = [p.document() for p in self.params]
        if isinstance(self.body, Body):
            entry["requestBody"] = {
                "required": self.body.required,
                "description": self.body.description,
                "content": {"application/json": {"schema": self.body.schema()}},
            }
        elif isinstance(self.body, CsvBody):
            entry["requestBody"] = {
                "required": True,
                "description": self.body.description,
                "content": {"text/csv": {"schema": {"type": "string"}}},
            }
        entry["responses"] = self._responses()
        return entry

    def _responses(self) -> Schema:
        def answer(description: str, name: str) -> Schema:
            return {
                "description": description,
                "content": {"application/json": {"schema": ref(name)}},
            }

        statuses = [401, 403, 429]
        if self.params or self.body is not None:
            statuses.append(400)
        if self.names or any(p.where == "path" for p in self.params):
            statuses.append(404)
        if self.conflicts:
            statuses.append(409)
        if isinstance(self.body, CsvBody):
            statuses.append(415)
        responses = {str(self.status): answer(self.reply_description, self.reply)}
        for status in sorted(statuses):
            responses[str(status)] = answer(ERROR_STATUSES[status], "Error")
        responses["default"] = answer("the server failed (500) or its database did (503)", "Error")
        return responses


async def refused(request: web.Request, exc: PolicyError | BadInput, **detail: Any) -> None:
    """Audit a refusal decided in the web tier (not by a policy function)."""
    await ctx(request).audit.record(
        REFUSED,
        actor=principal(request).name,
        method=request.method,
        path=request.path,
        code=exc.code,
        message=exc.message,
        **detail,
    )


def _bad_input_response(exc: BadInput) -> web.Response:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.where:
        body["field"] = exc.where
    return web.json_response(body, status=exc.status)


async def _read_body(request: web.Request, op: Operation) -> tuple[dict[str, Any], str]:
    components = request.app[OPENAPI]["components"]["schemas"]
    if isinstance(op.body, CsvBody):
        if request.content_type != "text/csv":
            raise BadInput(
                "media-type-unsupported", "", "send the file as Content-Type: text/csv", 415
            )
        try:
            return {}, (await request.read()).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadInput("body-invalid", "", "the CSV file is not UTF-8 text") from None
    if op.body is None:
        return {}, ""
    try:
        raw_text = (await request.read()).decode()
    except UnicodeDecodeError:
        raise BadInput("body-invalid", "", "the body is not UTF-8 text") from None
    if not raw_text.strip():
        if op.body.required:
            raise BadInput("body-invalid", "", "send a JSON object as the request body")
        return {}, ""
    try:
        raw = json.loads(raw_text)
    except (ValueError, RecursionError) as exc:
        raise BadInput("body-invalid", "", f"the body is not JSON ({exc})") from None
    return op.body.parse(raw, components), ""


def _read_params(request: web.Request, op: Operation) -> dict[str, Any]:
    components = request.app[OPENAPI]["components"]["schemas"]
    query_params = {p.name: p for p in op.params if p.where == "query"}
    unknown = sorted(set(request.query) - set(query_params))
    if unknown:
        known = ", ".join(query_params) or "none"
        raise BadInput("param-invalid", unknown[0], f"is not a parameter here (known: {known})")
    values: dict[str, Any] = {}
    for p in op.params:
        if p.where == "path":
            values[p.name] = p.parse(request.match_info[p.name], components)
            continue
        given = request.query.getall(p.name, [])
        if len(given) > 1:
            raise BadInput("param-invalid", p.name, "give it once")
        if given:
            values[p.name] = p.parse(given[0], components)
    return values


def _endpoint(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        try:
            params = _read_params(request, op)
            body, csv_text = await _read_body(request, op)
        except BadInput as exc:
            await refused(request, exc)
            return _bad_input_response(exc)
        call = Call(params, body, csv_text)
        if not op.reads:
            return await op.handler(request, call)
        try:
            return await op.handler(request, call)
        except PolicyError as exc:
            await refused(request, exc)
            raise

    endpoint.__name__ = op.handler.__name__
    return requires(*op.roles)(endpoint)


def add_operations(
    app: web.Application, operations: Sequence[Operation], schemas: Mapping[str, Schema]
) -> None:
    """Register each operation's route and document it (and the schemas it refers to)."""
    doc = app[OPENAPI]
    components: dict[str, Schema] = doc["components"]["schemas"]
    for name, schema in schemas.items():
        if name in components and components[name] != schema:
            raise ValueError(f"schema {name} is defined twice, differently")
        assert_supported(schema, name)
        components[name] = schema
    for op in operations:
        op.check_schemas(components)
        method = op.method.lower()
        if method in doc["paths"].get(op.path, {}):
            raise ValueError(f"{op.method} {op.path} is declared twice")
        app.router.add_route(op.method, op.path, _endpoint(op))
        doc["paths"].setdefault(op.path, {})[method] = op.document()


def json_reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


__all__ = [
    "ALL_ROLES",
    "API",
    "OPENAPI",
    "STAFF",
    "Operation",
    "add_operations",
    "base_document",
    "json_reply",
    "refused",
]
