"""The browser terminal (xterm.js and its fit addon, from npm) is installed by the project's
setup (``npm ci --prefix web/assets``) at the exact versions pinned in package.json, is
what the portal serves (web.terminal.XTERM_FILES), and is never committed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from web.terminal import XTERM_FILES

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "web" / "assets"
PACKAGES = ("@xterm/xterm", "@xterm/addon-fit")


@pytest.mark.parametrize("package", PACKAGES)
def test_the_installed_package_is_the_pinned_version(package: str) -> None:
    version = json.loads((ASSETS / "package.json").read_text())["dependencies"][package]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"pin an exact version, not {version!r}"
    manifest = ASSETS / "node_modules" / package / "package.json"
    if not manifest.exists():
        pytest.fail(f"{package} is not installed: setup did not run (npm ci --prefix web/assets)")
    assert json.loads(manifest.read_text())["version"] == version
    lock = json.loads((ASSETS / "package-lock.json").read_text())
    assert lock["packages"][f"node_modules/{package}"]["version"] == version
    assert lock["packages"][""]["dependencies"][package] == version


def test_the_files_to_serve_are_the_real_terminal() -> None:
    script = XTERM_FILES["xterm.js"].read_text(encoding="utf-8")
    fit = XTERM_FILES["addon-fit.js"].read_text(encoding="utf-8")
    style = XTERM_FILES["xterm.css"].read_text(encoding="utf-8")
    assert "Terminal" in script and "FitAddon" in fit
    assert ".xterm" in style


def test_the_installed_terminal_is_not_committed() -> None:
    for path in XTERM_FILES.values():
        relative = str(path.relative_to(ROOT))
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", relative])
        assert ignored.returncode == 0, f"{relative} is not ignored by git"
