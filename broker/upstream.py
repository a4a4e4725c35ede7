"""Connections from the gateway to devices: vaulted credential, pinned host key, no config."""

from __future__ import annotations

from collections.abc import Callable

import asyncssh

from broker.errors import UpstreamError
from policy.models import CredentialKind, Device
from policy.vault import DEVICE_CREDENTIAL, Vault

# AES-GCM first: the cryptography backend does it in one pass with hardware support.
UPSTREAM_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


def ssh_port(device: Device) -> int:
    for service in device.services:
        if service.name == "ssh":
            return service.port
    raise UpstreamError("device-no-ssh", f"device '{device.name}' has no ssh service")


async def connect_device(
    device: Device,
    vault: Vault,
    connect_timeout: float,
    client_factory: Callable[[], asyncssh.SSHClient] | None = None,
) -> asyncssh.SSHClientConnection:
    """Log in to ``device`` as the inventory says; refuse if its host key is not the pinned one.

    ``client_factory`` is told when the connection closes (``broker.devicepool``)."""
    if not device.ssh_host_key:
        raise UpstreamError("device-no-host-key", f"device '{device.name}' has no pinned host key")
    if not device.credential_username or device.credential_secret is None:
        raise UpstreamError("device-no-credential", f"device '{device.name}' has no credential")
    try:
        pinned = asyncssh.import_public_key(device.ssh_host_key)
    except (asyncssh.KeyImportError, ValueError):
        raise UpstreamError(
            "device-host-key-invalid", f"device '{device.name}': bad pinned key"
        ) from None
    secret = vault.open_text(device.credential_secret, DEVICE_CREDENTIAL)
    options: dict[str, object] = {}
    if device.credential_kind is CredentialKind.KEY:
        options.update(
            client_keys=[asyncssh.import_private_key(secret)], preferred_auth="publickey"
        )
    else:
        options.update(password=secret, client_keys=None, preferred_auth="password")
    try:
        return await asyncssh.connect(
            device.address,
            ssh_port(device),
            username=device.credential_username,
            known_hosts=([pinned], [], []),
            config=None,
            agent_path=None,
            agent_forwarding=False,
            encryption_algs=UPSTREAM_CIPHERS,
            connect_timeout=connect_timeout,
            login_timeout=connect_timeout,
            client_factory=client_factory,
            **options,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise UpstreamError(
            "device-host-key-changed",
            f"device '{device.name}' presented a host key that does not match the pinned one; "
            "refusing to connect (ask the device owner to re-pin it)",
        ) from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(
            "device-login-failed", f"the gateway could not log in to '{device.name}'"
        ) from None
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise UpstreamError(
            "device-unreachable", f"device '{device.name}' is unreachable ({type(exc).__name__})"
        ) from None
