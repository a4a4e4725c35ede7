"""Device segments as Linux network namespaces, for tests of what crosses the network.

Each segment is a namespace joined to the root namespace (where the gateway runs) by a
veth pair: the gateway's leg is ``.1`` of the segment's /24, devices take ``.10`` and up.
The vendor's client stays on loopback in the root namespace. Everything is torn down when
the block exits, failed test or not.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


@dataclass
class NetSegment:
    name: str
    netns: str
    prefix: str  # "10.R.S"
    addresses: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def network(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def gateway_ip(self) -> str:
        return f"{self.prefix}.1"

    def host(self, n: int) -> str:
        """Add address ``.n`` inside the segment (idempotent) and return it."""
        address = f"{self.prefix}.{n}"
        if address not in self.addresses:
            ip("addr", "add", f"{address}/24", "dev", "eth0", netns=self.netns)
            self.addresses.append(address)
        return address

    def http_service(self, address: str, port: int, root: Path) -> None:
        """A small HTTP server (a device's web console stand-in) inside the segment."""
        root.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "http.server",
             str(port), "--bind", address, "--directory", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(proc)
        wait_tcp(address, port)


def wait_tcp(address: str, port: int, timeout: float = 15) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{address}:{port} did not accept connections")


def _free_prefix(taken: set[str]) -> str:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(100):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if prefix not in taken and f"{prefix}." not in routes:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 for a test segment")


@contextlib.contextmanager
def segments(*names: str) -> Iterator[dict[str, NetSegment]]:
    tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:3]}"
    made: dict[str, NetSegment] = {}
    try:
        for i, name in enumerate(names):
            prefix = _free_prefix({s.prefix for s in made.values()})
            seg = NetSegment(name, f"sp{tag}{i}", prefix)
            root_leg = f"sg{tag}{i}"
            ip("netns", "add", seg.netns)
            made[name] = seg
            ip("link", "add", root_leg, "type", "veth", "peer", "name", "eth0", "netns", seg.netns)
            ip("addr", "add", f"{seg.gateway_ip}/24", "dev", root_leg)
            ip("link", "set", root_leg, "up")
            ip("link", "set", "lo", "up", netns=seg.netns)
            ip("link", "set", "eth0", "up", netns=seg.netns)
        yield made
    finally:
        for seg in made.values():
            for proc in seg.processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()
            # deleting the namespace removes its veth end, and with it the root leg
            subprocess.run(["ip", "netns", "del", seg.netns], check=False)
