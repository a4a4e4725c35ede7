"""Credential vault: AES-256-GCM sealing of device credentials and TOTP secrets.

A sealed blob is ``version (1 byte) | nonce (12) | ciphertext+tag``. The purpose string is
bound as associated data, so a TOTP secret cannot be replayed as a device password.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from policy.errors import VaultError

VERSION = 1
KEY_BYTES = 32

DEVICE_CREDENTIAL = "device-credential"
TOTP_SECRET = "totp-secret"  # noqa: S105 - a purpose label


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


class Vault:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultError("vault-key-invalid", f"vault key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        nonce = os.urandom(12)
        return bytes([VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, _aad(purpose))

    def open(self, blob: bytes, purpose: str) -> bytes:
        if len(blob) < 1 + 12 + 16 or blob[0] != VERSION:
            raise VaultError("vault-blob-invalid", "sealed value has an unknown format")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], _aad(purpose))
        except InvalidTag:
            raise VaultError(
                "vault-blob-invalid", "sealed value does not open with this vault key"
            ) from None

    def seal_text(self, text: str, purpose: str) -> bytes:
        return self.seal(text.encode(), purpose)

    def open_text(self, blob: bytes, purpose: str) -> str:
        return self.open(blob, purpose).decode()


def _aad(purpose: str) -> bytes:
    return f"sallyport/{purpose}/v{VERSION}".encode()
