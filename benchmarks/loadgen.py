"""The session load: many recorded PTY sessions through the gateway, typing at human rates.

Runs as its own process (``python -m benchmarks.loadgen SPEC``), an asyncssh client pool,
so its CPU is not charged to the process that measures latency. Each session logs in as
its own vendor user (key, then TOTP), runs the echo command on the device, and on
``type`` sends one printable byte every ``1/rate`` seconds, waiting for its echo before
the next (a typist who sees each character; under overload the rate falls instead of a
queue growing without bound, and the achieved rate is reported).

It talks to the parent in JSON lines on stdout and reads commands (``type``, ``stop``) on
stdin. Bounded in every direction: opening stops at ``open_timeout``, typing at
``type_limit`` seconds, and a closed stdin (the parent is gone) stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from benchmarks import echo
from benchmarks.stats import MeasurementError, percentile

KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"
MAX_ERRORS = 5  # distinct error messages kept for the report


@dataclass
class Spec:
    port: int
    host_key: str
    device: str
    users: list[dict[str, str]]  # login, secret, private_key
    rate: float = 5.0  # keystrokes per second per session
    open_concurrency: int = 8  # logins in flight (the device's sshd MaxStartups is 10)
    open_timeout: float = 1800.0
    type_limit: float = 1800.0
    echo_timeout: float = 30.0


@dataclass
class Opened:
    sessions: int
    failed: int
    seconds: float
    errors: list[str] = field(default_factory=list)


@dataclass
class Typed:
    sessions: int  # sessions that typed
    keystrokes: int  # echoed keystrokes
    missed: int  # keystrokes whose echo did not come (or came wrong)
    lost: int  # sessions that closed while typing
    seconds: float
    offered_rate: float  # keystrokes/s asked for, all sessions together
    p50: float
    p99: float
    errors: list[str] = field(default_factory=list)
    time_limit: bool = False  # typing stopped at type_limit, not when the parent said

    @property
    def rate(self) -> float:
        return self.keystrokes / self.seconds if self.seconds > 0 else 0.0


def _note(errors: list[str], message: str) -> None:
    if message not in errors and len(errors) < MAX_ERRORS:
        errors.append(message)


# -- the child process ---------------------------------------------------------------


class Pool:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.probes: list[echo.EchoProbe] = []
        self.latencies: list[float] = []
        self.missed = 0
        self.lost = 0
        self.errors: list[str] = []

    async def open(self) -> Opened:
        start = time.perf_counter()
        queue = list(self.spec.users)
        failed = 0

        async def worker() -> None:
            nonlocal failed
            while queue:
                user = queue.pop()
                try:
                    self.probes.append(await self._open_one(user))
                except (MeasurementError, asyncssh.Error, OSError) as exc:
                    failed += 1
                    _note(self.errors, f"{type(exc).__name__}: {exc}")

        workers = min(self.spec.open_concurrency, len(queue)) or 1
        try:
            async with asyncio.timeout(self.spec.open_timeout):
                await asyncio.gather(*(worker() for _ in range(workers)))
        except TimeoutError:
            _note(self.errors, f"opening stopped at the {self.spec.open_timeout:g} s limit")
        errors, self.errors = self.errors, []
        return Opened(len(self.probes), failed, time.perf_counter() - start, errors)

    async def _open_one(self, user: dict[str, str]) -> echo.EchoProbe:
        key = asyncssh.import_private_key(user["private_key"])
        conn = await echo.connect_gateway(
            self.spec.port, self.spec.host_key, user["login"], self.spec.device,
            user["secret"], key,
        )  # fmt: skip
        try:
            return await echo.open_probe(conn)
        except BaseException:
            conn.close()
            raise

    async def type(self, stop: asyncio.Event) -> Typed:
        start = time.perf_counter()
        rng = random.Random(1)
        typists = [
            self._typist(p, stop, rng.uniform(0, 1 / self.spec.rate), rng.randrange(len(KEYS)))
            for p in self.probes
        ]
        await asyncio.gather(*typists)
        seconds = time.perf_counter() - start
        return Typed(
            sessions=len(self.probes),
            keystrokes=len(self.latencies),
            missed=self.missed,
            lost=self.lost,
            seconds=seconds,
            offered_rate=self.spec.rate * len(self.probes),
            p50=percentile(self.latencies, 50) if self.latencies else 0.0,
            p99=percentile(self.latencies, 99) if self.latencies else 0.0,
            errors=self.errors,
        )

    async def _typist(
        self, probe: echo.EchoProbe, stop: asyncio.Event, phase: float, key: int
    ) -> None:
        period = 1 / self.spec.rate
        loop = asyncio.get_running_loop()
        due = loop.time() + phase
        while not stop.is_set():
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                if stop.is_set():
                    return
            key = (key + 1) % len(KEYS)
            try:
                self.latencies.append(
                    await probe.roundtrip(KEYS[key : key + 1], self.spec.echo_timeout)
                )
            except MeasurementError as exc:
                # a late echo would be taken for the next one: this session stops typing
                self.missed += 1
                if probe.session.closed is not None:
                    self.lost += 1
                _note(self.errors, str(exc))
                return
            due = max(due + period, loop.time())

    async def close(self) -> None:
        for probe in self.probes:
            probe.close()
        for probe in self.probes:
            with contextlib.suppress(asyncssh.Error, OSError):
                await asyncio.wait_for(probe.conn.wait_closed(), 10)


def _say(event: str, payload: Any) -> None:
    print(json.dumps({"event": event, **asdict(payload)}), flush=True)


async def _commands() -> tuple[asyncio.Queue[str], asyncio.Task[None]]:
    """Lines from stdin as a queue (and the task that fills it); an empty string means
    stdin closed, which the pool takes as "stop"."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def pump() -> None:
        while True:
            line = (await reader.readline()).decode()
            await queue.put(line.strip())
            if not line:
                return

    return queue, loop.create_task(pump())


async def run(spec: Spec) -> int:
    commands, pump = await _commands()
    pool = Pool(spec)
    try:
        _say("opened", await pool.open())
        command = await commands.get()
        if command != "type":
            return 0
        stop = asyncio.Event()
        typing = asyncio.ensure_future(pool.type(stop))
        waiting = asyncio.ensure_future(commands.get())
        done, _ = await asyncio.wait(
            {typing, waiting}, timeout=spec.type_limit, return_when=asyncio.FIRST_COMPLETED
        )
        stop.set()
        waiting.cancel()
        typed = await typing
        typed.time_limit = not done
        _say("typed", typed)
        return 0
    finally:
        await pool.close()
        pump.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec = Spec(**json.loads(Path(args[0]).read_text()))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(spec))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(spec))


# -- the parent's side ---------------------------------------------------------------


class LoadGenerator:
    """Starts the pool process and steps it through open, type, stop."""

    def __init__(self, spec: Spec, workdir: Path) -> None:
        self.spec = spec
        path = workdir / "loadgen.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(spec), fh)
        self.log = (workdir / "loadgen.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.pid = self.proc.pid

    def _read(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = _readline(self.proc, deadline - time.monotonic())
            if line is None:
                break
            message: dict[str, Any] = json.loads(line)
            if message.pop("event") == event:
                return message
        self.stop()
        raise MeasurementError(
            f"the load generator sent no '{event}' within {timeout:g} s "
            f"(exit {self.proc.poll()}): {self.stderr_tail()}"
        )

    def opened(self) -> Opened:
        return Opened(**self._read("opened", self.spec.open_timeout + 60))

    def start_typing(self) -> None:
        self._send("type")

    def typed(self) -> Typed:
        """Stop typing and return what the pool saw (it may have stopped by itself, at its
        time limit: then it has already reported and gone)."""
        with contextlib.suppress(BrokenPipeError):
            self._send("stop")
        return Typed(**self._read("typed", 120))

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr_tail(self) -> str:
        text = Path(self.log.name).read_text(errors="replace").strip()
        return text[-2000:] or "(no output)"

    def stop(self) -> None:
        """Close stdin (the pool then closes its sessions and exits), kill if it hangs."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    """One line from the child's stdout, or None at EOF or after ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buffer += chunk
        if chunk == b"\n":
            return buffer


if __name__ == "__main__":
    sys.exit(main())
