"""Secret key files (policy/keyfiles.py): created 0600 on first use, refused if exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.errors import ConfigError
from policy.keyfiles import load_signing_key, load_vault, read_or_create
from policy.vault import DEVICE_CREDENTIAL, KEY_BYTES


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    data = read_or_create(path, lambda: b"first secret")
    assert data == b"first secret"
    assert path.read_bytes() == b"first secret"
    assert mode(path) == 0o600


def test_created_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "keys" / "secret.key"
        read_or_create(path, lambda: b"s")
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_parent_directory_created_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "keys" / "secret.key"
    read_or_create(path, lambda: b"s")
    assert mode(path.parent) & 0o077 == 0


def test_second_call_returns_same_bytes_without_making(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    first = read_or_create(path, lambda: os.urandom(32))

    def must_not_make() -> bytes:
        raise AssertionError("the key was made again")

    assert read_or_create(path, must_not_make) == first


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610])
def test_group_or_world_accessible_file_refused(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "keys" / "secret.key"
    read_or_create(path, lambda: b"s")
    path.chmod(bad_mode)
    with pytest.raises(ConfigError) as exc:
        read_or_create(path, lambda: b"other")
    assert exc.value.code == "key-permissions"
    assert str(path) in exc.value.message


def test_owner_only_modes_accepted(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    read_or_create(path, lambda: b"s")
    path.chmod(0o400)
    assert read_or_create(path, lambda: b"other") == b"s"


def test_load_vault_creates_and_reloads_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "vault.key"
    blob = load_vault(path).seal(b"pw", DEVICE_CREDENTIAL)
    assert len(path.read_bytes()) == KEY_BYTES
    assert load_vault(path).open(blob, DEVICE_CREDENTIAL) == b"pw"


def test_load_vault_refuses_wrong_size_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "vault.key"
    read_or_create(path, lambda: b"short")
    with pytest.raises(ConfigError) as exc:
        load_vault(path)
    assert exc.value.code == "key-invalid"


def test_load_signing_key_creates_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-signing.pem"
    key = load_signing_key(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert mode(path) == 0o600
    again = load_signing_key(path)
    assert again.public_key() == key.public_key()


def test_failed_creation_leaves_no_empty_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "vault.key"

    def broken() -> bytes:
        raise RuntimeError("entropy source unavailable")

    with pytest.raises(RuntimeError):
        read_or_create(path, broken)
    assert read_or_create(path, lambda: b"k" * KEY_BYTES) == b"k" * KEY_BYTES
