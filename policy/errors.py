"""Errors raised by the policy package, each with a machine-readable code."""

from __future__ import annotations


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
    pass
