"""Vendor SSH public keys (policy/sshkeys.py): parsing, strength rules, fingerprints."""

from __future__ import annotations

import base64
import warnings

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.utils import CryptographyDeprecationWarning

from policy.errors import InvalidInput
from policy.sshkeys import MIN_RSA_BITS, PublicKey, parse_public_key


def openssh_line(key: asyncssh.SSHKey, comment: str | None = None) -> str:
    line = key.export_public_key("openssh").decode().strip()
    if comment is not None:
        line = " ".join([*line.split()[:2], comment])
    return line


def rsa_line(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.fixture(scope="module")
def ed25519() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def test_ed25519_accepted_with_asyncssh_fingerprint(ed25519: asyncssh.SSHKey) -> None:
    key = parse_public_key(openssh_line(ed25519, "vendor1@laptop"))
    assert isinstance(key, PublicKey)
    assert key.algorithm == "ssh-ed25519"
    assert key.fingerprint == ed25519.get_fingerprint("sha256")
    assert key.fingerprint.startswith("SHA256:")
    assert not key.fingerprint.endswith("=")
    assert key.comment == "vendor1@laptop"
    assert key.bits is None


def test_line_round_trips(ed25519: asyncssh.SSHKey) -> None:
    text = openssh_line(ed25519, "a comment with spaces")
    key = parse_public_key(text)
    assert key.comment == "a comment with spaces"
    assert key.line == " ".join(text.split()[:2])
    assert parse_public_key(key.line) == PublicKey(key.algorithm, key.blob, "", key.bits)


def test_surrounding_whitespace_tolerated(ed25519: asyncssh.SSHKey) -> None:
    key = parse_public_key("  " + openssh_line(ed25519) + " \n")
    assert key.fingerprint == ed25519.get_fingerprint("sha256")
    assert key.comment == ""


def test_rsa_2048_refused_as_weak() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_public_key(rsa_line(2048))
    assert exc.value.code == "key-weak"
    assert "2048" in exc.value.message


def test_rsa_3072_accepted() -> None:
    private = asyncssh.generate_private_key("ssh-rsa", key_size=MIN_RSA_BITS)
    key = parse_public_key(openssh_line(private))
    assert key.algorithm == "ssh-rsa"
    assert key.bits == 3072
    assert key.fingerprint == private.get_fingerprint("sha256")


def test_ecdsa_accepted_with_curve_size() -> None:
    private = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    key = parse_public_key(openssh_line(private))
    assert key.bits == 256
    assert key.fingerprint == private.get_fingerprint("sha256")


def dsa_line() -> str:
    # OpenSSH's ssh-dss only exists with 1024-bit keys; cryptography refuses to
    # serialize larger ones ("SSH supports only 1024 bit DSA keys").
    with warnings.catch_warnings():  # cryptography 51 warns at the attribute itself
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        public = dsa.generate_private_key(1024).public_key()  # noqa: S505 - refused key
        return public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()


def test_dsa_refused_as_weak() -> None:
    line = dsa_line()
    assert line.startswith("ssh-dss ")
    # cryptography warns when loading DSA SSH keys; production does not turn warnings
    # into errors, so neither does this test (see also the test below).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        with pytest.raises(InvalidInput) as exc:
            parse_public_key(line)
    assert exc.value.code == "key-weak"


def test_dsa_refused_even_when_warnings_are_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidInput):
            parse_public_key(dsa_line())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "ssh-ed25519",
        "ssh-ed25519 !!!not-base64!!!",
        "ssh-ed25519 AAAA",
        "ssh-ed25519 " + base64.b64encode(b"random bytes, not a key").decode(),
        "ssh-foo " + base64.b64encode(b"\x00\x00\x00\x07ssh-foo").decode(),
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ],
)
def test_garbage_refused_as_invalid(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_public_key(text)
    assert exc.value.code == "key-invalid"


def test_type_and_blob_mismatch_refused(ed25519: asyncssh.SSHKey) -> None:
    blob = openssh_line(ed25519).split()[1]
    with pytest.raises(InvalidInput) as exc:
        parse_public_key(f"ssh-rsa {blob}")
    assert exc.value.code == "key-invalid"
