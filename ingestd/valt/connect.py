"""A Valt client for the configuration's ``valt`` section: the one place that maps it."""

from __future__ import annotations

from typing import Any

from ingestd.config.schema import ValtConfig
from ingestd.valt.client import ValtClient


def client_for(valt: ValtConfig, password: str, **extra: Any) -> ValtClient:
    """A client for ``valt`` (``extra``: ``on_contact``, ``outage_retry``)."""
    return ValtClient(
        base_url=valt.url,
        username=valt.username,
        password=password,
        timeout=valt.timeout,
        verify_tls=valt.verify_tls,
        ca_file=valt.ca_file,
        **extra,
    )
