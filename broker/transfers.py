"""File transfers on relayed channels: the sftp subsystem and legacy ``scp -t``/``scp -f``.

Picks the protocol tap for a channel and applies the grant's transfer rule
(``read-write``, ``download-only``, ``upload-only``, ``none``); the taps themselves
(``broker.sftp_tap``, ``broker.scp_tap``) parse the streams and log every file.
"""

from __future__ import annotations

from broker.errors import BrokerError
from broker.scp_tap import ScpTap, parse_scp_command
from broker.sftp_tap import FileTransfer, SftpTap, TransferRefusal

__all__ = ["FileTransfer", "TransferRefusal", "TransferRefused", "TransferTap", "transfer_tap"]

TRANSFER_RULES = {
    "read-write": (True, True),
    "download-only": (False, True),
    "upload-only": (True, False),
    "none": (False, False),
}


class TransferRefused(BrokerError):
    def __init__(self, reason: str) -> None:
        super().__init__("transfer-refused", f"sallyport: {reason}")


class TransferTap:
    """One interface over both taps for the relay."""

    def __init__(self, tap: SftpTap | ScpTap, refusal: TransferRefusal | None = None) -> None:
        self._tap = tap
        self.refusal = refusal

    @property
    def desync(self) -> str | None:
        return self._tap.desync

    def client(self, data: bytes) -> tuple[bytes, bytes]:
        """(bytes for the device, bytes answered to the vendor directly)."""
        if isinstance(self._tap, SftpTap):
            return self._tap.from_client(data)
        return self._tap.from_client(data), b""

    def server(self, data: bytes) -> bytes:
        return self._tap.from_server(data)

    def events(self) -> list[FileTransfer | TransferRefusal]:
        return list(self._tap.events())

    def close(self) -> list[FileTransfer | TransferRefusal]:
        return list(self._tap.close())


def transfer_tap(kind: str, command: str | None, rule: str) -> TransferTap | None:
    """The tap for this channel, or None when it carries no file transfer protocol."""
    allow_upload, allow_download = TRANSFER_RULES.get(rule, (False, False))
    if kind == "sftp":
        return TransferTap(SftpTap(allow_upload=allow_upload, allow_download=allow_download))
    if kind == "exec" and command is not None and parse_scp_command(command) is not None:
        tap = ScpTap(command, allow_upload=allow_upload, allow_download=allow_download)
        return TransferTap(tap, tap.refusal)
    return None
