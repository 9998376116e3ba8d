"""Property-based tests (Hypothesis): whatever bytes the disk holds, the sidecar parser, the
MP4 box walker and the scan of file names end in a defined outcome, never an unhandled
exception (issue 11)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import tempfile
from pathlib import Path

import yaml
from conftest import write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.config.load import load_config
from ingestd.errors import SidecarError
from ingestd.intake import watcher
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.mp4 import BoxVerdict, walk_boxes
from ingestd.intake.sidecar import Sidecar, read_sidecar
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger

QUICK = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# JSON-like values, nested, with the keys a sidecar may have among others.
_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_keys = st.sampled_from(["name", "template", "share", "users", "groups", "1", "x"]) | st.text(
    max_size=8
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


def _outcome(path: Path) -> Sidecar | SidecarError:
    try:
        return read_sidecar(path)
    except SidecarError as error:
        assert error.file == path.name
        assert "\n" not in str(error)
        return error


@QUICK
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".json", ".yaml", ".YML"]))
def test_any_bytes_make_a_sidecar_or_a_sidecar_error(raw: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip{suffix}"
        path.write_bytes(raw)
        _outcome(path)


@settings(max_examples=80, deadline=None)
@given(value=_values, as_yaml=st.booleans(), depth=st.integers(0, 150))
def test_any_document_makes_a_sidecar_or_a_sidecar_error(
    value: object, as_yaml: bool, depth: int
) -> None:
    text = yaml.safe_dump(value) if as_yaml else json.dumps(value)
    text = "[" * depth + text + "]" * depth  # nesting as deep as an attacker likes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("clip.yaml" if as_yaml else "clip.json")
        path.write_text(text)
        outcome = _outcome(path)
        if isinstance(outcome, Sidecar):
            assert depth == 0 and isinstance(value, dict)


# Box headers: plausible types and sizes (tiny, zero, 1 = 64-bit, huge), or garbage.
_box = st.tuples(
    st.sampled_from([b"ftyp", b"moov", b"mdat", b"moof", b"free", b"\x00\x01ab"]),
    st.sampled_from([0, 1, 7, 8, 9, 16, 24, 2**32 - 1]) | st.integers(0, 64),
    st.binary(max_size=24),
)


@QUICK
@given(boxes=st.lists(_box, max_size=30), tail=st.binary(max_size=20), cut=st.integers(0, 50))
def test_any_box_sequence_gets_a_verdict(
    boxes: list[tuple[bytes, int, bytes]], tail: bytes, cut: int
) -> None:
    data = b"".join(struct.pack(">I4s", size, kind) + body for kind, size, body in boxes) + tail
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        # The settled size may be the file's, or more (it was cut), or less (it grew).
        for size in (len(data), len(data) + cut, max(0, len(data) - cut)):
            verdict = walk_boxes(handle.fileno(), size, max_boxes=20)
            assert isinstance(verdict, BoxVerdict)
            assert verdict.complete in (True, False, None)
            assert len(verdict.boxes) <= 21


_names = st.binary(min_size=1, max_size=60).filter(
    lambda name: b"/" not in name and b"\x00" not in name and name not in (b".", b"..")
)


@settings(max_examples=25, deadline=None)
@given(names=st.lists(_names, min_size=1, max_size=6, unique=True))
def test_file_names_of_any_bytes_become_jobs_or_warnings(names: list[bytes]) -> None:
    """A name of any bytes is either a job (valid UTF-8, included) or left alone (not
    UTF-8: warned about once; or not included): a scan never raises."""
    asyncio.run(_scan_names([name + b".mkv" for name in names]))


async def _scan_names(names: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "export").mkdir()
        config = load_config(write_config(base, "http://127.0.0.1:9", watch={"exclude": []}))
        ledger = await SqliteLedger.open(config.ledger.path)
        try:
            intake = watcher.Intake(
                watch=config.watch,
                sidecars=config.record.sidecar,
                ledger=ledger,
                checks=FinishedChecks(
                    check_open_writers=False, check_container=False, done_marker=None
                ),
                is_active=lambda _job: False,
                on_ready=lambda: None,
            )
            export = os.fsencode(base / "export")
            for name in names:
                with open(os.path.join(export, name), "wb") as handle:
                    handle.write(b"x")
            await intake.scan("startup")
            await intake.settle()
            jobs = {job.path for job in await ledger.jobs_in(list(State))}
            for name in names:
                try:
                    text = name.decode("utf-8")
                except UnicodeDecodeError:
                    assert (
                        Path(os.fsdecode(os.path.join(export, name))) in intake.scanner._bad_names
                    )
                    continue
                assert str(base / "export" / text) in jobs
        finally:
            await ledger.close()
