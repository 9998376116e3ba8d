"""Content identity: a cheap fingerprint to spot copies, and the full sha256 to be sure.

The fingerprint hashes the size with the first and last few MiB, so a
renamed or copied recording is recognised without reading all of it. Only
when two fingerprints agree is the whole file hashed and compared with the
sha256 stored when the earlier copy was uploaded: a match is then certain.
Both read the very file that was judged (:func:`ingestd.disk.judged.open_judged`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ingestd.disk.judged import Judged, OpenRule, as_snapshot, open_judged

EDGE = 4 * 1024 * 1024
BLOCK = 4 * 1024 * 1024


def fingerprint(path: Path, judged: Judged, rule: OpenRule) -> str:
    """``v1:<hex>`` over the size, the first and the last ``EDGE`` bytes of the snapshot."""
    size = as_snapshot(judged).size
    digest = hashlib.sha256(str(size).encode())
    with os.fdopen(open_judged(path, judged, rule), "rb") as handle:
        digest.update(handle.read(EDGE))
        if size > EDGE:
            handle.seek(max(EDGE, size - EDGE))
            digest.update(handle.read(EDGE))
    return "v1:" + digest.hexdigest()


def full_sha256(path: Path, judged: Judged, rule: OpenRule) -> str:
    """The sha256 of the whole file that was judged at ``path``."""
    digest = hashlib.sha256()
    with os.fdopen(open_judged(path, judged, rule), "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
