"""The gateway's SSH certificate authority: host certificates for device names.

With ``ssh -J vendor1@gateway admin@pump-12`` the vendor's client checks the host key of
``pump-12``, but the connection ends at the gateway. The gateway presents its own host key
with a certificate for the principal ``pump-12`` signed by this CA; the vendor trusts the
CA once with the line ``sallyport ca known-hosts`` prints.
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncssh

from broker.keys import load_host_key

CERT_LIFETIME = 24 * 3600
RENEW_BEFORE = 3600
CLOCK_SKEW = 300


class HostCA:
    def __init__(self, ca_key: asyncssh.SSHKey, host_key: asyncssh.SSHKey) -> None:
        self.ca_key = ca_key
        self.host_key = host_key
        self._certs: dict[str, tuple[float, asyncssh.SSHCertificate]] = {}

    def certificate_for(self, device: str, now: float | None = None) -> asyncssh.SSHCertificate:
        """A host certificate naming ``device``, cached until it is close to expiry."""
        now = time.time() if now is None else now
        cached = self._certs.get(device)
        if cached is not None and cached[0] - RENEW_BEFORE > now:
            return cached[1]
        expires = now + CERT_LIFETIME
        cert = self.ca_key.generate_host_certificate(
            self.host_key,
            f"sallyport:{device}",
            principals=[device],
            valid_after=int(now - CLOCK_SKEW),
            valid_before=int(expires),
        )
        self._certs[device] = (expires, cert)
        return cert

    def known_hosts_line(self) -> str:
        public = self.ca_key.export_public_key().decode().split()
        return f"@cert-authority * {public[0]} {public[1]} sallyport-ca"


def load_ca(ca_key_path: Path, host_key_path: Path) -> HostCA:
    return HostCA(load_host_key(ca_key_path), load_host_key(host_key_path))
