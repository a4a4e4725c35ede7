"""Password hashing (policy/passwords.py): scrypt in a self-describing string."""

from __future__ import annotations

import pytest

from policy.passwords import hash_password, verify_password


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password("correct horse battery staple")


def test_hash_format(stored: str) -> None:
    assert stored.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in stored
    assert len(stored.split("$")) == 6


def test_same_password_hashes_differently() -> None:
    assert hash_password("pw") != hash_password("pw")


def test_verify_ok(stored: str) -> None:
    assert verify_password("correct horse battery staple", stored) is True


@pytest.mark.parametrize(
    "attempt", ["", "correct horse battery stapl", "Correct horse battery staple", "x" * 1000]
)
def test_verify_wrong(stored: str, attempt: str) -> None:
    assert verify_password(attempt, stored) is False


def test_unicode_password() -> None:
    assert verify_password("pässwörd €", hash_password("pässwörd €")) is True
    assert verify_password("passwörd €", hash_password("pässwörd €")) is False


@pytest.mark.parametrize("missing", [None, ""])
def test_verify_no_stored_hash(missing: str | None) -> None:
    assert verify_password("anything", missing) is False
    assert verify_password("", missing) is False


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        "$$$$$",
        "scrypt$",
        "bcrypt$16384$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$abc$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$16384$8$1$c2FsdA==$ZGlnZXN0$extra",
        "scrypt$16384$8$1$!!!$ZGlnZXN0",
        "scrypt$16384$8$1$c2FsdA==$@@@",
        "scrypt$16384$8$1$c2FsdA==$",
        "scrypt$3$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$16384$0$1$c2FsdA==$ZGlnZXN0",
        "scrypt$1048576$8$1$c2FsdA==$ZGlnZXN0",  # needs more memory than allowed
        "scrypt$16384$8$1$c2Fsd€==$ZGlnZXN0",
    ],
)
def test_verify_garbage_stored_string(garbage: str) -> None:
    assert verify_password("correct horse battery staple", garbage) is False


def test_verify_with_tampered_digest(stored: str) -> None:
    prefix, _, digest = stored.rpartition("$")
    other = hash_password("other").rpartition("$")[2]
    assert other != digest
    assert verify_password("correct horse battery staple", f"{prefix}${other}") is False


@pytest.mark.parametrize(
    "garbage",
    [
        "scrypt$-1$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$1180591620717411303424$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$16384$99999999999999999999$1$c2FsdA==$ZGlnZXN0",
    ],
)
def test_verify_out_of_range_parameters_is_false(garbage: str) -> None:
    assert verify_password("correct horse battery staple", garbage) is False
