"""The API's vendor SSH keys: a vendor user lists, adds and removes their own keys.

The keys are what the gateway checks when the vendor connects, so the rules are the
``/keys`` page's: ``policy.sshkeys.parse_public_key`` refuses malformed keys, DSA and
RSA under 3072 bits, saying why; a key registered anywhere (by this user or another) is
refused as taken, since a fingerprint names one person. Another user's key reads as
unknown (404), as on the page. Changes are audited as the page has them
(``web:key:added`` / ``web:key:removed``, with the fingerprint); refusals go the API's
way, ``web:api:refused``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from policy import admin
from policy.errors import NotFound, PolicyError
from policy.models import VendorKey
from policy.sshkeys import MAX_LINE, parse_public_key
from web.api_base import stamp
from web.api_input import ID, TIME, Body, Call, Field, Param, Schema, obj, ref, text
from web.auth import principal
from web.context import ctx
from web.openapi import API, Operation, json_reply, refused

VENDOR = frozenset({"vendor"})

KEY: Schema = obj(
    {
        "id": {"type": "integer"},
        "fingerprint": text("SHA256:... as OpenSSH prints it"),
        "algorithm": text("ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ..."),
        "public_key": text("TYPE BASE64, as the gateway checks it"),
        "comment": text(),
        "created_at": TIME,
    }
)
SCHEMAS: dict[str, Schema] = {
    "SshKey": KEY,
    "SshKeyList": obj({"keys": {"type": "array", "items": ref("SshKey")}}),
}


def key_json(key: VendorKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "fingerprint": key.fingerprint,
        "algorithm": key.public_key.split(" ", 1)[0],
        "public_key": key.public_key,
        "comment": key.comment,
        "created_at": stamp(key.created_at),
    }


async def list_keys(request: web.Request, call: Call) -> web.StreamResponse:
    who = principal(request)
    async with ctx(request).sessions() as db:
        rows = await db.scalars(
            select(VendorKey).where(VendorKey.vendor_user_id == who.id).order_by(VendorKey.id)
        )
        return json_reply({"keys": [key_json(k) for k in rows]})


async def add_key(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), principal(request)
    try:
        key = parse_public_key(call.body["public_key"])
        async with context.sessions() as db:
            row = await admin.add_vendor_key(db, who.id, key, context.clock())
            body = key_json(row)
    except PolicyError as exc:
        await refused(request, exc, action="key-add")
        raise
    await context.audit.record(
        "web:key:added",
        actor=who.name,
        fingerprint=key.fingerprint,
        algorithm=key.algorithm,
        bits=key.bits,
        comment=key.comment,
        via=who.via,
    )
    return json_reply(body, status=201)


async def remove_key(request: web.Request, call: Call) -> web.StreamResponse:
    context, who = ctx(request), principal(request)
    key_id = call.params["id"]
    async with context.sessions() as db:
        key = await db.get(VendorKey, key_id)
        if key is None or key.vendor_user_id != who.id:
            exc = NotFound("key-unknown", "you have no such key")
            await refused(request, exc, action="key-remove", key_id=key_id)
            raise exc
        body = key_json(key)
        await db.delete(key)
        await db.commit()
    await context.audit.record(
        "web:key:removed", actor=who.name, fingerprint=body["fingerprint"], via=who.via
    )
    return json_reply(body)


OPERATIONS = (
    Operation(
        "GET",
        f"{API}/keys",
        list_keys,
        "Your SSH public keys",
        VENDOR,
        "SshKeyList",
        "keys",
        description="The keys the gateway accepts for you, oldest first.",
        reply_description="the keys",
    ),
    Operation(
        "POST",
        f"{API}/keys",
        add_key,
        "Register an SSH public key",
        VENDOR,
        "SshKey",
        "keys",
        status=201,
        body=Body(
            (
                Field(
                    "public_key",
                    text("one OpenSSH public key line: TYPE BASE64 [COMMENT]", maxLength=MAX_LINE),
                    True,
                ),
            )
        ),
        conflicts=True,
        description=(
            "ed25519, ECDSA or RSA of at least 3072 bits; DSA and shorter RSA keys are"
            " refused (key-weak). A key registered already, by anyone, is key-taken."
        ),
        reply_description="the registered key",
    ),
    Operation(
        "DELETE",
        f"{API}/keys/{{id}}",
        remove_key,
        "Remove one of your SSH public keys",
        VENDOR,
        "SshKey",
        "keys",
        params=(Param("id", "path", ID, "the key's id"),),
        description="Another user's key reads as unknown (404).",
        reply_description="the removed key",
    ),
)
