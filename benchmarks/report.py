"""Turn measurements into a console table and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from benchmarks.measure import Sample

BASELINE = "openssh-jump"
GATEWAY = "sallyport"
SAME_KEX = "curve25519-sha256"
# Everything in BENCHMARKS.md from this line on is hand-written and kept across runs.
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"


@dataclass
class Results:
    nbytes: int
    rounds: int
    setup_runs: int
    bulk: dict[str, Sample]
    setup: dict[str, Sample]
    setup_same_kex: dict[str, Sample]
    revocation: Sample

    def throughput(self, name: str) -> float:
        return self.nbytes / self.bulk[name].median / 1e6

    def bulk_ratio(self) -> float:
        """Gateway throughput / jump throughput (>= 1.0 meets the target)."""
        return self.throughput(GATEWAY) / self.throughput(BASELINE)

    def setup_ratio(self, same_kex: bool = False) -> float:
        """Gateway setup time / jump setup time (<= 0.75 meets the target)."""
        setup = self.setup_same_kex if same_kex else self.setup
        return setup[GATEWAY].median / setup[BASELINE].median

    def cpu_per_gb(self) -> float:
        cpu = sorted(self.bulk[GATEWAY].gateway_cpu)[len(self.bulk[GATEWAY].gateway_cpu) // 2]
        return cpu / (self.nbytes / 1e9)

    def cpu_ms_per_session(self) -> float:
        cpu = self.setup[GATEWAY].gateway_cpu
        return 1000 * sum(cpu) / len(cpu)


def table(r: Results) -> str:
    lines = [
        f"bulk: {r.nbytes / 1e6:.0f} MB x {r.rounds} per path (median)",
        f"  {'path':<14}{'seconds':>10}{'MB/s':>10}",
    ]
    for name, sample in r.bulk.items():
        lines.append(f"  {name:<14}{sample.median:>10.2f}{r.throughput(name):>10.0f}")
    lines.append(f"  sallyport / openssh-jump throughput: {r.bulk_ratio():.2f}x (target >= 1.0)")
    lines.append(f"  gateway CPU: {r.cpu_per_gb():.2f} s per GB")
    for label, same, setup in (
        ("client defaults", False, r.setup),
        (f"KEX pinned to {SAME_KEX}", True, r.setup_same_kex),
    ):
        lines.append(f"setup: `true`, {r.setup_runs} runs per path, {label}")
        lines.append(f"  {'path':<14}{'median ms':>10}{'p90 ms':>10}")
        for name, sample in setup.items():
            lines.append(
                f"  {name:<14}{sample.median * 1000:>10.1f}{sample.percentile(90) * 1000:>10.1f}"
            )
        lines.append(
            f"  sallyport / openssh-jump setup time: {r.setup_ratio(same):.2f}x (target <= 0.75)"
        )
    lines.append(f"  gateway CPU: {r.cpu_ms_per_session():.1f} ms per session")
    rev = r.revocation
    lines.append(
        f"revocation to disconnect, {len(rev.seconds)} runs: p50 {rev.median * 1000:.0f} ms, "
        f"p99 {rev.percentile(99) * 1000:.0f} ms (target p99 < 1000 ms)"
    )
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB; Linux {platform.release()}; "
        f"Python {platform.python_version()}; asyncssh {version('asyncssh')}; "
        f"cryptography {version('cryptography')}; {ssh}"
    )


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def markdown(r: Results) -> str:
    bulk_rows = "\n".join(
        f"| {name} | {s.median:.2f} | {r.throughput(name):.0f} | "
        f"{r.throughput(name) / r.throughput(BASELINE):.2f}x |"
        for name, s in r.bulk.items()
    )
    setup_rows = "\n".join(
        f"| {name} | {label} | {s.median * 1000:.1f} | {s.percentile(90) * 1000:.1f} | "
        f"{s.median / setup[BASELINE].median:.2f}x |"
        for label, setup in (("defaults", r.setup), (SAME_KEX, r.setup_same_kex))
        for name, s in setup.items()
    )
    rev_p50, rev_p99 = r.revocation.median * 1000, r.revocation.percentile(99) * 1000
    rev_max = max(r.revocation.seconds) * 1000
    return f"""# Benchmarks

Produced by `./dev bench --write BENCHMARKS.md` (`python -m benchmarks`). Every figure is
from one run on one machine, each path measured in the same run, rounds interleaved.

- **Date:** {datetime.now(UTC):%Y-%m-%d %H:%M} UTC
- **Machine:** {machine()}
- **Paths:** `direct` = OpenSSH `ssh` to the device's `sshd`; `openssh-jump` = the same
  through a second OpenSSH `sshd` used as a ProxyJump host (the baseline); `sallyport` =
  `ssh vendor:device@gateway` through `sallyport serve` (separate process) with the session
  recorded to local disk, key + TOTP login, device password injected from the vault.
  The device is a real Debian `sshd`, all on loopback.

## Bulk transfer

`ssh ... 'head -c {r.nbytes} /dev/zero' | wc -c`, {r.rounds} rounds per path, median.
The byte count is checked on every run.

| path | seconds | MB/s | throughput vs jump |
|---|---|---|---|
{bulk_rows}

Gateway CPU: **{r.cpu_per_gb():.2f} s per GB** (user+system of the gateway process).
Target (no slower than the OpenSSH jump, ratio >= 1.0): {verdict(r.bulk_ratio() >= 1.0)}
({r.bulk_ratio():.2f}x).

## Session setup

TCP connect to command exit for `ssh ... true`, {r.setup_runs} runs per path (sallyport:
TOTP answered by an askpass script; each run a different vendor user, since a code is
accepted once).

Measured twice: with the client's default algorithms, and with the key exchange pinned to
`{SAME_KEX}` on every path. The OpenSSH client and server here default to a
post-quantum hybrid key exchange that costs far more CPU than X25519; the gateway's
asyncssh offers no such hybrid without liboqs, so with defaults the vendor's leg to the
gateway negotiates `{SAME_KEX}` while each OpenSSH leg pays the hybrid. The pinned run
compares like with like.

| path | key exchange | median ms | p90 ms | time vs jump |
|---|---|---|---|---|
{setup_rows}

Gateway CPU: **{r.cpu_ms_per_session():.1f} ms per session** (client defaults run).
Target (at most 0.75x the jump's time): with defaults {verdict(r.setup_ratio() <= 0.75)}
({r.setup_ratio():.2f}x); with the same key exchange everywhere
{verdict(r.setup_ratio(True) <= 0.75)} ({r.setup_ratio(True):.2f}x).

## Revocation to disconnect

A live recorded session (`ssh ... 'echo live; sleep 120'`) is revoked by another process
writing the revocation to the database (as the web or `sallyport grant revoke` does); the
time runs from that commit until the vendor's `ssh` has exited. The gateway's supervisor
polls the database twice a second. {len(r.revocation.seconds)} runs.

| p50 | p99 | max |
|---|---|---|
| {rev_p50:.0f} ms | {rev_p99:.0f} ms | {rev_max:.0f} ms |

Target (p99 under 1 s): {verdict(r.revocation.percentile(99) < 1.0)}.
"""
