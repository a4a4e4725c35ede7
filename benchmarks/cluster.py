"""Two gateway processes on PostgreSQL: revocation to disconnect across processes.

The same shape as ``benchmarks.rig`` (a real sshd device, vendor users with keys and
TOTP, sessions driven by the stock OpenSSH client), but the database is a scratch
PostgreSQL database and two ``sallyport serve --only gateway`` processes share it. Every
measured session lives on gateway B; the revocation is written by a third process (this
one), as the web tier or ``sallyport grant revoke`` writes it: the grant row and a
``NOTIFY`` to every gateway, in one transaction. Gateway A hears the same notification
and holds nothing to close. The yielded ``Rig`` points at gateway B, so
``measure.revocation`` times it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from benchmarks.rig import Rig, seed, write_askpass
from broker.cli import prepare
from broker.keys import load_host_key
from policy.config import Settings
from tests.support.nodes import running_nodes
from tests.support.openssh import make_identity
from tests.support.pgdb import scratch_database
from tests.support.sshd import run_sshd

NODES = ("bench-gw-a", "bench-gw-b")


@contextlib.contextmanager
def cluster_rig(workdir: Path, users: int) -> Iterator[Rig]:
    workdir.mkdir(parents=True, exist_ok=True)
    identity = make_identity(workdir, "bench-client")
    with (
        scratch_database("sallyport_bench") as url,
        run_sshd(workdir / "device", username="spbench") as device,
    ):
        device.add_authorized_key(identity.public_key_line)
        data = workdir / "cluster"
        settings = Settings(
            data_dir=data,
            database_url=url,
            gateway_host="127.0.0.1",
            web_host="127.0.0.1",
            browser_port=0,  # each node picks its own
            recordings_dir=data / "recordings",
            log_level="warning",
        )
        prepare(settings)  # migrate once, and make the key files both nodes share
        identities = [make_identity(workdir / "vendors", f"bench{i:04d}") for i in range(users)]
        seeded = asyncio.run(seed(settings, device, identities))
        host_key = load_host_key(settings.host_key_path).export_public_key().decode()
        nodes = [replace(settings, node_name=name) for name in NODES]
        only = dict.fromkeys(NODES, "gateway")
        with running_nodes(workdir / "nodes", nodes, only=only) as (_a, b):
            yield Rig(
                workdir, device, device, identity, b.gateway_port, b.pid, seeded,
                write_askpass(workdir), url, " ".join(host_key.split()[:2]),
                settings=b.settings,
            )  # fmt: skip
