"""README's demo command, from a clean checkout, then a connection as its output says."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.openssh import client_env, make_askpass

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def readme_demo_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(\./dev demo)\b", text, flags=re.MULTILINE)
    assert commands, "README.md must give the demo command"
    return shlex.split(commands[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read the demo's output until ``needle`` shows up; return everything read."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                # the instructions block follows in the same write
                time.sleep(0.5)
                seen.extend(proc.stdout.readlines())
                return "".join(seen)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.2)
    raise AssertionError(f"demo did not print {needle!r}; output:\n{''.join(seen)}")


def test_readme_demo_from_clean_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    data = tmp_path / "demo"
    ssh_port, web_port, browser_port = free_port(), free_port(), free_port()
    argv = [
        *readme_demo_command(),
        "--data",
        str(data),
        "--ssh-port",
        str(ssh_port),
        "--web-port",
        str(web_port),
        "--browser-port",
        str(browser_port),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALLYPORT_")}
    env["SALLYPORT_VENV"] = str(tmp_path / "venv")  # a fresh virtualenv, as on a new machine
    proc = subprocess.Popen(
        argv,
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = wait_for_line(proc, "sallyport demo is running", timeout=600)
        creds = json.loads((data / "demo-credentials.json").read_text())
        assert creds["ssh"] == {"host": "127.0.0.1", "port": ssh_port}
        assert creds["web"]["url"] == f"http://127.0.0.1:{web_port}"
        assert creds["browser_door"]["url"] == f"ws://127.0.0.1:{browser_port}/door"
        assert Path(creds["vendor"]["private_key"]).is_absolute()
        assert {"login", "password", "totp_secret", "private_key"} <= creds["vendor"].keys()
        assert creds["devices"][0]["name"] == "pump-12"
        assert {s["login"] for s in creds["staff"]} >= {"biomed1", "security1"}
        assert (data / "sallyport.toml").exists()

        code_cmd = re.search(r"^\s*code:\s+(.+)$", output, re.MULTILINE)
        run_cmd = re.search(r"^\s*command:\s+(.+)$", output, re.MULTILINE)
        assert code_cmd and run_cmd, output
        code = subprocess.run(
            shlex.split(code_cmd.group(1)), capture_output=True, text=True, check=True
        ).stdout.strip()
        assert re.fullmatch(r"\d{6}", code)
        askpass = make_askpass(tmp_path, [code])
        result = subprocess.run(
            shlex.split(run_cmd.group(1)),
            env=client_env(askpass.env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            start_new_session=True,
        )
        assert result.returncode == 0, result.stderr
        assert b"model:" in result.stdout and b"Infusia IP-7" in result.stdout
        assert any("Verification code" in p for p in askpass.prompts())
        assert list((data / "recordings").rglob("*.sps"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
