"""Run a real Debian OpenSSH server (``/usr/sbin/sshd``) as a stand-in hospital device.

The integration tests need a genuine SSH "device" behind the gateway.  :func:`run_sshd`
starts a private ``sshd -D -e`` instance (as root) on a free loopback port with its own
config, ed25519 host key, pid file, ``authorized_keys`` file and log, all inside the
caller's *workdir*, and tears it down (including per-connection children) on exit.

Several instances may run at once (also from parallel pytest processes), provided each
gets its own *workdir*.  The Linux account is shared system state, so live instances that
share a *username* share its password too (see :func:`run_sshd`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
_USER_LOCK_FILE = Path("/run/sallyport-tests-users.lock")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
BIND_ATTEMPTS = 5


class SshdError(RuntimeError):
    """sshd failed its config check or did not come up."""


@dataclass
class SshdDevice:
    """A running sshd instance and the account that may log in to it."""

    host: str
    port: int
    host_public_key: str  # "ssh-ed25519 AAAA..." (no comment) for host-key pinning
    username: str
    password: str = field(repr=False)  # secret: tests check it never leaks
    authorized_keys: Path  # AuthorizedKeysFile for this instance
    log_path: Path  # sshd's stderr (-e, LogLevel VERBOSE)
    workdir: Path
    pid: int

    def add_authorized_key(self, public_key_line: str) -> None:
        """Append an OpenSSH public key line to this instance's authorized_keys."""
        line = public_key_line.strip()
        if not line or "\n" in line:
            raise ValueError("expected exactly one public key line")
        with self.authorized_keys.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def known_hosts_line(self) -> str:
        """A known_hosts entry pinning this instance's host key."""
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


# --- bookkeeping -----------------------------------------------------------------------

_registry_lock = threading.Lock()
_active_workdirs: set[Path] = set()

# Cross-process user leases: /run/sallyport-tests-users/<username>.json holds the running
# password and the (pid, token) of every live instance using the account.  It lives in
# /run (root-only, 0600), not in test workdirs that leak checks scan.
_LEASE_DIR = Path("/run/sallyport-tests-users")


@contextlib.contextmanager
def _system_lock() -> Iterator[None]:
    """Serialise account changes across threads and processes (e.g. pytest-xdist)."""
    with _registry_lock, _USER_LOCK_FILE.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _alive(pid)


def _lease_file(username: str) -> Path:
    return _LEASE_DIR / f"{username}.json"


def _read_lease(username: str) -> tuple[str | None, list[list[object]]]:
    try:
        data = json.loads(_lease_file(username).read_text())
    except (FileNotFoundError, ValueError):
        return None, []
    holders = [h for h in data.get("holders", []) if _pid_alive(int(h[0]))]
    return (data.get("password") if holders else None), holders


def _write_lease(username: str, password: str, holders: list[list[object]]) -> None:
    _LEASE_DIR.mkdir(mode=0o700, exist_ok=True)
    path = _lease_file(username)
    if not holders:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"password": password, "holders": holders}, fh)
    tmp.replace(path)


def _acquire_user(username: str, password: str | None) -> tuple[str, str]:
    """Ensure the account exists with a password shared by all live instances.

    Returns (password, lease token).  The first live instance sets the password (random
    unless given); later ones reuse it, and asking for a different one is an error.
    """
    token = secrets.token_hex(8)
    with _system_lock():
        current, holders = _read_lease(username)
        if current is not None:
            if password is not None and password != current:
                raise ValueError(
                    f"user {username!r} is in use by another running sshd with a different "
                    "password; use a different username"
                )
            chosen = current
        else:
            chosen = password if password is not None else secrets.token_urlsafe(24)
            _ensure_user_locked(username, chosen)
        holders.append([os.getpid(), token])
        _write_lease(username, chosen, holders)
    return chosen, token


def _release_user(username: str, token: str) -> None:
    with _system_lock():
        current, holders = _read_lease(username)
        holders = [h for h in holders if h[1] != token]
        _write_lease(username, current or "", holders)


# --- system helpers --------------------------------------------------------------------


def _user_exists(username: str) -> bool:
    res = subprocess.run(["getent", "passwd", username], capture_output=True, check=False)
    return res.returncode == 0


def _ensure_user_locked(username: str, password: str) -> None:
    """Create the Linux account if missing and set its password (via stdin, never argv)."""
    if os.geteuid() != 0:
        raise SshdError("run_sshd needs root (useradd/chpasswd and sshd privilege separation)")
    if not _user_exists(username):
        res = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", username],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 and not _user_exists(username):
            raise SshdError(f"useradd {username} failed: {res.stderr.strip()}")
    res = subprocess.run(
        ["chpasswd"],
        input=f"{username}:{password}\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        # chpasswd's stderr names the user, not the password.
        raise SshdError(f"chpasswd for {username} failed: {res.stderr.strip()}")


def _ensure_privsep_dir() -> None:
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(PRIVSEP_DIR, 0, 0)
    PRIVSEP_DIR.chmod(0o755)


def _grant_traverse(path: Path) -> None:
    """Add o+x (search only, not listing) to *path* and its ancestors.

    sshd opens AuthorizedKeysFile with the *target user's* uid, so the unprivileged device
    account must be able to traverse to it; pytest's tmp_path parents are mode 0700.
    (pytest re-tightens /tmp/pytest-of-<user> at each session start, hence the root-run
    AuthorizedKeysCommand fallback in the config.)
    """
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            p.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def free_port(host: str = "127.0.0.1") -> int:
    """A currently unused TCP port (bind to port 0, then release it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _generate_host_key(workdir: Path) -> tuple[Path, str]:
    key = workdir / "ssh_host_ed25519_key"
    for p in (key, key.with_name(key.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    fields = key.with_name(key.name + ".pub").read_text().split()
    return key, f"{fields[0]} {fields[1]}"


def _render_config(
    *, host: str, port: int, host_key: Path, pid_file: Path, authorized_keys: Path, username: str
) -> str:
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {host}",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            "UsePAM no",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {authorized_keys}",
            # Fallback read as root: a concurrent pytest process strips the o+x that
            # _grant_traverse adds to /tmp/pytest-of-root, and then the file above
            # is unreadable for the device user.
            f'AuthorizedKeysCommand /usr/bin/cat "{authorized_keys}"',
            "AuthorizedKeysCommandUser root",
            "StrictModes no",
            "PermitRootLogin no",
            f"AllowUsers {username}",
            "Subsystem sftp internal-sftp",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "",
        ]
    )


def _check_config(config: Path) -> None:
    res = subprocess.run(
        [SSHD, "-t", "-f", str(config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode != 0:
        raise SshdError(
            f"sshd -t rejected {config} (exit {res.returncode}):\n{res.stderr.strip()}\n"
            f"--- config ---\n{config.read_text()}"
        )


# --- process management ----------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of *pid*, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st is not None:
            children.setdefault(st[1], []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _session_processes(host: str, port: int) -> list[int]:
    """Processes started by sessions of the sshd on host:port.

    Remote commands that ignore a closed connection (``sleep 60`` after the client was
    killed) are orphaned and reparented away from sshd, but keep SSH_CONNECTION in their
    environment: "client_ip client_port server_ip server_port".
    """
    suffix = f" {host} {port}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(b"SSH_CONNECTION=") and var.endswith(suffix):
                found.append(int(entry))
                break
    return found


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop(proc: subprocess.Popen[bytes], host: str, port: int) -> None:
    """SIGTERM sshd, its per-connection children (they setsid(), so no killpg) and orphaned
    session processes, then SIGKILL whatever is left."""
    running = proc.poll() is None
    victims = [proc.pid, *_descendants(proc.pid)] if running else []
    victims += [p for p in _session_processes(host, port) if p not in victims]
    _signal_all(victims, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)
    while time.monotonic() < deadline and any(_alive(p) for p in victims if p != proc.pid):
        time.sleep(0.05)
    stragglers = [p for p in victims if p != proc.pid and _alive(p)]
    stragglers += [p for p in _session_processes(host, port) if p not in stragglers]
    if proc.poll() is None:
        stragglers.append(proc.pid)
    _signal_all(stragglers, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)


def _read_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=2) as s:
        data = b""
        while b"\n" not in data and len(data) < 512:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        return data


def _wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, log_path: Path) -> str:
    """Wait until sshd listens and speaks SSH.

    Returns "ok", or "bind" if sshd lost the port race (caller retries with another port).
    """
    listening = f"Server listening on {host} port {port}."
    deadline = time.monotonic() + START_TIMEOUT
    last_error = "no 'Server listening' line in the log yet"
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if proc.poll() is not None:
            if "Address already in use" in log or "Bind to port" in log:
                return "bind"
            raise SshdError(f"sshd exited with {proc.returncode} during startup:\n{log}")
        # Only probe once sshd says it bound the port, so we never mistake another
        # process that grabbed the port for our sshd.
        if listening in log:
            try:
                banner = _read_banner(host, port)
            except OSError as exc:
                last_error = f"probe failed: {exc!r}"
            else:
                if banner.startswith(b"SSH-2.0"):
                    return "ok"
                last_error = f"unexpected banner {banner!r}"
        time.sleep(0.05)
    raise SshdError(
        f"sshd on {host}:{port} not ready after {START_TIMEOUT}s ({last_error}):\n"
        f"{log_path.read_text(errors='replace')}"
    )


@contextlib.contextmanager
def run_sshd(
    workdir: Path,
    *,
    username: str = "spdevice",
    password: str | None = None,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> Iterator[SshdDevice]:
    """Run ``sshd -D -e`` on a free port of *host* until the block exits.

    With *netns*, sshd runs inside that network namespace (``ip netns exec``) on port 22
    of *host*, an address of the namespace that the caller has routed to.

    *password* defaults to a random strong one.  The Linux account is global: while any
    other instance (in any process) uses the same *username*, its password is reused and
    asking for a different explicit one raises ValueError.  Use distinct usernames for
    devices that need distinct passwords.
    """
    workdir = Path(workdir).resolve()
    if any(c in str(workdir) for c in ' \t"%'):
        raise ValueError(f"workdir must not contain whitespace, quotes or '%': {workdir}")
    with _registry_lock:
        if workdir in _active_workdirs:
            raise ValueError(f"an sshd is already running in {workdir}; use another workdir")
        _active_workdirs.add(workdir)
    try:
        password, token = _acquire_user(username, password)
        try:
            with _run(
                workdir, username=username, password=password, host=host, netns=netns
            ) as device:
                yield device
        finally:
            _release_user(username, token)
    finally:
        with _registry_lock:
            _active_workdirs.discard(workdir)


@contextlib.contextmanager
def _run(
    workdir: Path, *, username: str, password: str, host: str, netns: str | None = None
) -> Iterator[SshdDevice]:
    workdir.mkdir(parents=True, exist_ok=True)
    _ensure_privsep_dir()
    _grant_traverse(workdir)

    host_key, host_public_key = _generate_host_key(workdir)
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.touch()
    authorized_keys.chmod(0o644)  # read by sshd with the device user's uid
    config = workdir / "sshd_config"
    pid_file = workdir / "sshd.pid"
    log_path = workdir / "sshd.log"

    for _attempt in range(BIND_ATTEMPTS):
        port = 22 if netns else free_port(host)
        config.write_text(
            _render_config(
                host=host,
                port=port,
                host_key=host_key,
                pid_file=pid_file,
                authorized_keys=authorized_keys,
                username=username,
            )
        )
        _check_config(config)
        with log_path.open("wb") as log:
            prefix = ["ip", "netns", "exec", netns] if netns else []
            proc = subprocess.Popen(
                [*prefix, SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            state = _wait_ready(proc, host, port, log_path)
        except BaseException:
            _stop(proc, host, port)
            raise
        if state == "ok":
            break
        _stop(proc, host, port)
    else:
        raise SshdError(f"sshd could not bind a free port after {BIND_ATTEMPTS} attempts")

    device = SshdDevice(
        host=host,
        port=port,
        host_public_key=host_public_key,
        username=username,
        password=password,
        authorized_keys=authorized_keys,
        log_path=log_path,
        workdir=workdir,
        pid=proc.pid,
    )
    try:
        yield device
    finally:
        _stop(proc, host, port)
