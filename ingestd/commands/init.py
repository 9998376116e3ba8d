"""``ingestd init``: a commented starting configuration, or (``--unit``) the systemd unit.

Both come from the files the wheel carries (``ingestd/share/``), so an installed
tool needs no clone of the repository. The configuration is the shipped example
with the server, the account and the watch folders filled in: every other key
keeps its documented default and its comment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from importlib import resources

import yaml

from ingestd.commands.exits import EXIT_OK
from ingestd.config.credentials import config_path_from
from ingestd.config.load import parse_config
from ingestd.disk.private import make_private_folders, write_private
from ingestd.errors import IngestdError, UsageError

EXAMPLE = "config.example.yaml"
UNIT = "ingestd.service"
HEADER = "# ingestd configuration, written by `ingestd init`. Every key is explained below.\n"

# The lines of the example that init fills in; each must match once.
_URL = re.compile(r"^(  url: ).*$", re.MULTILINE)
_USERNAME = re.compile(r"^(  username: ).*$", re.MULTILINE)
_PATHS = re.compile(r"^(  paths:\n)(    - .*\n)+", re.MULTILINE)


def shipped(name: str) -> str:
    """A file the package carries (ingestd/share/)."""
    return resources.files("ingestd").joinpath("share", name).read_text(encoding="utf-8")


def _quoted(value: str) -> str:
    """A YAML scalar that reads back as ``value`` whatever it holds (a JSON string is one)."""
    return json.dumps(value, ensure_ascii=False)


def render(url: str, username: str, watch: list[str]) -> str:
    """The example configuration with these values in place of its own."""
    text = shipped(EXAMPLE)
    text = HEADER + text.split("\n", 1)[1]  # the example's "copy this file" line
    folders = "".join(f"    - {_quoted(path)}\n" for path in watch)
    for pattern, replacement in (
        (_URL, lambda m: m.group(1) + _quoted(url)),
        (_USERNAME, lambda m: m.group(1) + _quoted(username)),
        (_PATHS, lambda m: m.group(1) + folders),
    ):
        text, count = pattern.subn(replacement, text, count=1)
        if count != 1:  # the example changed shape: a bug, caught by the tests
            raise RuntimeError(f"{EXAMPLE} has no line for {pattern.pattern!r}")
    return text


def command(args: argparse.Namespace) -> int:
    if args.unit:
        sys.stdout.write(shipped(UNIT))
        return EXIT_OK
    missing = [f"--{name}" for name in ("url", "username", "watch") if not getattr(args, name)]
    if missing:
        raise UsageError(f"init needs {', '.join(missing)} (or --unit)")
    target = config_path_from(args.config, os.environ)
    if os.path.lexists(target):
        raise IngestdError(f"{target} exists already; init never overwrites (edit it instead)")
    # Relative folders mean the current folder's, not the config file's (as the YAML would).
    watch = [os.path.abspath(path) for path in args.watch]
    text = render(args.url, args.username, watch)
    # What every command will load: a bad --url is refused before anything is written.
    parse_config(yaml.safe_load(text), target.parent.absolute(), target)
    make_private_folders(target.parent)
    try:
        write_private(target, text)
    except OSError as exc:
        raise IngestdError(f"cannot write {target}: {exc.strerror}") from None
    print(f"wrote {target} (mode 0600); check it with: ingestd check -c {target}")
    return EXIT_OK
