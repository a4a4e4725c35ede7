"""Credential vault (policy/vault.py): AES-256-GCM sealing bound to a purpose."""

from __future__ import annotations

import pytest

from policy.errors import VaultError
from policy.vault import DEVICE_CREDENTIAL, KEY_BYTES, TOTP_SECRET, Vault, new_key


@pytest.fixture
def vault() -> Vault:
    return Vault(new_key())


@pytest.mark.parametrize("plaintext", [b"", b"hunter2", bytes(range(256)), b"x" * 100_000])
def test_round_trip(vault: Vault, plaintext: bytes) -> None:
    blob = vault.seal(plaintext, DEVICE_CREDENTIAL)
    assert plaintext not in blob or plaintext == b""
    assert vault.open(blob, DEVICE_CREDENTIAL) == plaintext


def test_text_round_trip(vault: Vault) -> None:
    blob = vault.seal_text("pässwörd €", TOTP_SECRET)
    assert vault.open_text(blob, TOTP_SECRET) == "pässwörd €"


def test_same_plaintext_seals_differently(vault: Vault) -> None:
    assert vault.seal(b"secret", DEVICE_CREDENTIAL) != vault.seal(b"secret", DEVICE_CREDENTIAL)


def test_wrong_purpose_fails(vault: Vault) -> None:
    blob = vault.seal_text("JBSWY3DPEHPK3PXP", TOTP_SECRET)
    with pytest.raises(VaultError) as exc:
        vault.open(blob, DEVICE_CREDENTIAL)
    assert exc.value.code == "vault-blob-invalid"


@pytest.mark.parametrize("index", [0, 1, 12, 13, -1])
def test_tampered_byte_fails(vault: Vault, index: int) -> None:
    blob = bytearray(vault.seal(b"device password", DEVICE_CREDENTIAL))
    blob[index] ^= 0x01
    with pytest.raises(VaultError) as exc:
        vault.open(bytes(blob), DEVICE_CREDENTIAL)
    assert exc.value.code == "vault-blob-invalid"


@pytest.mark.parametrize("cut", [0, 1, 13, 28])
def test_truncated_blob_fails(vault: Vault, cut: int) -> None:
    blob = vault.seal(b"device password", DEVICE_CREDENTIAL)
    with pytest.raises(VaultError):
        vault.open(blob[:cut], DEVICE_CREDENTIAL)


def test_wrong_key_fails(vault: Vault) -> None:
    blob = vault.seal(b"device password", DEVICE_CREDENTIAL)
    with pytest.raises(VaultError) as exc:
        Vault(new_key()).open(blob, DEVICE_CREDENTIAL)
    assert exc.value.code == "vault-blob-invalid"


def test_same_key_other_instance_opens() -> None:
    key = new_key()
    blob = Vault(key).seal(b"device password", DEVICE_CREDENTIAL)
    assert Vault(key).open(blob, DEVICE_CREDENTIAL) == b"device password"


@pytest.mark.parametrize("length", [0, 16, 24, KEY_BYTES - 1, KEY_BYTES + 1, 64])
def test_wrong_key_length_refused(length: int) -> None:
    with pytest.raises(VaultError) as exc:
        Vault(b"k" * length)
    assert exc.value.code == "vault-key-invalid"


def test_new_key_length() -> None:
    assert len(new_key()) == KEY_BYTES
    assert new_key() != new_key()
