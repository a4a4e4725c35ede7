"""The gateway's SSH host key, created in the data dir on first run (0600)."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from policy.keyfiles import read_or_create


def load_host_key(path: Path) -> asyncssh.SSHKey:
    data = read_or_create(
        path, lambda: asyncssh.generate_private_key("ssh-ed25519").export_private_key()
    )
    return asyncssh.import_private_key(data)
