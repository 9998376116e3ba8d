"""What the configured server address means for the network: is the password sent in clear?"""

from __future__ import annotations

import ipaddress
import urllib.parse

from ingestd.config.schema import ValtConfig

__all__ = ["CLEARTEXT_DETAIL", "cleartext_password", "is_loopback"]

CLEARTEXT_DETAIL = (
    "valt.url is http:// to a host that is not this machine: the password and every"
    " recording cross the network in clear text; use https://"
)


def cleartext_password(valt: ValtConfig) -> bool:
    """Whether the password would cross the network unencrypted (issue 11, finding 5)."""
    parts = urllib.parse.urlsplit(valt.url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: localhost, 127.0.0.0/8 or ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
