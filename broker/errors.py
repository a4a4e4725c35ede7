"""Gateway errors, each with a stable code the vendor and the audit log see."""

from __future__ import annotations


class BrokerError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UpstreamError(BrokerError):
    """The device could not be reached, or is not the device we pinned."""
