"""A fake Valt server for tests, ``ingestd demo`` and people: see design.md, "The fake Valt server".

It holds the assumed chunk rules of valt-api.md strictly and injects faults
on demand, so the client is tested against the worst a real server may do.
"""

from ingestd.fake_valt.context import LoggedRequest
from ingestd.fake_valt.directory import Template, TemplateField
from ingestd.fake_valt.faults import Faults
from ingestd.fake_valt.server import FakeValt
from ingestd.fake_valt.state import Record, Video
from ingestd.fake_valt.thread import FakeValtThread

__all__ = [
    "FakeValt",
    "FakeValtThread",
    "Faults",
    "LoggedRequest",
    "Record",
    "Template",
    "TemplateField",
    "Video",
]
