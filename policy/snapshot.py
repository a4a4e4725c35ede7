"""The device record as evidence: what the device was when a session started.

Inventory rows change (firmware upgrades, moves, re-segmentation); a session's evidence
keeps the record as it was. The snapshot is plain JSON data and never holds the vaulted
credential, only whether one was set and for which account.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from policy.models import Device

SNAPSHOT_VERSION = 1


def host_key_fingerprint(host_key: str | None) -> str | None:
    """``SHA256:<base64>`` of an OpenSSH public key line (as ``ssh-keygen -l`` prints)."""
    if not host_key:
        return None
    fields = host_key.split()
    if len(fields) < 2:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def device_snapshot(device: Device) -> dict[str, Any]:
    """A JSON-ready copy of ``device`` (pure: reads the loaded object, no I/O).

    ``device.segment`` and ``device.services`` must be loaded (``policy.store.device``
    loads both).
    """
    return {
        "version": SNAPSHOT_VERSION,
        "name": device.name,
        "asset_tag": device.asset_tag,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "firmware": device.firmware,
        "location": device.location,
        "criticality": str(device.criticality),
        "segment": device.segment.name if device.segment is not None else None,
        "address": device.address,
        "services": [
            {"name": s.name, "port": s.port, "protocol": s.protocol} for s in device.services
        ],
        "host_key": device.ssh_host_key.strip() if device.ssh_host_key else None,
        "host_key_fingerprint": host_key_fingerprint(device.ssh_host_key),
        "credential_username": device.credential_username,
        "credential_kind": str(device.credential_kind) if device.credential_kind else None,
    }
