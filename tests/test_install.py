"""Installed like a tool: the wheel carries what ``ingestd init`` writes and prints."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, ingestd_env, run_cli

from ingestd.config.load import load_config

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


def _init(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli("init", *args, env=ingestd_env(**env))


def test_init_writes_a_commented_config_0600_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "config.yaml"
    result = _init(
        "--url", "https://valt.example.org", "--username", "lab ingest",
        "--watch", str(tmp_path / "room 1"), "--watch", "relative/room-2",
        "-c", str(target),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and str(target) in result.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    config = load_config(target)  # what `ingestd check` parses first
    assert config.valt.url.startswith("https://valt.example.org")
    assert config.valt.username == "lab ingest"
    # A relative --watch is the current folder's (the command's), not the file's.
    assert list(config.watch.paths) == [tmp_path / "room 1", REPO / "relative" / "room-2"]
    text = target.read_text()
    assert text.startswith("# ingestd configuration, written by `ingestd init`")
    assert "# Attempts per file before it is marked failed" in text  # the comments stay
    assert "valt.example.com" not in text and "/srv/capture/export\n" not in text


def test_init_goes_where_ingestd_config_points_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "from-env.yaml"
    args = ("--url", "https://valt.example.org", "--username", "u", "--watch", str(tmp_path))
    assert _init(*args, INGESTD_CONFIG=str(target)).returncode == 0
    before = target.read_bytes()
    again = _init(*args, INGESTD_CONFIG=str(target))
    assert again.returncode == 1
    [line] = again.stderr.splitlines()
    assert str(target) in line and "exists" in line
    assert target.read_bytes() == before


def test_init_without_c_or_ingestd_config_writes_etc_ingestd(tmp_path: Path) -> None:
    from ingestd.commands.main import build_parser
    from ingestd.config.credentials import config_path_from

    args = build_parser().parse_args(["init", "--url", "https://x.org", "--username", "u"])
    assert config_path_from(args.config, {}) == Path("/etc/ingestd/config.yaml")


def test_init_refuses_missing_values_and_a_bad_url_writing_nothing(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    result = _init("--url", "https://valt.example.org", "-c", str(target))
    assert result.returncode == 2 and "--username, --watch" in result.stderr
    bad_url = ("--url", "valt.example.org", "--username", "u", "--watch", "x")
    result = _init(*bad_url, "-c", str(target))
    assert result.returncode == 2 and "valt.url" in result.stderr
    assert not target.exists()


def test_init_unit_prints_the_unit_file() -> None:
    result = _init("--unit")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "systemd" / "ingestd.service").read_text()


def _make_plan(target: str) -> str:
    """What ``make TARGET`` would run in a fresh clone (-B: as if nothing were built)."""
    result = subprocess.run(
        ["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_demo_installs_only_what_running_needs() -> None:
    demo = _make_plan("demo")
    assert "pip install --quiet -e .\n" in demo and "[dev]" not in demo
    for target in ("test", "lint"):
        assert "-e '.[dev]'" in _make_plan(target), target
