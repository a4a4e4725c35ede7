"""The audit hash chain and its signed checkpoints: encodings and hashes (pure, no I/O).

Format ``sallyport-audit/1``, fixed: changing any byte of these encodings breaks every
existing chain, so a new encoding would get a new format name and verifiers would keep
this one.

Canonical JSON (``canonical``): ``json.dumps`` with sorted keys, separators ``,`` and
``:`` (no whitespace), ``ensure_ascii=False``, NaN and infinities refused, encoded as
UTF-8. Times are ISO 8601 in UTC with microseconds and a ``Z``:
``2026-11-23T09:38:16.525603Z``.

For audit event ``n`` (``id`` is the chain position, 1, 2, 3, ...)::

    content      = {"id", "at", "tag", "actor", "device", "session_id", "request_id",
                    "detail"}                         (all eight keys, null where empty)
    content_hash = SHA-256(canonical(content))        (hex)
    hash         = SHA-256("sallyport-audit/1\\n" + prev_hash + "\\n" + content_hash)
    prev_hash    = hash of event n-1, or 64 zeros (GENESIS) for event 1

Hashing the content separately lets an evidence bundle carry an unrelated event as just
its content hash (redacted) while the chain through it still verifies.

A checkpoint signs, with the Ed25519 audit key, ``canonical(checkpoint_message(...))``::

    {"format": "sallyport-audit-checkpoint/1", "checkpoint": id, "event_id": n,
     "hash": hash of event n, "at": time, "key_id": key_id}

``key_id`` is the hex SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

FORMAT = "sallyport-audit/1"
CHECKPOINT_FORMAT = "sallyport-audit-checkpoint/1"
GENESIS = "0" * 64
CONTENT_KEYS = ("id", "at", "tag", "actor", "device", "session_id", "request_id", "detail")


def canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def normalize(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` as it reads back from the JSON column (tuples become lists, ...)."""
    value: dict[str, Any] = json.loads(canonical(detail))
    return value


def iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("naive datetime in the audit chain")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def event_content(
    *,
    id: int,
    at: datetime,
    tag: str,
    actor: str,
    device: str | None,
    session_id: str | None,
    request_id: int | None,
    detail: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": id,
        "at": iso(at),
        "tag": tag,
        "actor": actor,
        "device": device,
        "session_id": session_id,
        "request_id": request_id,
        "detail": detail,
    }


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(content)).hexdigest()


def link_hash(prev_hash: str, content_digest: str) -> str:
    return hashlib.sha256(f"{FORMAT}\n{prev_hash}\n{content_digest}".encode()).hexdigest()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(key)).hexdigest()


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (or the private key's PEM: its public half)."""
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if isinstance(private, Ed25519PrivateKey):
                return private.public_key()
            raise ValueError("not an Ed25519 key")
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def checkpoint_message(
    checkpoint: int, event_id: int, chain_hash: str, at: datetime, key: str
) -> bytes:
    return canonical(
        {
            "format": CHECKPOINT_FORMAT,
            "checkpoint": checkpoint,
            "event_id": event_id,
            "hash": chain_hash,
            "at": iso(at),
            "key_id": key,
        }
    )


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode("ascii")


def signature_ok(key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
