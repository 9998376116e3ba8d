"""Test helpers that need no pytest: the bench (bench/procs.py) uses them too."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

USERNAME = "ingest"


class WaitTimeout(AssertionError, TimeoutError):
    """A condition not met in time: a failed test, and a timeout to the bench."""


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30, what: str = "", interval: float = 0.05
) -> Any:
    """Poll until ``predicate()`` is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{what or 'condition'} not met within {timeout:.0f} s")
        time.sleep(interval)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, mapping by mapping."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_yaml(path: Path, base: dict[str, Any], sections: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(merge(base, sections)))
    return path


def write_config(tmp_path: Path, url: str, **sections: dict[str, Any]) -> Path:
    """A config file for tests: fast settle and backoff, small chunks, JSON logs."""
    base: dict[str, Any] = {
        "valt": {"url": url, "username": USERNAME, "timeout": "5s"},
        "watch": {
            "paths": [str(tmp_path / "export")],
            "settle": "0.1s",
            "rescan_interval": "2s",
            # Test files are random bytes; tests of the MP4 check switch it on.
            "check_container": False,
        },
        "upload": {
            "workers": 2,
            "chunk_size": "256KiB",
            "backoff_initial": "0.05s",
            "backoff_max": "0.5s",
        },
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "log": {"format": "json", "level": "info"},
        "status": {"listen": None},
    }
    return write_yaml(tmp_path / "config.yaml", base, sections)


# Keys for test certificates: small and fast (openssl CLI: the venv has no ``cryptography``).
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_test_ca(folder: Path, server_cn: str) -> None:
    """``ca.key``/``ca.pem``, a CA valid for 2 days, and ``server.key``/``server.csr``, a
    request for ``server_cn`` that the caller signs with the extensions it wants."""
    openssl(
        "req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=ingestd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "req", *EC_KEY, "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={server_cn}",
        cwd=folder,
    )  # fmt: skip
