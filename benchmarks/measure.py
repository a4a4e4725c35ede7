"""Measurements: each path runs the same command with the same client, in one run.

A measurement that cannot be trusted raises ``MeasurementError`` (wrong byte count, a
failed command, an empty sample) instead of printing a number.
"""

from __future__ import annotations

import shlex
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.rig import Rig
from benchmarks.stats import MeasurementError, percentile
from policy.store import NOTIFY_CHANNEL

__all__ = ["MeasurementError", "Sample", "bulk", "revocation", "run_timed", "setup", "setup_paths"]

PathFn = Callable[[str], tuple[list[str], dict[str, str]]]

GATEWAY = "sallyport"
GATEWAY_REUSE = "sallyport-reuse"  # the gateway sharing one device connection (upstream_reuse)


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    gateway_cpu: list[float] = field(default_factory=list)
    device_logins: list[int] = field(default_factory=list)  # the gateway's logins to the device

    @property
    def median(self) -> float:
        if not self.seconds:
            raise MeasurementError("no samples")
        return statistics.median(self.seconds)

    def percentile(self, p: float) -> float:
        return percentile(self.seconds, p)


def paths(rig: Rig) -> dict[str, PathFn]:
    return {"direct": rig.direct, "openssh-jump": rig.jump_host, GATEWAY: rig.gateway}


def run_timed(argv: list[str], env: dict[str, str], pipe_count: bool) -> tuple[float, int]:
    """Run ssh; return wall seconds and (with ``pipe_count``) the bytes it printed."""
    run = ["bash", "-o", "pipefail", "-c", shlex.join(argv) + " | wc -c"] if pipe_count else argv
    start = time.perf_counter()
    proc = subprocess.run(
        run,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise MeasurementError(f"{argv[-1]!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    count = int(proc.stdout.strip() or 0) if pipe_count else len(proc.stdout)
    return elapsed, count


def bulk(rig: Rig, nbytes: int, rounds: int) -> dict[str, Sample]:
    """``head -c N /dev/zero`` through each path, rounds interleaved to share any drift."""
    results = {name: Sample() for name in paths(rig)}
    command = f"head -c {nbytes} /dev/zero"
    for _ in range(rounds):
        for name, path in paths(rig).items():
            argv, env = path(command)
            cpu0 = rig.gateway_cpu_seconds()
            seconds, count = run_timed(argv, env, pipe_count=True)
            if count != nbytes:
                raise MeasurementError(f"{name}: received {count} bytes, expected {nbytes}")
            results[name].seconds.append(seconds)
            results[name].gateway_cpu.append(rig.gateway_cpu_seconds() - cpu0)
    return results


def setup_paths(rig: Rig) -> dict[str, tuple[PathFn, int]]:
    """The setup paths, each with the gateway process whose CPU it counts: sallyport once
    with one device login per session and once sharing the device connection."""
    plain, reuse = rig.gateway_with(reuse=False), rig.gateway_with(reuse=True)
    return {
        "direct": (rig.direct, plain.pid),
        "openssh-jump": (rig.jump_host, plain.pid),
        GATEWAY: (rig.gateway_reuse(False), plain.pid),
        GATEWAY_REUSE: (rig.gateway_reuse(True), reuse.pid),
    }


def setup(rig: Rig, runs: int) -> dict[str, Sample]:
    """TCP connect to command exit for ``true`` (TOTP included on the gateway paths), and
    the logins the device accepted from the gateway during each run."""
    chosen = setup_paths(rig)
    results = {name: Sample() for name in chosen}
    for _ in range(runs):
        for name, (path, pid) in chosen.items():
            argv, env = path("true")
            cpu0, logins0 = rig.gateway_cpu_seconds(pid), rig.device_logins()
            seconds, _count = run_timed(argv, env, pipe_count=False)
            results[name].seconds.append(seconds)
            results[name].gateway_cpu.append(rig.gateway_cpu_seconds(pid) - cpu0)
            results[name].device_logins.append(rig.device_logins() - logins0)
    return results


def revocation(rig: Rig, runs: int) -> Sample:
    """Seconds from a revocation's commit (by another process: this one) until the
    vendor's ssh exits, for sessions held by the gateway process."""
    from sqlalchemy import create_engine, text

    sync_url = rig.database_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_engine(sync_url)
    result = Sample()
    try:
        for _ in range(runs):
            user = rig.next_user()
            argv, env = rig.gateway_as(user, "echo live; sleep 120")
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                assert proc.stdout is not None and proc.stderr is not None
                if proc.stdout.readline() != b"live\n":
                    proc.kill()
                    said = proc.stderr.read().decode(errors="replace").strip()
                    raise MeasurementError(f"the session to revoke never started: {said!r}")
                with engine.begin() as conn:
                    conn.execute(
                        text(
                            'UPDATE "grant" SET revoked_at = CURRENT_TIMESTAMP, revoked_by = '
                            "'benchmark' WHERE vendor_user_id = (SELECT id FROM vendor_user "
                            "WHERE login = :login)"
                        ),
                        {"login": user.login},
                    )
                    if engine.dialect.name == "postgresql":  # as admin.revoke_grant does
                        conn.execute(
                            text("SELECT pg_notify(:channel, 'grant')"),
                            {"channel": NOTIFY_CHANNEL},
                        )
                start = time.perf_counter()
                proc.wait(timeout=30)
                result.seconds.append(time.perf_counter() - start)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
    finally:
        engine.dispose()
    return result
