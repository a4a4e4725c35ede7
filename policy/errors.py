"""Errors raised by the policy package, each with a machine-readable code."""

from __future__ import annotations

from collections.abc import Sequence


class PolicyError(Exception):
    """Base class: ``code`` is stable and machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class VaultError(PolicyError):
    pass


class ConfigError(PolicyError):
    pass


class NotFound(PolicyError):
    pass


class InvalidInput(PolicyError):
    """Bad input; ``errors`` optionally lists (line, message) pairs, e.g. for a CSV file."""

    def __init__(self, code: str, message: str, errors: Sequence[tuple[int, str]] = ()) -> None:
        super().__init__(code, message)
        self.errors = list(errors)


class Forbidden(PolicyError):
    """The actor may not do this (wrong role, not their request, self-approval, ...)."""


class Conflict(PolicyError):
    """The thing is in the wrong state for this (already decided, already used, taken)."""


class RateLimited(PolicyError):
    """Too many failed attempts lately; the message says when to try again."""
