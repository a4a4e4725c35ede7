"""``sallyport serve`` nodes as separate OS processes, for the scale-out and soak tests.

A node is one ``sallyport serve --config FILE`` process: a gateway and a web server in one
(there is no web-only mode; a "web node" is a node whose gateway listener nobody uses).
Running nodes as real processes is the point: they share nothing but the database, the
key files in ``data_dir`` and the recording store, exactly as a cluster does, and the
tests can read each one's ``/proc/PID`` (open fds, resident memory).

* :func:`start_node` picks free loopback ports, writes the node's config file, starts
  it and waits until its gateway speaks SSH and its web server answers ``/api/v1/health``.
* :class:`Node` reads the process's fds, RSS and ``/metrics``, and stops it (SIGTERM,
  then SIGKILL if it hangs).
* :func:`sallyport_cli` runs another ``sallyport`` command (``grant revoke``, ``sessions
  kill``, ``audit verify``) as its own process against a node's config.
* :class:`LiveSsh` runs the real OpenSSH client with its output readable while it runs,
  and notes when it exited, so a test can act mid-session and time the disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from policy.config import Settings, render_settings
from tests.support.openssh import ClientIdentity, client_env, make_askpass, ssh_argv

SALLYPORT = Path(sys.executable).with_name("sallyport")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
BIND_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without ``SALLYPORT_*`` variables, plus ``extra``.

    A ``SALLYPORT_DATA_DIR`` (or any other setting) left in the test runner's environment
    would silently override the node's config file.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALLYPORT_")}
    env.update(extra or {})
    return env


class NodeError(RuntimeError):
    """A node did not start, or did not stop."""


@dataclass
class Node:
    settings: Settings
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    only: str | None = None  # "gateway" or "web" (``serve --only``); None runs both

    @property
    def name(self) -> str:
        return self.settings.node_name

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def gateway_port(self) -> int:
        return self.settings.gateway_port

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def fd_count(self) -> int:
        """Open file descriptors of the node process (sockets, files, pipes, epoll...)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
        raise NodeError(f"no VmRSS for {self.pid}")

    def log_text(self, tail: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        """GET ``path`` from the node's web server: (status, body)."""
        try:
            with urllib.request.urlopen(self.web_url + path, timeout=timeout) as resp:  # noqa: S310
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/api/v1/health")
        return status, json.loads(body)

    def metric(self, sample: str, labels: Mapping[str, str] | None = None) -> float:
        """One sample of this node's ``/metrics`` (e.g. ``sallyport_sessions_live``)."""
        status, body = self.get("/metrics")
        if status != 200:
            raise NodeError(f"{self.name}: /metrics answered {status}")
        return metric_sample(body.decode(), sample, labels)

    def terminate(self) -> None:
        """Ask for a graceful shutdown (SIGTERM) without waiting for it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (a graceful shutdown), SIGKILL if it does not end in time; the exit code."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
                raise NodeError(
                    f"{self.name} ignored SIGTERM for {timeout}s and was killed:\n{self.log_text()}"
                ) from None
        return self.process.returncode


def metric_sample(text: str, sample: str, labels: Mapping[str, str] | None = None) -> float:
    want = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in want.items()):
                return float(s.value)
    raise KeyError(f"no sample {sample} {want or ''} in the metrics")


def start_node(
    workdir: Path,
    settings: Settings,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    only: str | None = None,
) -> Node:
    """Start ``sallyport serve`` for ``settings`` (its node_name names the files) on free
    loopback ports; return once it serves both SSH and HTTP.

    ``settings.data_dir`` must already be prepared (``broker.cli.prepare``): nodes that
    share it must share keys, and two nodes generating them at once would not.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(BIND_ATTEMPTS):
        node = _spawn(workdir, settings, env, only)
        if _wait_ready(node, timeout):
            return node
    raise NodeError(f"{settings.node_name}: no free ports after {BIND_ATTEMPTS} attempts")


def start_nodes(
    workdir: Path,
    settings: Sequence[Settings],
    env: Mapping[str, str] | None = None,
    only: Mapping[str, str] | None = None,
) -> list[Node]:
    """Start several nodes at once (their startups overlap); all or none. ``only`` maps a
    node name to "gateway" or "web" for a node that runs just one of them."""
    workdir.mkdir(parents=True, exist_ok=True)
    roles = dict(only or {})
    spawned = [_spawn(workdir, s, env, roles.get(s.node_name)) for s in settings]
    nodes: list[Node] = []
    try:
        for node in spawned:
            if not _wait_ready(node, START_TIMEOUT):  # lost a port race: fresh ports
                node = start_node(workdir, node.settings, env, only=node.only)
            nodes.append(node)
    except BaseException:
        for node in spawned + nodes:
            with contextlib.suppress(NodeError):
                node.stop()
        raise
    return nodes


@contextlib.contextmanager
def running_nodes(
    workdir: Path,
    settings: Sequence[Settings],
    env: Mapping[str, str] | None = None,
    only: Mapping[str, str] | None = None,
) -> Iterator[list[Node]]:
    nodes = start_nodes(workdir, settings, env, only)
    try:
        yield nodes
    finally:
        for node in nodes:  # all shut down at once
            node.terminate()
        for node in nodes:
            with contextlib.suppress(NodeError):
                node.stop()


def _spawn(
    workdir: Path, settings: Settings, env: Mapping[str, str] | None, only: str | None
) -> Node:
    chosen = replace(
        settings,
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        web_host="127.0.0.1",
        web_port=free_port(),
        browser_port=free_port(),
    )
    config = workdir / f"{chosen.node_name}.toml"
    config.write_text(render_settings(chosen))
    log = workdir / f"{chosen.node_name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(SALLYPORT), "serve", "--config", str(config), *(["--only", only] if only else [])],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=node_env(env),
            start_new_session=True,
        )
    return Node(chosen, config, log, process, only)


def _wait_ready(node: Node, timeout: float) -> bool:
    """True once the node serves SSH and HTTP (or the one it runs); False if it lost a
    port race (retry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive():
            text = node.log_text()
            if "listen-failed" in text:
                return False
            raise NodeError(f"{node.name} exited with {node.process.returncode}:\n{text}")
        ssh_ok = node.only == "web" or _speaks_ssh(node.gateway_port)
        if ssh_ok and (node.only == "gateway" or _healthy(node)):
            return True
        time.sleep(0.1)
    node.stop()
    raise NodeError(f"{node.name} not ready after {timeout}s:\n{node.log_text()}")


def _speaks_ssh(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def _healthy(node: Node) -> bool:
    try:
        return node.health()[0] == 200
    except (OSError, ValueError):
        return False


# --- other sallyport commands ----------------------------------------------------------


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def sallyport_cli(
    config: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> CliResult:
    """Run ``sallyport ARGS --config CONFIG`` as a process of its own."""
    proc = await asyncio.create_subprocess_exec(
        str(SALLYPORT),
        *args,
        "--config",
        str(config),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node_env(env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


# --- an ssh client the test watches while it runs --------------------------------------


@dataclass
class SshOutcome:
    returncode: int
    stdout: bytes
    stderr: str
    exited_at: float  # time.time() when the client exited


@dataclass
class LiveSsh:
    """``ssh`` through a gateway, stdout read as it arrives, exit time noted."""

    process: asyncio.subprocess.Process
    stderr_path: Path
    stdout: bytes = b""
    exited_at: float | None = None
    _watch: asyncio.Future[None] | None = field(default=None, repr=False)

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        port: int,
        user: str,
        identity: ClientIdentity,
        command: str,
        answers: Sequence[str],
    ) -> LiveSsh:
        askpass = make_askpass(workdir, answers)
        argv = ssh_argv(host="127.0.0.1", port=port, user=user, identity=identity, command=command)
        stderr_path = askpass.state_dir / "stderr"
        with stderr_path.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=client_env(askpass.env),
                start_new_session=True,  # no controlling TTY: ssh must use askpass
            )
        live = cls(process, stderr_path)
        live._watch = asyncio.ensure_future(live._note_exit())
        return live

    async def _note_exit(self) -> None:
        await self.process.wait()
        self.exited_at = time.time()

    async def read_until(self, marker: bytes, timeout: float = 30) -> None:
        """Until ``marker`` has arrived on stdout (the vendor has seen it)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while marker not in self.stdout:
            left = deadline - time.monotonic()
            try:
                chunk = await asyncio.wait_for(self.process.stdout.read(4096), max(left, 0.01))
            except TimeoutError:
                chunk = None
            if not chunk:
                raise AssertionError(
                    f"{marker!r} never arrived; stdout {self.stdout!r}, stderr "
                    f"{self.stderr_path.read_text(errors='replace')!r}"
                )
            self.stdout += chunk

    async def wait(self, timeout: float = 30) -> SshOutcome:
        """The client's exit (killed, and an error raised, after ``timeout``)."""
        assert self.process.stdout is not None and self._watch is not None
        try:
            rest = await asyncio.wait_for(self.process.stdout.read(), timeout)
            await asyncio.wait_for(self._watch, timeout)
        except TimeoutError:
            await self.close()
            raise AssertionError(f"ssh still running after {timeout}s") from None
        self.stdout += rest
        assert self.exited_at is not None and self.process.returncode is not None
        return SshOutcome(
            self.process.returncode,
            self.stdout,
            self.stderr_path.read_text(errors="replace"),
            self.exited_at,
        )

    async def close(self) -> None:
        """Kill the client if it still runs, and reap it (nothing is left pending)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._watch is not None:
            await self._watch
