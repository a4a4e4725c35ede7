"""Turn measurements into a console table and BENCHMARKS.md.

BENCHMARKS.md is a header (machine and versions, rewritten on every write), then one
section per measurement, each introduced by a ``<!-- section: NAME -->`` marker and
carrying its own date and load average, then the hand-written notes. A run rewrites the
sections it measured and keeps the others as they were, so measurements can be run one
at a time without losing the rest.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from benchmarks.measure import GATEWAY, GATEWAY_REUSE, Sample
from benchmarks.stats import MeasurementError, load_average, now_text

BASELINE = "openssh-jump"
GATEWAYS = (GATEWAY, GATEWAY_REUSE)
SAME_KEX = "curve25519-sha256"
# Everything in BENCHMARKS.md from this line on is hand-written and kept across runs.
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"
SECTION = "<!-- section: {} -->"
SECTION_RE = re.compile(r"^<!-- section: ([a-z]+) -->\n", re.MULTILINE)
ORDER = ("bulk", "setup", "latency", "memory", "policy", "revocation", "revocation-cluster")
BUSY_LOAD = 1.0  # one-minute load average above which other work was running


@dataclass
class Conditions:
    """When a measurement ran and how busy the machine was."""

    started: str = field(default_factory=now_text)
    load_before: float = field(default_factory=load_average)
    load_after: float = 0.0

    def finish(self) -> Conditions:
        self.load_after = load_average()
        return self

    def line(self) -> str:
        text = (
            f"Run: {self.started}; load average {self.load_before:.2f} before, "
            f"{self.load_after:.2f} after ({os.cpu_count()} cores)."
        )
        if max(self.load_before, self.load_after) >= BUSY_LOAD:
            text += (
                " Other processes were running on the machine during this measurement "
                "(the load average says so); the figures are higher than on an idle machine."
            )
        return text


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# -- bulk ---------------------------------------------------------------------------


@dataclass
class Bulk:
    nbytes: int
    rounds: int
    samples: dict[str, Sample]
    conditions: Conditions = field(default_factory=Conditions)

    def throughput(self, name: str) -> float:
        return self.nbytes / self.samples[name].median / 1e6

    def ratio(self) -> float:
        """Gateway throughput / jump throughput (>= 1.0 meets the target)."""
        return self.throughput(GATEWAY) / self.throughput(BASELINE)

    def cpu_per_gb(self) -> float:
        cpu = sorted(self.samples[GATEWAY].gateway_cpu)
        return cpu[len(cpu) // 2] / (self.nbytes / 1e9)

    def table(self) -> str:
        lines = [
            f"bulk: {self.nbytes / 1e6:.0f} MB x {self.rounds} per path (median)",
            f"  {'path':<14}{'seconds':>10}{'MB/s':>10}",
        ]
        for name, sample in self.samples.items():
            lines.append(f"  {name:<14}{sample.median:>10.2f}{self.throughput(name):>10.0f}")
        lines.append(f"  sallyport / openssh-jump throughput: {self.ratio():.2f}x (target >= 1.0)")
        lines.append(f"  gateway CPU: {self.cpu_per_gb():.2f} s per GB")
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = "\n".join(
            f"| {name} | {s.median:.2f} | {self.throughput(name):.0f} | "
            f"{self.throughput(name) / self.throughput(BASELINE):.2f}x |"
            for name, s in self.samples.items()
        )
        return f"""## Bulk transfer

{self.conditions.line()}

`ssh ... 'head -c {self.nbytes} /dev/zero' | wc -c`, {self.rounds} rounds per path, median.
The byte count is checked on every run.

| path | seconds | MB/s | throughput vs jump |
|---|---|---|---|
{rows}

Gateway CPU: **{self.cpu_per_gb():.2f} s per GB** (user+system of the gateway process).
Target (no slower than the OpenSSH jump, ratio >= 1.0): {verdict(self.ratio() >= 1.0)}
({self.ratio():.2f}x).
"""


# -- session setup ------------------------------------------------------------------


@dataclass
class Setup:
    """Session setup on every path, the gateway twice: one device login per session
    (``sallyport``) and one device connection shared by the sessions (``sallyport-reuse``).

    Refuses figures that do not show what they claim: each ``sallyport`` run must have
    logged in to the device once, and the ``sallyport-reuse`` runs together fewer times
    than they ran (else nothing was reused)."""

    runs: int
    defaults: dict[str, Sample]
    same_kex: dict[str, Sample]
    conditions: Conditions = field(default_factory=Conditions)

    def __post_init__(self) -> None:
        for setup in (self.defaults, self.same_kex):
            missing = {BASELINE, GATEWAY, GATEWAY_REUSE} - set(setup)
            if missing:
                raise MeasurementError(f"setup: no samples for {sorted(missing)}")
            for name, sample in setup.items():
                if len(sample.seconds) != self.runs or len(sample.gateway_cpu) != self.runs:
                    raise MeasurementError(f"setup: {name} has not {self.runs} runs")
            logins = setup[GATEWAY].device_logins
            if logins != [1] * self.runs:
                raise MeasurementError(
                    f"setup: {GATEWAY} must log in to the device once per session: {logins}"
                )
        reused = (
            self.defaults[GATEWAY_REUSE].device_logins + self.same_kex[GATEWAY_REUSE].device_logins
        )
        if len(reused) != 2 * self.runs or not 1 <= sum(reused) < len(reused):
            raise MeasurementError(
                f"setup: {GATEWAY_REUSE} logged in to the device {sum(reused)} times in "
                f"{len(reused)} sessions: the connection was not shared"
            )

    def _setup(self, same_kex: bool) -> dict[str, Sample]:
        return self.same_kex if same_kex else self.defaults

    def ratio(self, same_kex: bool = False, path: str = GATEWAY) -> float:
        """Gateway setup time / jump setup time (<= 0.75 meets the target)."""
        setup = self._setup(same_kex)
        return setup[path].median / setup[BASELINE].median

    def cpu_ms_per_session(self, path: str = GATEWAY, same_kex: bool = False) -> float:
        """Mean gateway CPU per session (the shared connection's one login included)."""
        cpu = self._setup(same_kex)[path].gateway_cpu
        return 1000 * sum(cpu) / len(cpu)

    def logins(self, path: str) -> int:
        return sum(self.defaults[path].device_logins + self.same_kex[path].device_logins)

    def table(self) -> str:
        lines = [f"setup: {self.conditions.line()}"]
        for label, same in (("client defaults", False), (f"KEX pinned to {SAME_KEX}", True)):
            lines.append(f"setup: `true`, {self.runs} runs per path, {label}")
            lines.append(
                f"  {'path':<16}{'median ms':>10}{'p90 ms':>10}{'vs jump':>9}{'CPU ms':>9}"
            )
            for name, s in self._setup(same).items():
                cpu = f"{self.cpu_ms_per_session(name, same):.1f}" if name in GATEWAYS else ""
                lines.append(
                    f"  {name:<16}{s.median * 1000:>10.1f}{s.percentile(90) * 1000:>10.1f}"
                    f"{self.ratio(same, name):>8.2f}x{cpu:>9}"
                )
            for name in GATEWAYS:
                lines.append(
                    f"  {name} / openssh-jump setup time: {self.ratio(same, name):.2f}x "
                    "(target <= 0.75)"
                )
        for name in GATEWAYS:
            lines.append(
                f"  gateway CPU, {name}: {self.cpu_ms_per_session(name):.1f} ms per session "
                f"(client defaults); device logins: {self.logins(name)} in {2 * self.runs} "
                "sessions"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = "\n".join(
            f"| {name} | {label} | {s.median * 1000:.1f} | {s.percentile(90) * 1000:.1f} | "
            f"{self.ratio(same, name):.2f}x | "
            f"{f'{self.cpu_ms_per_session(name, same):.1f}' if name in GATEWAYS else ''} |"
            for label, same in (("defaults", False), (SAME_KEX, True))
            for name, s in self._setup(same).items()
        )
        verdicts = "\n".join(
            f"- `{name}`: with defaults {verdict(self.ratio(False, name) <= 0.75)} "
            f"({self.ratio(False, name):.2f}x); with the same key exchange everywhere "
            f"{verdict(self.ratio(True, name) <= 0.75)} ({self.ratio(True, name):.2f}x). "
            f"Gateway CPU **{self.cpu_ms_per_session(name):.1f} ms per session** (client "
            f"defaults; target 8 ms: {verdict(self.cpu_ms_per_session(name) <= 8.0)}); the "
            f"device accepted {self.logins(name)} logins from it in {2 * self.runs} sessions."
            for name in GATEWAYS
        )
        return f"""## Session setup

{self.conditions.line()}

TCP connect to command exit for `ssh ... true`, {self.runs} runs per path (sallyport:
TOTP answered by an askpass script; each run a different vendor user, since a code is
accepted once). The paths run in turn within each round.

The gateway is measured twice, as two `sallyport serve --only gateway` processes started
fresh for this measurement on the same data: `{GATEWAY}` with `upstream_reuse = false`
(each session logs in to the device and closes its connection at the end) and
`{GATEWAY_REUSE}` with `upstream_reuse = true` (the sessions share one logged-in device
connection, each on its own channel; its first session pays the login, and the mean
CPU per session includes it). The device's `sshd` log is checked: every `{GATEWAY}` run
shows one password login from the gateway, the `{GATEWAY_REUSE}` runs at least one and
fewer than their sessions.

Measured twice: with the client's default algorithms, and with the key exchange pinned to
`{SAME_KEX}` on every path. The OpenSSH client and server here default to a
post-quantum hybrid key exchange that costs far more CPU than X25519; the gateway's
asyncssh offers no such hybrid without liboqs, so with defaults the vendor's leg to the
gateway negotiates `{SAME_KEX}` while each OpenSSH leg pays the hybrid. The pinned run
compares like with like.

| path | key exchange | median ms | p90 ms | time vs jump | gateway CPU ms/session |
|---|---|---|---|---|---|
{rows}

Gateway CPU is the mean user+system time of that path's gateway process per session.
Target (at most 0.75x the jump's time):

{verdicts}
"""


# -- revocation ---------------------------------------------------------------------


@dataclass
class Revocation:
    sample: Sample
    conditions: Conditions = field(default_factory=Conditions)
    cluster: bool = False  # two gateway processes on PostgreSQL (benchmarks.cluster)

    def table(self) -> str:
        s = self.sample
        where = "two gateways, PostgreSQL" if self.cluster else "one gateway, SQLite"
        return (
            f"revocation to disconnect ({where}), {len(s.seconds)} runs: p50 "
            f"{s.median * 1000:.0f} ms, p99 {s.percentile(99) * 1000:.0f} ms "
            "(target p99 < 1000 ms)"
        )

    def markdown(self) -> str:
        s = self.sample
        p50, p99, worst = s.median * 1000, s.percentile(99) * 1000, max(s.seconds) * 1000
        if self.cluster:
            title = "Revocation to disconnect, two gateway processes on PostgreSQL"
            how = (
                "Two `sallyport serve --only gateway` processes share a PostgreSQL database;"
                " every session lives on gateway B. A third process (the benchmark) writes"
                " the revocation as the web and `sallyport grant revoke` do: the grant row"
                " and a `NOTIFY` to the gateways in one transaction. The time runs from that"
                " commit until the vendor's `ssh` has exited. The gateways' supervisors"
                " LISTEN, and also poll twice a second."
            )
        else:
            title = "Revocation to disconnect"
            how = (
                "A live recorded session (`ssh ... 'echo live; sleep 120'`) is revoked by"
                " another process writing the revocation to the database (as the web or"
                " `sallyport grant revoke` does); the time runs from that commit until the"
                " vendor's `ssh` has exited. The gateway's supervisor polls the database"
                " twice a second (SQLite has no notifications)."
            )
        return f"""## {title}

{self.conditions.line()}

{how} {len(s.seconds)} runs.

| p50 | p99 | max |
|---|---|---|
| {p50:.0f} ms | {p99:.0f} ms | {worst:.0f} ms |

Target (p99 under 1 s): {verdict(s.percentile(99) < 1.0)}.
"""


# -- the file -----------------------------------------------------------------------


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


def header() -> str:
    return f"""# Benchmarks

Produced by `./dev bench --write BENCHMARKS.md` (`python -m benchmarks`; `--only NAME`
runs one measurement and rewrites only its section). Every comparison is measured in one
run on one machine, each path in the same run, rounds interleaved. Each section says when
it ran and how busy the machine was.

- **Machine:** {machine()}
- **Paths:** `direct` = a client straight to the device's `sshd`; `openssh-jump` = the same
  through a second OpenSSH `sshd` used as a ProxyJump host (the baseline); `sallyport` =
  `vendor:device@gateway` through `sallyport serve` (separate process) with the session
  recorded to local disk, key + TOTP login, device password injected from the vault.
  The device is a real Debian `sshd`, all on loopback.
"""


def split(text: str) -> tuple[dict[str, str], str]:
    """The sections of an existing BENCHMARKS.md by name, and its notes (from the marker)."""
    notes = ""
    if NOTES_MARKER in text:
        text, notes = text[: text.index(NOTES_MARKER)], text[text.index(NOTES_MARKER) :]
    parts = SECTION_RE.split(text)
    # parts: [header, name1, body1, name2, body2, ...]
    sections = {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts) - 1, 2)}
    return sections, notes


def merge(old: str, fresh: dict[str, str]) -> str:
    """A new BENCHMARKS.md: ``fresh`` sections replace old ones of the same name."""
    unknown = set(fresh) - set(ORDER)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}")
    sections, notes = split(old)
    sections.update(fresh)
    body = "\n".join(
        f"{SECTION.format(name)}\n{sections[name].strip()}\n" for name in ORDER if name in sections
    )
    return header() + "\n" + body + ("\n" + notes if notes else "")
