"""A simulated infusion pump "service console" reachable over SSH.

Used by ``sallyport demo`` and by tests as the device behind the broker. It accepts exactly
one username/password pair, denies everything else (public keys, port forwarding, SFTP,
X11, agent forwarding), and offers a tiny command set either as a single command
(``ssh dev uname -a``) or as an interactive shell. With a PTY the shell does its own
echo and line editing (backspace, Ctrl-C, Ctrl-D) and writes ``\\r\\n`` line endings;
without one it reads plain lines and writes ``\\n``. All I/O is bytes, decoded as UTF-8
with replacement, so arbitrary input cannot crash it.
"""

from __future__ import annotations

import functools
import hmac
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import asyncssh

_MAX_LINE = 1024
_KERNEL = "5.10.0-infusia"
_ARCH = "armv7l"
_HELP = "commands: help status alarms version uname [-a] echo ARGS reboot exit logout"


@dataclass(frozen=True)
class FakeDeviceInfo:
    """Identity of the simulated device, shown by ``status``, ``version`` and ``uname``."""

    name: str
    model: str
    firmware: str
    serial: str


def _load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the host key at ``path``, creating an ed25519 key (mode 0600) if missing."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        try:
            # O_EXCL + 0600: never readable by others; a concurrent creator wins cleanly.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key())
            return key
    return asyncssh.read_private_key(path)


def host_public_key_line(host_key_path: Path) -> str:
    """Return the OpenSSH public key line ("ssh-ed25519 AAAA...") for pinning."""
    key = _load_or_create_host_key(host_key_path)
    algo, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{algo} {blob}"


def _run_command(info: FakeDeviceInfo, line: str) -> tuple[list[str], int]:
    """Run one console command; return (output lines, exit status)."""
    try:
        argv = shlex.split(line)
    except ValueError:
        argv = line.split()
    if not argv:
        return [], 0
    cmd, args = argv[0], argv[1:]
    if cmd == "echo":
        return [" ".join(args)], 0
    if cmd == "uname":
        fields = {"-s": "Linux", "-n": info.name, "-r": _KERNEL, "-m": _ARCH}
        if args == ["-a"]:
            return [f"Linux {info.name} {_KERNEL} #1 SMP {_ARCH} GNU/Linux"], 0
        if all(a in fields for a in args):
            return [" ".join(fields[a] for a in args) if args else "Linux"], 0
        return [f"uname: invalid option '{args[0]}'"], 1
    if cmd == "help":
        return [_HELP], 0
    if cmd == "status":
        return [
            f"model:     {info.model}",
            f"firmware:  {info.firmware}",
            f"serial:    {info.serial}",
            "channel A: RUNNING  rate 12.5 mL/h  volume remaining 187.5 mL",
            "channel B: IDLE",
            "battery:   87% (on AC power)",
        ], 0
    if cmd == "alarms":
        return [
            "2024-05-02T08:14:03Z  W112  channel B occlusion detected",
            "2024-05-02T08:15:41Z  I020  channel B occlusion cleared",
            "2024-05-03T22:02:10Z  W301  battery below 20% (on battery power)",
        ], 0
    if cmd == "version":
        return [f"{info.model} firmware {info.firmware}"], 0
    if cmd == "reboot":
        return ["reboot scheduled (simulated)"], 0
    if cmd in ("exit", "logout"):
        return [], 0
    return [f"{cmd}: command not found"], 127


class _Console:
    """One SSH session: single command or interactive shell."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], info: FakeDeviceInfo) -> None:
        self._process = process
        self._info = info
        self._pty = process.get_terminal_type() is not None
        self._eol = "\r\n" if self._pty else "\n"

    def _write(self, text: str) -> None:
        self._process.stdout.write(text.encode("utf-8", "replace"))

    def _prompt(self) -> None:
        self._write(f"{self._info.name}> ")

    def _execute(self, raw: bytes) -> bool:
        """Run one line; return False when the shell should end."""
        line = raw[:_MAX_LINE].decode("utf-8", "replace").strip()
        lines, _status = _run_command(self._info, line)
        for out in lines:
            self._write(out + self._eol)
        if line.split()[:1] in (["exit"], ["logout"]):
            return False
        self._prompt()
        return True

    async def run(self) -> None:
        process = self._process
        try:
            if process.subsystem is not None:
                process.stderr.write(f"subsystem {process.subsystem!r} not available\n".encode())
                process.exit(1)
            elif process.command is not None:
                lines, status = _run_command(self._info, process.command)
                self._write("".join(f"{out}\n" for out in lines))
                process.exit(status)
            else:
                self._write(f"{self._info.model} service console ({self._info.name})")
                self._write(f"{self._eol}type 'help' for commands{self._eol}")
                self._prompt()
                await (self._pty_shell() if self._pty else self._plain_shell())
                process.exit(0)
        except (BrokenPipeError, ConnectionError):
            process.close()  # client went away mid-write

    async def _read(self) -> bytes | None:
        """Read a chunk; b"" means EOF, None means an out-of-band break (Ctrl-C)."""
        while True:
            try:
                return await self._process.stdin.read(4096)
            except asyncssh.BreakReceived:
                return None
            except (asyncssh.TerminalSizeChanged, asyncssh.SignalReceived):
                continue  # window changes and signals are ignored

    async def _plain_shell(self) -> None:
        pending = b""
        while (chunk := await self._read()) != b"":
            pending += chunk or b""  # a break (None) has no meaning without a terminal
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                if not self._execute(raw):
                    return
            pending = pending[:_MAX_LINE]

    async def _pty_shell(self) -> None:
        buf = bytearray()
        last_cr = False
        esc = 0  # 0: normal, 1: after ESC, 2: inside a CSI/SS3 sequence
        while (chunk := await self._read()) != b"":
            if chunk is None:
                chunk = b"\x03"
            for byte in chunk:
                was_cr, last_cr = last_cr, byte == 0x0D
                if esc == 1:
                    esc = 2 if byte in b"[O" else 0
                elif esc == 2:
                    esc = 2 if not 0x40 <= byte <= 0x7E else 0
                elif byte == 0x1B:
                    esc = 1  # arrow keys etc.: swallow the escape sequence
                elif byte in b"\r\n":
                    if byte == 0x0A and was_cr:
                        continue  # CR LF from the client counts as one line end
                    self._write("\r\n")
                    line, buf = bytes(buf), bytearray()
                    if not self._execute(line):
                        return
                elif byte == 0x03:  # Ctrl-C: abandon the line
                    buf.clear()
                    self._write("^C\r\n")
                    self._prompt()
                elif byte == 0x04:  # Ctrl-D: end session on an empty line
                    if not buf:
                        self._write("\r\n")
                        return
                elif byte in (0x7F, 0x08):
                    if buf:
                        while buf and 0x80 <= buf[-1] <= 0xBF and len(buf) > 1:
                            buf.pop()  # drop UTF-8 continuation bytes
                        buf.pop()
                        self._write("\b \b")
                elif byte >= 0x20 and len(buf) < _MAX_LINE:
                    buf.append(byte)
                    self._process.stdout.write(bytes([byte]))


class _DeviceServer(asyncssh.SSHServer):
    """Password-only auth for one account; forwarding refused (other methods deny by default)."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()

    def begin_auth(self, username: str) -> bool:
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.encode(), self._username)
        pass_ok = hmac.compare_digest(password.encode(), self._password)
        return user_ok and pass_ok

    def public_key_auth_supported(self) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False


async def start_fake_device(
    info: FakeDeviceInfo,
    host: str,
    port: int,
    host_key_path: Path,
    username: str,
    password: str,
) -> asyncssh.SSHAcceptor:
    """Start the fake device listening on host:port (0 picks a port: see get_port())."""
    host_key = _load_or_create_host_key(host_key_path)
    return await asyncssh.create_server(
        functools.partial(_DeviceServer, username, password),
        host,
        port,
        server_host_keys=[host_key],
        process_factory=lambda process: _Console(process, info).run(),
        encoding=None,
        line_editor=False,
        password_auth=True,
        public_key_auth=False,
        kbdint_auth=False,
        host_based_auth=False,
        gss_host=None,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        sftp_factory=None,
    )
