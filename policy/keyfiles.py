"""Secret key files in the data dir: created on first use with mode 0600, never logged."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.errors import ConfigError
from policy.vault import KEY_BYTES, Vault, new_key


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """Return the file's bytes, creating it (0600) when it does not exist.

    The key is made first and written to a private temporary file, which is then linked
    into place: a failure leaves no file, and two processes racing agree on one key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        data = make()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
                return data
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            "key-permissions", f"{path} is readable by others (mode {mode:o}); chmod 600 it"
        )
    return path.read_bytes()


def load_vault(path: Path) -> Vault:
    key = read_or_create(path, new_key)
    if len(key) != KEY_BYTES:
        raise ConfigError("key-invalid", f"{path} does not hold a {KEY_BYTES}-byte vault key")
    return Vault(key)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    def make() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    key = serialization.load_pem_private_key(read_or_create(path, make), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("key-invalid", f"{path} is not an Ed25519 private key")
    return key
