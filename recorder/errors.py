"""Errors raised while recording; any of them ends the session it belongs to (fail closed)."""

from __future__ import annotations


class RecorderError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StorageError(RecorderError):
    pass


class FormatError(RecorderError):
    pass
