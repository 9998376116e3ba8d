"""Content identity: a cheap fingerprint to spot copies, and the full sha256 to be sure.

The fingerprint hashes the size with the first and last few MiB, so a
renamed or copied recording is recognised without reading all of it. Only
when two fingerprints agree is the whole file hashed and compared with the
sha256 stored when the earlier copy was uploaded: a match is then certain.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EDGE = 4 * 1024 * 1024
BLOCK = 4 * 1024 * 1024


def fingerprint(path: Path, size: int) -> str:
    """``v1:<hex>`` over the size, the first and the last ``EDGE`` bytes."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(EDGE))
        if size > EDGE:
            handle.seek(max(EDGE, size - EDGE))
            digest.update(handle.read(EDGE))
    return "v1:" + digest.hexdigest()


def full_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
