"""Vendor SSH public keys: parsing, strength rules and fingerprints (OpenSSH's SHA256 form)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from policy.errors import InvalidInput

MIN_RSA_BITS = 3072
MAX_COMMENT = 200  # vendor_key.comment
MAX_LINE = 16384  # an RSA-16384 key line is about 2,800 characters


@dataclass(frozen=True)
class PublicKey:
    algorithm: str
    blob: bytes
    comment: str
    bits: int | None

    @property
    def fingerprint(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"

    @property
    def line(self) -> str:
        return f"{self.algorithm} {base64.b64encode(self.blob).decode()}"


def parse_public_key(text: str) -> PublicKey:
    """Parse one OpenSSH public key line; refuse malformed and weak keys with a reason.

    Exactly one line: a pasted second key would otherwise end up in the first one's
    comment, and a comment with control characters would reach pages and logs.
    """
    text = text.strip()
    if len(text) > MAX_LINE:
        raise InvalidInput("key-invalid", f"the key line is longer than {MAX_LINE} characters")
    if "\n" in text or "\r" in text:
        raise InvalidInput("key-invalid", "paste one key, on one line")
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise InvalidInput("key-invalid", "not an OpenSSH public key line (TYPE BASE64 [COMMENT])")
    algorithm, b64 = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in comment):
        raise InvalidInput("key-invalid", "the key comment contains control characters")
    if len(comment) > MAX_COMMENT:
        raise InvalidInput(
            "key-invalid", f"the key comment is longer than {MAX_COMMENT} characters"
        )
    if algorithm == "ssh-dss":
        raise InvalidInput("key-weak", "DSA keys are not accepted; use ed25519 or RSA >= 3072")
    try:
        blob = base64.b64decode(b64, validate=True)
        key = load_ssh_public_key(f"{algorithm} {b64}".encode())
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("key-invalid", f"the key cannot be read: {exc}") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for unknown types
        raise InvalidInput("key-invalid", f"unsupported key type {algorithm}") from None
    bits: int | None = None
    if isinstance(key, dsa.DSAPublicKey):  # a DSA key under another name
        raise InvalidInput("key-weak", "DSA keys are not accepted; use ed25519 or RSA >= 3072")
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise InvalidInput(
                "key-weak", f"RSA key of {bits} bits is too weak; at least {MIN_RSA_BITS} needed"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
    return PublicKey(algorithm, blob, comment, bits)
