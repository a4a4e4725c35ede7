"""The browser player (asciinema-player from npm) is installed by the project's own setup
(``./dev``: ``npm ci --prefix web/assets``), at the version pinned in package.json, and
never committed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "web" / "assets"
PLAYER = ASSETS / "node_modules" / "asciinema-player"
SERVED = [
    PLAYER / "dist/bundle/asciinema-player.min.js",
    PLAYER / "dist/bundle/asciinema-player.css",
]


def pinned() -> str:
    version = json.loads((ASSETS / "package.json").read_text())["dependencies"]["asciinema-player"]
    assert re.fullmatch(r"3\.\d+\.\d+", version), f"pin an exact 3.x version, not {version!r}"
    return str(version)


def installed() -> dict[str, object]:
    manifest = PLAYER / "package.json"
    if not manifest.exists():
        pytest.fail(
            f"asciinema-player is not installed in {PLAYER.parent}: setup did not run "
            "(./dev test runs node_setup, i.e. npm ci --prefix web/assets)"
        )
    data: dict[str, object] = json.loads(manifest.read_text())
    return data


def test_the_installed_player_is_the_pinned_version() -> None:
    version = pinned()
    assert installed()["version"] == version
    lock = json.loads((ASSETS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/asciinema-player"]["version"] == version
    assert lock["packages"][""]["dependencies"]["asciinema-player"] == version


def test_the_files_to_serve_are_the_real_player() -> None:
    installed()
    script, style = (path.read_text(encoding="utf-8") for path in SERVED)
    assert "var AsciinemaPlayer=" in script and ".create=" in script
    assert "div.ap-wrapper" in style


def test_the_installed_player_is_not_committed() -> None:
    for path in SERVED:
        relative = str(path.relative_to(ROOT))
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", relative])
        assert ignored.returncode == 0, f"{relative} is not ignored by git"
