"""Installed like a tool: the wheel carries what ``ingestd init`` writes and prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

# Inside the wheel, and where each comes from in the repository.
SHIPPED = {
    "ingestd/share/config.example.yaml": REPO / "config.example.yaml",
    "ingestd/share/ingestd.service": REPO / "systemd" / "ingestd.service",
}


@pytest.mark.slow
def test_the_wheel_carries_the_example_config_and_the_unit(tmp_path: Path) -> None:
    # Built from a copy, so that the build's own folders never land in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "config.example.yaml"):
        shutil.copy(REPO / name, source / name)
    for name in ("ingestd", "systemd"):
        shutil.copytree(
            REPO / name,
            source / name,
            symlinks=True,  # as a clone has them: ingestd/share/ links to the top level
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    wheels = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = wheels.glob("ingestd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for inside, original in SHIPPED.items():
            assert archive.read(inside) == original.read_bytes(), inside
