"""The device snapshot kept with each session: the record as it was, never the secret."""

from __future__ import annotations

import json

import asyncssh

from policy.models import CredentialKind, Criticality, Device, DeviceService, Segment
from policy.snapshot import device_snapshot, host_key_fingerprint


def test_snapshot_captures_the_record_and_not_the_credential() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    device = Device(
        name="pump-12", asset_tag="BM-0042", manufacturer="Infusia", model="IP-9",
        firmware="4.2.1", location="ICU bed 3", criticality=Criticality.LIFE_SUSTAINING,
        address="10.20.0.12", ssh_host_key=key.export_public_key().decode(),
        credential_username="service", credential_kind=CredentialKind.PASSWORD,
        credential_secret=b"vaulted-ciphertext-bytes",
    )  # fmt: skip
    device.segment = Segment(name="icu")
    device.services = [DeviceService(name="ssh", port=22, protocol="tcp")]

    snap = device_snapshot(device)

    assert snap["name"] == "pump-12" and snap["asset_tag"] == "BM-0042"
    assert snap["manufacturer"] == "Infusia" and snap["model"] == "IP-9"
    assert snap["firmware"] == "4.2.1" and snap["location"] == "ICU bed 3"
    assert snap["criticality"] == "life-sustaining" and snap["segment"] == "icu"
    assert snap["address"] == "10.20.0.12"
    assert snap["services"] == [{"name": "ssh", "port": 22, "protocol": "tcp"}]
    assert snap["host_key_fingerprint"] == key.get_fingerprint("sha256")
    assert "vaulted" not in json.dumps(snap)  # JSON-ready, and no secret in it
    assert "credential_secret" not in snap


def test_fingerprint_of_missing_or_malformed_keys() -> None:
    assert host_key_fingerprint(None) is None
    assert host_key_fingerprint("ssh-ed25519") is None
    assert host_key_fingerprint("ssh-ed25519 !!!notbase64") is None
