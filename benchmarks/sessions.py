"""Interactive latency and memory per session, both around one pool of recorded sessions.

Order of one run, all against the same gateway process:
1. two probe sessions, one direct to the device's sshd and one through the gateway, both
   asyncssh clients with a PTY running ``stty raw -echo; cat`` (benchmarks.echo);
2. idle latency: probes alternate between the two paths, ``idle_runs`` times;
3. the gateway's RSS and open fds, then ``sessions`` more recorded PTY sessions opened by
   the load generator (its own process); RSS and fds again once they are idle;
4. the pool types (``rate`` keystrokes/s per session) while the probes measure again.
The probes' timings for both paths come from the same loop in the same process, so the
difference between the paths is what the gateway adds.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import asyncssh

from benchmarks import echo
from benchmarks.loadgen import LoadGenerator, Opened, Spec, Typed
from benchmarks.rig import DEVICE, LoadUser, Rig, VendorUserKey
from benchmarks.stats import (
    MeasurementError,
    load_average,
    machine_cpu_seconds,
    now_text,
    percentile,
    process_cpu_seconds,
)

DIRECT, GATEWAY = "direct", "sallyport"
PROBE_KEYS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROBE_TIMEOUT = 10.0
WARMUP_PROBES = 50
SETTLE_SECONDS = 3.0  # after the pool opened: let logins' leftovers finish before reading RSS
TYPING_WARMUP = 5.0  # after typing starts: every typist is under way


@dataclass
class Config:
    sessions: int = 1000
    probes: int = 1000  # round trips per path per run
    idle_runs: int = 2
    rate: float = 5.0  # keystrokes/s per load session
    typing: bool = True  # False: open the pool for memory only
    gap: tuple[float, float] = (0.005, 0.015)  # seconds between probes (random, no rhythm)
    open_concurrency: int = 8
    settle: float = SETTLE_SECONDS
    typing_warmup: float = TYPING_WARMUP


@dataclass
class LatencyRun:
    label: str
    seconds: dict[str, list[float]]
    load_before: float
    load_after: float

    def p(self, path: str, q: float) -> float:
        return percentile(self.seconds[path], q)

    def added(self, q: float) -> float:
        """What the gateway adds at percentile ``q``: its percentile minus direct's."""
        return self.p(GATEWAY, q) - self.p(DIRECT, q)


@dataclass
class CpuShare:
    """CPU use while the pool typed and the probes measured: who was busy."""

    seconds: float  # wall-clock seconds watched
    gateway: float  # CPU seconds of the gateway process
    loadgen: float  # CPU seconds of the load generator process
    machine: float  # busy CPU seconds of all cores together

    @classmethod
    def watch(cls, gateway_pid: int, loadgen_pid: int) -> CpuShare:
        busy, _total = machine_cpu_seconds()
        return cls(
            -time.monotonic(),
            -process_cpu_seconds(gateway_pid),
            -process_cpu_seconds(loadgen_pid),
            -busy,
        )

    def stop(self, gateway_pid: int, loadgen_pid: int) -> CpuShare:
        busy, _total = machine_cpu_seconds()
        return CpuShare(
            self.seconds + time.monotonic(),
            self.gateway + process_cpu_seconds(gateway_pid),
            self.loadgen + process_cpu_seconds(loadgen_pid),
            self.machine + busy,
        )

    def cores(self, cpu: float) -> float:
        """CPU seconds per second: 1.0 is one core fully busy."""
        return cpu / self.seconds


@dataclass
class SessionsResult:
    config: Config
    idle: list[LatencyRun]
    started: str = field(default_factory=now_text)
    opened: Opened | None = None
    rss_before: int = 0
    fds_before: int = 0
    rss_open: int = 0
    fds_open: int = 0
    loaded: LatencyRun | None = None
    typed: Typed | None = None
    rss_typed: int = 0
    cpu: CpuShare | None = None  # while typing

    @property
    def best_idle(self) -> LatencyRun:
        """The idle run the machine disturbed least, judged by the direct path (the
        baseline), never by the gateway figure the target is about."""
        return min(self.idle, key=lambda run: run.p(DIRECT, 99))

    @property
    def sessions_open(self) -> int:
        return self.opened.sessions if self.opened else 0

    def memory_per_session(self) -> float:
        if not self.sessions_open:
            raise MeasurementError("no load session was opened")
        return (self.rss_open - self.rss_before) / self.sessions_open

    def fds_per_session(self) -> float:
        if not self.sessions_open:
            raise MeasurementError("no load session was opened")
        return (self.fds_open - self.fds_before) / self.sessions_open


async def latency_series(
    probes: dict[str, echo.EchoProbe],
    count: int,
    gap: tuple[float, float] = (0.005, 0.015),
    timeout: float = PROBE_TIMEOUT,
    seed: int = 7,
) -> dict[str, list[float]]:
    """``count`` round trips per path, the paths alternating (and their order swapped each
    round) so that drift on the machine falls on both alike."""
    rng = random.Random(seed)
    names = list(probes)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(count):
        byte = PROBE_KEYS[i % len(PROBE_KEYS) : i % len(PROBE_KEYS) + 1]
        for name in names if i % 2 == 0 else reversed(names):
            try:
                out[name].append(await probes[name].roundtrip(byte, timeout))
            except MeasurementError as exc:
                raise MeasurementError(f"{name} probe: {exc}") from None
            await asyncio.sleep(rng.uniform(*gap))
    return out


async def _latency_run(
    label: str, probes: dict[str, echo.EchoProbe], config: Config, seed: int
) -> LatencyRun:
    before = load_average()
    seconds = await latency_series(probes, config.probes, config.gap, seed=seed)
    return LatencyRun(label, seconds, before, load_average())


def run(rig: Rig, config: Config) -> SessionsResult:
    """The whole sequence (see the module docstring); load users are seeded first."""
    if config.rate <= 0:
        raise ValueError("the typing rate must be positive")
    users = rig.add_load_users(config.sessions) if config.sessions else []
    probe_user = rig.next_user()
    return asyncio.run(_run(rig, config, users, probe_user))


async def _open_probes(rig: Rig, probe_user: VendorUserKey) -> dict[str, echo.EchoProbe]:
    direct = await echo.connect_direct(
        rig.device.host,
        rig.device.port,
        rig.device.username,
        rig.device.host_public_key,
        asyncssh.read_private_key(rig.identity.private_key),
    )
    gateway = await echo.connect_gateway(
        rig.gateway_port,
        rig.gateway_host_key,
        probe_user.login,
        DEVICE,
        probe_user.secret,
        asyncssh.read_private_key(probe_user.identity.private_key),
    )
    return {DIRECT: await echo.open_probe(direct), GATEWAY: await echo.open_probe(gateway)}


async def _run(
    rig: Rig, config: Config, users: list[LoadUser], probe_user: VendorUserKey
) -> SessionsResult:
    started = now_text()
    probes = await _open_probes(rig, probe_user)
    try:
        await latency_series(probes, WARMUP_PROBES, config.gap)  # connections warm; discarded
        idle = [
            await _latency_run(f"idle {i + 1}", probes, config, seed=i)
            for i in range(config.idle_runs)
        ]
        result = SessionsResult(config, idle, started)
        if users:
            await _with_pool(rig, config, users, probes, result)
        return result
    finally:
        for probe in probes.values():
            probe.close()
            await probe.conn.wait_closed()


async def _with_pool(
    rig: Rig,
    config: Config,
    users: list[LoadUser],
    probes: dict[str, echo.EchoProbe],
    result: SessionsResult,
) -> None:
    result.rss_before, result.fds_before = rig.gateway_rss_bytes(), rig.gateway_fds()
    spec = Spec(
        port=rig.gateway_port,
        host_key=rig.gateway_host_key,
        device=DEVICE,
        users=[vars(u) for u in users],
        rate=config.rate,
        open_concurrency=config.open_concurrency,
    )
    load = LoadGenerator(spec, rig.workdir)
    try:
        # blocking reads run in a thread: the probes' connections keep answering keepalives
        result.opened = opened = await asyncio.to_thread(load.opened)
        if not opened.sessions:
            raise MeasurementError(f"the load generator opened no session: {opened.errors}")
        await asyncio.sleep(config.settle)
        result.rss_open, result.fds_open = rig.gateway_rss_bytes(), rig.gateway_fds()
        check_gateway_holds(result)
        if config.typing:
            load.start_typing()
            await asyncio.sleep(config.typing_warmup)
            cpu = CpuShare.watch(rig.gateway_pid, load.pid)
            result.loaded = await _latency_run("loaded", probes, config, seed=99)
            result.cpu = cpu.stop(rig.gateway_pid, load.pid)
            result.typed = typed = await asyncio.to_thread(load.typed)
            result.rss_typed = rig.gateway_rss_bytes()
            if not typed.keystrokes:
                raise MeasurementError(f"the load sessions typed nothing: {typed.errors}")
            if typed.time_limit:
                raise MeasurementError(
                    "the load stopped typing at its time limit before the probes finished: "
                    "the loaded figures would be partly unloaded"
                )
    finally:
        await asyncio.to_thread(load.stop)


def check_gateway_holds(result: SessionsResult) -> None:
    """Each open session holds at least the vendor's socket and the device's in the
    gateway process; fewer new fds means the figures are not of the process holding them."""
    grown = result.fds_open - result.fds_before
    if grown < 2 * result.sessions_open:
        raise MeasurementError(
            f"the gateway gained {grown} fds for {result.sessions_open} sessions: "
            "it does not hold them"
        )
    if result.rss_open <= result.rss_before:
        raise MeasurementError(
            f"the gateway's RSS did not grow with {result.sessions_open} sessions "
            f"({result.rss_before} -> {result.rss_open} bytes): too few to measure"
        )
