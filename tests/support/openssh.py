"""Drive the real OpenSSH client (``/usr/bin/ssh``) non-interactively from tests.

* :func:`make_identity` generates an ed25519 client key with ``ssh-keygen``.
* :func:`run_ssh` runs one ``ssh`` command and answers every prompt (password,
  keyboard-interactive such as a TOTP "Verification code: ") through an ``SSH_ASKPASS``
  script; the prompt texts it was shown are returned in :attr:`SshResult.prompts`.
* :class:`TmuxSession` runs an interactive command (``ssh -tt ...``) on a real PTY of a
  fixed size inside a private tmux server, so tests can type, read the screen and resize.

Answers are handed to the askpass helper through its environment, never written to disk,
so secrets do not end up in test work directories that are later scanned for leaks.
ssh's LogLevel is left at its default (INFO) on purpose: at ERROR the client would hide
the server's USERAUTH_BANNER text, which the gateway uses to explain MFA failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
TMUX = "/usr/bin/tmux"

ANSWERS_ENV = "SALLYPORT_TEST_ASKPASS_ANSWERS"
PASSWORD_ENV = "SALLYPORT_TEST_ASKPASS_PASSWORD"
STATE_ENV = "SALLYPORT_TEST_ASKPASS_STATE"

_counter = itertools.count()


def _unique_dir(workdir: Path, prefix: str) -> Path:
    path = Path(workdir) / f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


# --- identities ------------------------------------------------------------------------


@dataclass
class ClientIdentity:
    private_key: Path  # ed25519, no passphrase
    public_key_line: str  # "ssh-ed25519 AAAA... comment"


def make_identity(workdir: Path, name: str = "vendor") -> ClientIdentity:
    """Generate ``<workdir>/<name>`` (+ ``.pub``) with ssh-keygen (overwrites)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / name
    pub = key.with_name(key.name + ".pub")
    key.unlink(missing_ok=True)
    pub.unlink(missing_ok=True)
    comment = f"{name}@sallyport-tests"
    argv = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return ClientIdentity(private_key=key, public_key_line=pub.read_text().strip())


# --- askpass ---------------------------------------------------------------------------

_ASKPASS_SOURCE = r'''
"""SSH_ASKPASS helper for sallyport tests (generated)."""
import fcntl, json, os, re, sys

state = os.environ["%(state)s"]
prompt = sys.argv[1] if len(sys.argv) > 1 else ""
answers = json.loads(os.environ.get("%(answers)s", "[]"))
password = os.environ.get("%(password)s")
with open(os.path.join(state, "lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(os.path.join(state, "prompts.jsonl"), "a", encoding="utf-8") as log:
        log.write(json.dumps(prompt) + "\n")
    if password is not None and re.search(r"password", prompt, re.IGNORECASE):
        answer = password
    else:
        counter = os.path.join(state, "counter")
        try:
            with open(counter) as fh:
                index = int(fh.read() or 0)
        except FileNotFoundError:
            index = 0
        with open(counter, "w") as fh:
            fh.write(str(index + 1))
        if index >= len(answers):
            sys.exit(1)  # no answer left: ssh treats this as a cancelled prompt
        answer = answers[index]
sys.stdout.write(answer + "\n")
'''


@dataclass
class Askpass:
    """An SSH_ASKPASS setup: merge :attr:`env` into the ssh client's environment."""

    state_dir: Path
    script: Path
    env: dict[str, str] = field(repr=False)  # contains the answers

    def prompts(self) -> list[str]:
        """Prompt texts (askpass argv[1]) shown so far, in order."""
        log = self.state_dir / "prompts.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def make_askpass(
    workdir: Path, answers: Sequence[str] | None = None, password: str | None = None
) -> Askpass:
    """Create an askpass helper in a fresh subdirectory of *workdir*.

    Prompts mentioning "password" get *password* when it is given; every other prompt
    (and password prompts when *password* is None) takes the next entry of *answers*.
    When nothing is left the helper fails, so ssh gives up instead of hanging.
    """
    state = _unique_dir(workdir, "askpass")
    script = state / "askpass.py"
    script.write_text(
        f"#!{sys.executable} -I\n"
        + _ASKPASS_SOURCE % {"state": STATE_ENV, "answers": ANSWERS_ENV, "password": PASSWORD_ENV}
    )
    script.chmod(0o700)
    env = {
        "SSH_ASKPASS": str(script),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": os.environ.get("DISPLAY", ":0"),
        STATE_ENV: str(state),
        ANSWERS_ENV: json.dumps(list(answers or [])),
    }
    if password is not None:
        env[PASSWORD_ENV] = password
    return Askpass(state_dir=state, script=script, env=env)


def client_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without agent/tmux leftovers, plus *extra*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SSH_AUTH_SOCK", "SSH_AGENT_PID", "TMUX", "TMUX_PANE"}
        and not k.startswith("SALLYPORT_TEST_ASKPASS_")
    }
    env.update(extra or {})
    return env


# --- ssh argv --------------------------------------------------------------------------


def ssh_base_args(
    *,
    port: int,
    identity: ClientIdentity | None,
    extra_opts: Sequence[str] | None = None,
    known_hosts: Path | None = None,
) -> list[str]:
    """ssh options (no program name, no destination).

    *extra_opts* are ``Key=Value`` strings, each passed as ``-o Key=Value``.  They come
    first because for ssh the first value given for an option wins, so they override
    the defaults below.  With *known_hosts* the host key is checked strictly against
    that file; otherwise host keys are accepted blindly.
    """
    args: list[str] = ["-F", "/dev/null"]
    for opt in extra_opts or []:
        args += ["-o", opt]
    if known_hosts is not None:
        args += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
    else:
        args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    args += ["-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"]
    if identity is not None:
        args += ["-o", f"IdentityFile={identity.private_key}"]
    else:
        # Otherwise ssh would fall back to ~/.ssh/id_* of whoever runs the tests.
        args += ["-o", "PubkeyAuthentication=no"]
    args += [
        "-o",
        "PreferredAuthentications=publickey,keyboard-interactive,password",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "BatchMode=no",  # BatchMode=yes would disable askpass
        "-p",
        str(port),
    ]
    return args


def ssh_argv(
    *,
    host: str,
    port: int,
    user: str,
    identity: ClientIdentity | None,
    command: Sequence[str] | str | None = None,
    extra_opts: Sequence[str] | None = None,
    extra_args: Sequence[str] | None = None,
    known_hosts: Path | None = None,
) -> list[str]:
    """Full ``ssh`` argv.

    *command* as a list is shell-quoted (``shlex.join``) so the remote side sees exactly
    those argv words; as a str it is sent verbatim and the remote shell interprets it.
    *extra_args* are raw flags (``-tt``, ``-N``, ``-L ...``, ``-v``).
    """
    argv = [
        SSH,
        *ssh_base_args(
            port=port, identity=identity, extra_opts=extra_opts, known_hosts=known_hosts
        ),
    ]
    argv += list(extra_args or [])
    argv += ["--", f"{user}@{host}"]
    if command is not None:
        argv.append(command if isinstance(command, str) else shlex.join(command))
    return argv


# --- one-shot ssh ----------------------------------------------------------------------


@dataclass
class SshResult:
    returncode: int
    stdout: bytes
    stderr: str
    prompts: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)


class SshTimeoutError(TimeoutError):
    """ssh did not finish in time (it has been killed)."""


async def run_ssh(
    workdir: Path,
    *,
    host: str,
    port: int,
    user: str,
    identity: ClientIdentity | None,
    command: Sequence[str] | str | None = None,
    answers: Sequence[str] | None = None,
    password: str | None = None,
    extra_opts: Sequence[str] | None = None,
    extra_args: Sequence[str] | None = None,
    known_hosts: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 30,
) -> SshResult:
    """Run ``/usr/bin/ssh`` without a TTY and collect its output.

    See :func:`make_askpass` for *answers*/*password*, :func:`ssh_argv` for the rest.
    *stdin* (default: empty) is fed to the remote command.
    """
    askpass = make_askpass(workdir, answers, password)
    argv = ssh_argv(
        host=host,
        port=port,
        user=user,
        identity=identity,
        command=command,
        extra_opts=extra_opts,
        extra_args=extra_args,
        known_hosts=known_hosts,
    )
    out_path = askpass.state_dir / "stdout"
    err_path = askpass.state_dir / "stderr"
    in_path = askpass.state_dir / "stdin"
    in_path.write_bytes(stdin or b"")
    # Files rather than pipes: partial output survives a timeout, and no pipe deadlocks.
    with out_path.open("wb") as out, err_path.open("wb") as err, in_path.open("rb") as inp:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=inp,
            stdout=out,
            stderr=err,
            env=client_env(askpass.env),
            start_new_session=True,  # no controlling TTY: ssh must use askpass
        )
        try:
            returncode = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise SshTimeoutError(
                f"ssh did not finish within {timeout}s and was killed: {shlex.join(argv)}\n"
                f"prompts: {askpass.prompts()!r}\n"
                f"stderr so far:\n{err_path.read_text(errors='replace')}"
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    return SshResult(
        returncode=returncode,
        stdout=out_path.read_bytes(),
        stderr=err_path.read_text(encoding="utf-8", errors="replace"),
        prompts=askpass.prompts(),
        argv=argv,
    )


# --- interactive sessions on a PTY -----------------------------------------------------


class TmuxError(RuntimeError):
    """tmux failed, or a terminal never showed what a test waited for."""


class TmuxSession:
    """Run *argv* on a PTY of a fixed size in a detached session of a private tmux server.

    *env* is merged over :func:`client_env` (pass ``make_askpass(...).env`` to answer
    prompts).  The pane stays around after the command exits (remain-on-exit) so its last
    screen and exit status can still be read.  Usable as a context manager.

    ``wait_for`` blocks; inside an async test whose gateway runs in the same event loop
    use ``await wait_for_async(...)`` instead, or the gateway would be starved.
    """

    def __init__(
        self,
        workdir: Path,
        argv: list[str],
        env: dict[str, str],
        width: int = 100,
        height: int = 30,
    ) -> None:
        self.workdir = Path(workdir)
        self.argv = list(argv)
        self.env = client_env(env)
        self.width = width
        self.height = height
        self.socket_name = f"sallyport-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.target = "main"
        self._started = False
        self._closed = False
        self._socket_path: Path | None = None
        self._status_file = self.workdir / f"{self.socket_name}.exit-status"

    # plumbing
    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [TMUX, "-L", self.socket_name, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            env=self.env,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=15,
        )
        if check and res.returncode != 0:
            raise TmuxError(f"tmux {' '.join(args[:1])} failed: {res.stderr.strip()}")
        return res

    def start(self) -> None:
        if self._started:
            raise TmuxError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # One tmux invocation: the options are in place before the server can notice the
        # command exiting.  The command is a single shell-quoted string for `sh -c`.
        self._tmux(
            "new-session", "-d", "-s", self.target,
            "-x", str(self.width), "-y", str(self.height),
            "-c", str(self.workdir),
            self._wrapped_command(),
            ";", "set-option", "-g", "remain-on-exit", "on",
            ";", "set-option", "-g", "status", "off",
            ";", "set-option", "-g", "window-size", "manual",
            ";", "set-option", "-g", "history-limit", "10000",
        )  # fmt: skip
        self._started = True
        self._socket_path = Path(self._format("#{socket_path}"))

    def _wrapped_command(self) -> str:
        """*argv* under a small sh that records its exit status in a file.

        tmux 3.3a sometimes marks the pane dead (pty EOF) without ever reaping the child,
        leaving #{pane_dead_status} empty, so the status comes from this file instead.
        """
        self._status_file.unlink(missing_ok=True)
        script = '"$@"; st=$?; echo "$st" > "$0.tmp" && mv "$0.tmp" "$0"; exit "$st"'
        return shlex.join(["/bin/sh", "-c", script, str(self._status_file), *self.argv])

    def send(self, keys: str, literal: bool = True) -> None:
        """Type *keys* (literally by default; else tmux key names such as ``C-c``)."""
        args = ["send-keys", "-t", self.target]
        if literal:
            args.append("-l")
        self._tmux(*args, "--", keys)

    def send_enter(self) -> None:
        self._tmux("send-keys", "-t", self.target, "Enter")

    def sendline(self, line: str) -> None:
        self.send(line)
        self.send_enter()

    def screen(self) -> str:
        """The visible screen (``capture-pane -p``)."""
        return self._tmux("capture-pane", "-p", "-t", self.target).stdout

    def scrollback(self) -> str:
        """Everything still in the pane's history plus the visible screen."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.target).stdout

    def _format(self, fmt: str) -> str:
        return self._tmux("display-message", "-p", "-t", self.target, fmt).stdout.strip()

    def size(self) -> tuple[int, int]:
        """(width, height) of the pane as tmux sees it."""
        w, h = self._format("#{pane_width} #{pane_height}").split()
        return int(w), int(h)

    def exit_status(self) -> int | None:
        """The command's exit status once it has exited, else None."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(self._status_file.read_text())
        return None

    def wait_exit(self, timeout: float = 15) -> int | None:
        """Poll until the command has exited; returns its exit status.

        None means the status could not be recorded (the wrapper shell was killed too,
        e.g. by a C-c sent to the pane).
        """
        deadline = time.monotonic() + timeout
        while self.is_alive():
            if time.monotonic() >= deadline:
                raise TmuxError(f"command still running after {timeout}s:\n{self.screen()}")
            time.sleep(0.05)
        return self.exit_status()

    def is_alive(self) -> bool:
        return self._format("#{pane_dead}") != "1"

    def _timeout_error(self, text: str, timeout: float) -> TmuxError:
        status = self.exit_status()
        return TmuxError(
            f"{text!r} did not appear within {timeout}s"
            + (f" (command exited with {status})" if status is not None else "")
            + f"; screen:\n{self.screen()}"
        )

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """Poll the screen until it contains *text*; returns that screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() >= deadline:
                raise self._timeout_error(text, timeout)
            time.sleep(0.05)

    async def wait_for_async(self, text: str, timeout: float = 15) -> str:
        """Like :meth:`wait_for` but yields to the event loop between polls."""
        deadline = time.monotonic() + timeout
        while True:
            screen = await asyncio.to_thread(self.screen)
            if text in screen:
                return screen
            if time.monotonic() >= deadline:
                raise self._timeout_error(text, timeout)
            await asyncio.sleep(0.05)

    def resize(self, width: int, height: int) -> None:
        """Resize the window (and PTY); ssh then sends a window-change request."""
        self._tmux("resize-window", "-t", self.target, "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    def close(self) -> None:
        """Kill the private tmux server (and with it the command). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._tmux("kill-server", check=False)
            if self._socket_path is not None:  # tmux leaves the socket file behind
                self._socket_path.unlink(missing_ok=True)

    def __enter__(self) -> TmuxSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
