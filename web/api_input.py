"""What API callers may send, and checking it: schemas, body fields, parameters.

The schemas are JSON Schema 2020-12, as OpenAPI 3.1 has them: "or null" is written
``{"type": [..., "null"]}`` and times are strings in ``date-time`` format (RFC 3339,
always with an offset). ``check`` validates a value against the part of JSON Schema these
schemas use and names the offending field (``devices[2]``, ``credential.kind``);
``assert_supported`` refuses a schema with any other keyword, so nothing a document
states goes unenforced. tests/web/test_openapi.py checks that ``check`` agrees with a
full JSON Schema validator.

Text may not hold NUL characters or unpaired surrogates (no database column can store
them), and times must carry an offset and fall in ``YEARS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Schema = dict[str, Any]
YEARS = (1970, 8999)  # times outside these years are refused (see parse_time)
ID: Schema = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}  # a database id
WHERE_MAX = 100


# --- schemas --------------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (3.1 style: a type list, or ``anyOf`` for a reference)."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema["type"]
    out = {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}
    if "enum" in schema:
        out["enum"] = [*schema["enum"], None]
    return out


def text(description: str = "", **limits: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **limits}


def strings(description: str = "", **limits: Any) -> Schema:
    return {
        "type": "array",
        "items": text(),
        **({"description": description} if description else {}),
        **limits,
    }


TIME: Schema = {"type": "string", "format": "date-time", "maxLength": 64}


def obj(properties: Mapping[str, Schema], optional: Iterable[str] = ()) -> Schema:
    """A closed object: every property required except ``optional``; no others allowed."""
    skip = set(optional)
    return {
        "type": "object",
        "properties": dict(properties),
        "required": [name for name in properties if name not in skip],
        "additionalProperties": False,
    }


# --- checking values against the schemas -------------------------------------------------


class BadInput(Exception):
    """A parameter or body field that does not fit its schema."""

    def __init__(self, code: str, where: str, message: str, status: int = 400) -> None:
        where = where[:WHERE_MAX]  # an unknown field's name is the caller's, of any length
        super().__init__(f"{where}: {message}" if where else message)
        self.code, self.where, self.status = code, where, status
        self.message = str(self)


SUPPORTED = frozenset(
    {
        "type",
        "description",
        "enum",
        "format",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "additionalProperties",
        "anyOf",
        "$ref",
        "examples",
    }
)
_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    # JSON Schema counts 2.0 as an integer; the parsed body has it as 2 (``_whole``)
    "integer": ("an integer", lambda v: _is_whole(v)),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "array": ("a list", lambda v: isinstance(v, list)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "null": ("null", lambda v: v is None),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    return _is_number(value)


def _whole(value: Any) -> Any:
    """``value`` with every whole float (2.0) as an int: what the schema called an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def resolve(schema: Schema, components: Mapping[str, Schema]) -> Schema:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        if name not in components:
            raise KeyError(f"schema reference {schema['$ref']} does not resolve")
        schema = components[name]
    return schema


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def check(
    schema: Schema, value: Any, where: str, components: Mapping[str, Schema], code: str
) -> None:
    """Raise ``BadInput(code, where, ...)`` unless ``value`` fits ``schema``."""
    schema = resolve(schema, components)
    if "anyOf" in schema:
        _check_any_of(schema["anyOf"], value, where, components, code)
    names = _type_names(schema)
    if names and not any(_TYPES[k][1](value) for k in names):
        raise BadInput(code, where, "must be " + " or ".join(_TYPES[k][0] for k in names))
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        raise BadInput(code, where, "must be one of " + ", ".join(map(str, schema["enum"])))
    if isinstance(value, str):
        _check_text(schema, value, where, code)
    elif _is_number(value):
        if "minimum" in schema and value < schema["minimum"]:
            raise BadInput(code, where, f"must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise BadInput(code, where, f"must be at most {schema['maximum']}")
    elif isinstance(value, list):
        _check_list(schema, value, where, components, code)
    elif isinstance(value, dict):
        _check_object(schema, value, where, components, code)


def _type_names(schema: Schema) -> list[str]:
    kinds = schema.get("type")
    if kinds is None:
        return []
    return list(kinds) if isinstance(kinds, list) else [kinds]


def _check_any_of(
    options: list[Schema], value: Any, where: str, components: Mapping[str, Schema], code: str
) -> None:
    """Pass if one option fits. Otherwise report the problem inside the one option of the
    value's type (``devices[2].port: must be at most 65535``), or list the types."""
    problems: list[tuple[Schema, BadInput]] = []
    for option in options:
        try:
            check(option, value, where, components, code)
            return
        except BadInput as exc:
            problems.append((resolve(option, components), exc))
    same_type = [
        exc for option, exc in problems if any(_TYPES[k][1](value) for k in _type_names(option))
    ]
    if len(same_type) == 1:
        raise same_type[0]
    names = dict.fromkeys(_TYPES[k][0] for option, _ in problems for k in _type_names(option))
    raise BadInput(code, where, "must be " + " or ".join(names))


def _check_text(schema: Schema, value: str, where: str, code: str) -> None:
    if len(value) < schema.get("minLength", 0):
        raise BadInput(code, where, "must not be empty")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise BadInput(code, where, f"must be at most {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise BadInput(code, where, f"must match {schema['pattern']}")


def _check_list(
    schema: Schema, value: list[Any], where: str, components: Mapping[str, Schema], code: str
) -> None:
    if len(value) < schema.get("minItems", 0):
        raise BadInput(code, where, f"needs at least {schema['minItems']} item(s)")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise BadInput(code, where, f"may have at most {schema['maxItems']} items")
    for index, item in enumerate(value):
        check(schema.get("items", {}), item, _at(where, index), components, code)


def _check_object(
    schema: Schema,
    value: dict[str, Any],
    where: str,
    components: Mapping[str, Schema],
    code: str,
) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            raise BadInput(code, _at(where, name), "is required")
    if schema.get("additionalProperties", True) is False:
        for name in value:
            if name not in properties:
                known = ", ".join(properties) or "none"
                raise BadInput(code, _at(where, name), f"is not a field here (fields: {known})")
    for name, item in value.items():
        if name in properties:
            check(properties[name], item, _at(where, name), components, code)


def assert_supported(schema: Any, where: str) -> None:
    """Refuse (at start-up) a schema using a keyword ``check`` does not enforce."""
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            assert_supported(item, f"{where}[{index}]")
        return
    if not isinstance(schema, dict):
        return
    unknown = sorted(set(schema) - SUPPORTED)
    if unknown:
        raise ValueError(f"{where}: schema keyword(s) {unknown} are not enforced by check()")
    for key in ("items", "anyOf", "additionalProperties"):
        if key in schema:
            assert_supported(schema[key], f"{where}.{key}")
    for name, sub in schema.get("properties", {}).items():
        assert_supported(sub, f"{where}.{name}")


def parse_time(where: str, value: str) -> datetime:
    """An ISO 8601 time with an offset, as UTC; a time without one is refused, not
    guessed. Years outside ``YEARS`` are refused too: nobody plans access for them, and
    window arithmetic near year 9999 would overflow."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(
            "time-invalid", where, f"{value!r} is not an ISO 8601 time (2030-05-01T08:00:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise BadInput(
            "time-invalid",
            where,
            f"{value!r} has no offset; add Z or +HH:MM so the time is not ambiguous",
        )
    if not YEARS[0] <= parsed.year <= YEARS[1]:
        raise BadInput(
            "time-invalid", where, f"{value!r}: the year must be {YEARS[0]} to {YEARS[1]}"
        )
    return parsed.astimezone(UTC)


def plain_text(value: Any, where: str, code: str) -> None:
    """Refuse NUL characters and unpaired surrogates anywhere in ``value``: no column
    can store them (PostgreSQL refuses both), so they are bad input, not a server error."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadInput(code, where, "must not contain NUL characters")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise BadInput(code, where, "is not valid Unicode text") from None
    elif isinstance(value, list):
        for index, item in enumerate(value):
            plain_text(item, _at(where, index), code)
    elif isinstance(value, dict):
        for key, item in value.items():
            plain_text(key, where, code)
            plain_text(item, _at(where, key), code)


# --- what a request may carry --------------------------------------------------------------


Convert = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Field:
    """One field of a JSON request body."""

    name: str
    schema: Schema
    required: bool = False
    convert: Convert | None = None  # (field name, checked value) -> the handler's value


def time_field(name: str, description: str, *, required: bool = False) -> Field:
    return Field(name, {**TIME, "description": description}, required, _convert_time)


def _convert_time(where: str, value: Any) -> Any:
    return parse_time(where, value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Body:
    """A JSON object body. ``required=False``: the body may be left out entirely."""

    fields: tuple[Field, ...]
    description: str = ""
    required: bool = True

    def schema(self) -> Schema:
        schema = obj({f.name: f.schema for f in self.fields})
        schema["required"] = [f.name for f in self.fields if f.required]
        return schema

    def parse(self, raw: Any, components: Mapping[str, Schema]) -> dict[str, Any]:
        """The fields present in ``raw`` (absent ones are absent: PATCH tells them apart
        from null), checked and converted."""
        if not isinstance(raw, dict):
            raise BadInput("body-invalid", "", "the body must be a JSON object")
        plain_text(raw, "", "body-invalid")
        check(self.schema(), raw, "", components, "body-invalid")
        raw = _whole(raw)
        out = {}
        for f in self.fields:
            if f.name in raw:
                value = raw[f.name]
                out[f.name] = f.convert(f.name, value) if f.convert else value
        return out


@dataclass(frozen=True)
class CsvBody:
    """A ``text/csv`` body, handed to the handler as text."""

    description: str


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    schema: Schema  # a string, integer or boolean schema
    description: str = ""

    def parse(self, raw: str, components: Mapping[str, Schema]) -> Any:
        plain_text(raw, self.name, "param-invalid")
        kind = self.schema.get("type")
        value: Any = raw
        if kind == "integer":
            if not re.fullmatch(r"-?[0-9]{1,18}", raw):
                raise BadInput("param-invalid", self.name, f"{raw!r} is not an integer")
            value = int(raw)
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise BadInput("param-invalid", self.name, "must be true or false")
            value = raw == "true"
        check(self.schema, value, self.name, components, "param-invalid")
        if self.schema.get("format") == "date-time":
            return parse_time(self.name, value)
        return value

    def document(self) -> Schema:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "description": self.description,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class Call:
    """What the handler gets: the checked parameters and body fields (or CSV text)."""

    params: dict[str, Any]
    body: dict[str, Any]
    text: str = ""
