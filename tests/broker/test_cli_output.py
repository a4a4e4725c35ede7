"""What people read from `sallyport`: the product in --help, and no Python warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SALLYPORT = Path(sys.executable).with_name("sallyport")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SALLYPORT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_help_describes_the_product_without_warnings() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "vendors" in result.stdout and "recorded" in result.stdout
    assert "composition root" not in result.stdout
    assert result.stderr == ""


@pytest.mark.integration
def test_a_real_command_prints_no_warnings(tmp_path: Path) -> None:
    config = tmp_path / "sallyport.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    result = run("migrate", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "warn" not in result.stderr.lower()
