"""The OpenAPI document (web/openapi.py) against what the app serves.

The document must list exactly the served /api/v1 routes, be a valid OpenAPI 3.1
document, and describe request bodies the way the server checks them. Response bodies
are checked against it in tests/web/test_api.py, on every call the API tests make.

Needs the dev dependencies ``openapi-spec-validator`` and ``jsonschema``: without them
this module fails to import, loudly, rather than skipping.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.web.conftest import WebApp
from web.api_input import (
    BadInput,
    Body,
    Field,
    Param,
    check,
    nullable,
    parse_time,
    ref,
    time_field,
)
from web.app import create_app
from web.openapi import (
    OPENAPI,
    base_document,
)

try:
    import jsonschema
    from openapi_spec_validator import validate as validate_openapi
except ImportError as exc:  # pragma: no cover - a missing dev dependency must fail the run
    raise ImportError(
        "tests/web/test_openapi.py needs the dev dependencies openapi-spec-validator>=0.7"
        " and jsonschema>=4.18 (pip install -e '.[dev]')"
    ) from exc


def served_api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route under /api/v1 (HEAD comes with GET by itself)."""
    routes = set()
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical
        if path.startswith("/api/v1") and route.method != "HEAD":
            routes.add((route.method, path))
    return routes


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def full_app(web_app: WebApp) -> web.Application:
    app = web_app.server.app
    assert app is not None
    return app


def test_the_document_lists_exactly_the_served_api_routes(web_app: WebApp) -> None:
    app = full_app(web_app)
    doc = app[OPENAPI]
    assert served_api_routes(app) == documented_routes(doc)
    assert served_api_routes(app) >= BRIEF


BRIEF = {
    ("GET", "/api/v1/requests"),
    ("POST", "/api/v1/requests"),
    ("GET", "/api/v1/requests/{id}"),
    ("PATCH", "/api/v1/requests/{id}"),
    ("POST", "/api/v1/requests/{id}/cancel"),
    ("POST", "/api/v1/requests/{id}/approve"),
    ("POST", "/api/v1/requests/{id}/deny"),
    ("GET", "/api/v1/grants"),
    ("POST", "/api/v1/grants/{id}/revoke"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{name}"),
    ("POST", "/api/v1/devices"),
    ("PATCH", "/api/v1/devices/{name}"),
    ("POST", "/api/v1/devices/import"),
    ("GET", "/api/v1/sessions"),
    ("POST", "/api/v1/sessions/{id}/kill"),
}


async def test_a_probes_only_listener_documents_only_its_probes(
    db: async_sessionmaker[AsyncSession],
) -> None:
    probes = create_app(db)
    assert served_api_routes(probes) == documented_routes(probes[OPENAPI])
    assert served_api_routes(probes) == {
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/openapi.json"),
    }


async def test_the_served_document_is_valid_openapi(web_app: WebApp) -> None:
    http = web_app.browser()
    resp = await http.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == json.loads(json.dumps(full_app(web_app)[OPENAPI]))
    validate_openapi(doc)  # raises with the first problem found
    assert doc["openapi"] == "3.1.0"


def test_a_broken_document_is_caught_by_the_validator() -> None:
    """The validator is not a rubber stamp: the same check fails a broken document."""
    broken = base_document()
    broken["paths"]["/api/v1/health"]["get"]["responses"] = "none"
    with pytest.raises(Exception, match="none"):
        validate_openapi(broken)


def test_every_operation_documents_auth_errors_and_its_schemas(web_app: WebApp) -> None:
    doc = full_app(web_app)[OPENAPI]
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token (spt_...) made by an administrator",
    }
    assert doc["security"] == [{"token": []}]
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method} {path}"
            assert op["operationId"] and op["summary"], where
            if path in ("/api/v1/health", "/api/v1/openapi.json"):
                assert op["security"] == [], where
                continue
            responses = op["responses"]
            for status in ("401", "403", "default"):
                assert responses[status]["content"]["application/json"]["schema"] == error, where
            if "{" in path:
                assert "404" in responses, where
            if "requestBody" in op or op.get("parameters"):
                assert "400" in responses, where
            assert "Roles: " in op["description"], where
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert "admin" not in ops[("post", "/api/v1/requests/{id}/approve")]["description"]
    csv = ops[("post", "/api/v1/devices/import")]["requestBody"]["content"]
    assert list(csv) == ["text/csv"]
    filed = ops[("post", "/api/v1/requests")]
    body = filed["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"ticket", "devices", "services", "start", "end", "reason"}
    assert body["additionalProperties"] is False
    assert "201" in filed["responses"]


# --- the server's body check agrees with JSON Schema ---------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(-5, 70000, allow_nan=False).map(lambda f: round(f, 1))
    | st.integers(-1, 8).map(float)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/requests"): {
        "ticket": "CHG0001234",
        "devices": ["pump-12"],
        "services": ["ssh"],
        "start": "2030-05-01T08:00:00Z",
        "end": "2030-05-01T10:00:00+02:00",
        "recurrence": {"days": [0, 4], "start": "08:00", "end": "10:00", "tz": "UTC"},
        "reason": "firmware update",
        "vendor_login": "vendor1",
    },
    ("post", "/api/v1/requests/{id}/approve"): {
        "role": "biomed",
        "comment": "ok",
        "start": "2030-05-01T08:30:00Z",
        "services": ["ssh"],
        "override_reason": None,
    },
    ("post", "/api/v1/requests/{id}/deny"): {"reason": "not this week", "role": None},
    ("patch", "/api/v1/devices/{name}"): {"criticality": "low", "host_key": None},
    ("post", "/api/v1/devices"): {
        "name": "pump-13",
        "segment": "icu",
        "address": "10.1.2.3",
        "criticality": "high",
        "services": ["ssh:22", {"name": "https", "port": 443}],
        "maintenance": [
            "mon-fri 06:00-18:00 UTC",
            {"days": [5], "start": "00:00", "end": "00:00", "tz": "UTC"},
        ],
        "model": "P-1",
        "credential": {"username": "svc", "kind": "password", "secret": "s3cret"},
    },
}


def _body_schema(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op = doc["paths"][path][method]
    schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
    return schema


def _jsonschema_accepts(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    root = {**schema, "components": doc["components"]}  # "#/components/..." resolves here
    return bool(jsonschema.Draft202012Validator(root).is_valid(value))


def _server_accepts(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    try:
        check(schema, value, "", doc["components"]["schemas"], "body-invalid")
    except BadInput:
        return False
    return True


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The full document, built without a database (the routes need none to register)."""
    from web import api

    app = web.Application()
    app[OPENAPI] = base_document()
    api.setup(app)
    return app[OPENAPI]


def test_the_examples_are_accepted_by_both(document: dict[str, Any]) -> None:
    for (method, path), example in EXAMPLES.items():
        schema = _body_schema(document, method, path)
        assert _jsonschema_accepts(document, schema, example), path
        assert _server_accepts(document, schema, example), path


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_server_check_agrees_with_json_schema(
    document: dict[str, Any], data: st.DataObject
) -> None:
    """Mutate a valid body (a field dropped, replaced by any JSON, or an extra one added):
    the server accepts it exactly when the documented schema does."""
    method, path = data.draw(st.sampled_from(sorted(EXAMPLES)))
    body = copy.deepcopy(EXAMPLES[(method, path)])
    schema = _body_schema(document, method, path)
    key = data.draw(st.sampled_from([*schema["properties"], "extra"]))
    if data.draw(st.booleans()) and key in body:
        del body[key]
    else:
        body[key] = data.draw(JSON)
    assert _server_accepts(document, schema, body) == _jsonschema_accepts(document, schema, body)


def test_body_errors_name_the_field(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    body = Body(
        (
            Field("devices", {"type": "array", "items": {"type": "string"}}, True),
            Field("recurrence", nullable(ref("Recurrence"))),
            time_field("start", "when"),
        )
    )
    cases = [
        ({}, "devices", "devices: is required"),
        ({"devices": ["a", 3]}, "devices[1]", "devices[1]: must be a string"),
        ({"devices": [], "x": 1}, "x", "x: is not a field here (fields: devices, recurrence,"),
        (
            {"devices": [], "recurrence": {"days": [9], "start": "1:00", "end": "2:00", "tz": "U"}},
            "recurrence.days[0]",
            "recurrence.days[0]: must be at most 6",
        ),
    ]
    for raw, where, message in cases:
        with pytest.raises(BadInput) as caught:
            body.parse(raw, components)
        assert caught.value.code == "body-invalid"
        assert caught.value.where == where
        assert message in caught.value.message
    with pytest.raises(BadInput, match="the body must be a JSON object"):
        body.parse([1], components)
    with pytest.raises(BadInput) as caught:
        body.parse({"devices": [], "start": "2030-05-01T08:00:00"}, components)
    assert (caught.value.code, caught.value.where) == ("time-invalid", "start")
    parsed = body.parse({"devices": ["a"], "start": "2030-05-01T08:00:00+02:00"}, components)
    assert parsed == {"devices": ["a"], "start": datetime(2030, 5, 1, 6, tzinfo=UTC)}
    weekly = {"days": [1.0, 2], "start": "08:00", "end": "09:00", "tz": "UTC"}
    parsed = body.parse({"devices": [], "recurrence": weekly}, components)
    assert parsed["recurrence"]["days"] == [1, 2]  # JSON's 1.0 is the integer 1
    assert all(type(d) is int for d in parsed["recurrence"]["days"])
    with pytest.raises(BadInput, match=r"days\[0\]: must be an integer"):
        body.parse({"devices": [], "recurrence": {**weekly, "days": [1.5]}}, components)


def test_times_need_an_offset_and_params_their_type() -> None:
    assert parse_time("t", "2030-05-01T08:00:00Z") == datetime(2030, 5, 1, 8, tzinfo=UTC)
    for bad in ("2030-05-01T08:00:00", "2030-05-01", "tomorrow"):
        with pytest.raises(BadInput) as caught:
            parse_time("t", bad)
        assert caught.value.code == "time-invalid"
    limit = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 10})
    assert limit.parse("7", {}) == 7
    for bad in ("0", "11", "x", "1.5"):
        with pytest.raises(BadInput) as caught:
            limit.parse(bad, {})
        assert (caught.value.code, caught.value.where) == ("param-invalid", "limit")
    live = Param("live", "query", {"type": "boolean"})
    assert live.parse("false", {}) is False
    with pytest.raises(BadInput):
        live.parse("yes", {})


def test_a_schema_keyword_the_server_would_not_enforce_is_refused() -> None:
    from web.openapi import Operation, add_operations

    async def handler(request: web.Request, call: Any) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app[OPENAPI] = base_document()
    op = Operation(
        "POST",
        "/api/v1/x",
        handler,
        "x",
        frozenset({"admin"}),
        "Health",
        "x",
        body=Body((Field("n", {"type": "integer", "multipleOf": 2}),)),
    )
    with pytest.raises(ValueError, match="multipleOf"):
        add_operations(app, [op], {})
    assert served_api_routes(app) == set()
