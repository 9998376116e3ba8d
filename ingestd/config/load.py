"""Reading the configuration: ``load_config()`` (the file) and ``parse_config()`` (its data).

``load_config()`` is the only configuration function that reads files: the YAML
(refusing duplicate keys and absurd nesting) and the CA file. The section
parsers are in ``config/sections.py``; secrets are read in ``config/credentials.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from ingestd.config.ledger_section import check_shared_watch
from ingestd.config.patterns import PathFilter
from ingestd.config.schema import Config, WatchConfig
from ingestd.config.sections import SECTIONS
from ingestd.config.values import key_label, unknown_key
from ingestd.errors import ConfigError
from ingestd.units import describe

__all__ = ["MAX_DEPTH", "load_config", "parse_config"]


def _check_outside_watch(path: Path | None, key: str, watch: WatchConfig) -> None:
    """Files moved into a watched folder would be found and handled again."""
    if path is None:
        return
    # The walker prunes excluded folders, so a path below one is never seen.
    path_filter = PathFilter(watch.include, watch.exclude)
    for index, root in enumerate(watch.paths):
        inside = path == root or (
            watch.recursive
            and path.is_relative_to(root)
            and all(map(path_filter.wants_dir, path.relative_to(root).parts))
        )
        if inside:
            raise ConfigError(
                key,
                f"{path} is inside watch.paths[{index}] ({root}), so files put there would be"
                " picked up again; choose a folder outside it or one that watch.exclude names",
            )


def parse_config(data: object, base_dir: Path, source: Path | None = None) -> Config:
    """Validate parsed YAML ``data``; relative paths are taken from ``base_dir``.

    Raises ConfigError naming the dotted key of the first problem found.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "",
            "the configuration must be a mapping with sections such as valt: and watch:"
            f" (got {describe(data)})",
        )
    for name in data:
        if name not in SECTIONS:
            raise unknown_key("", name, SECTIONS)
    sections = {name: parse(data.get(name), name, base_dir) for name, parse in SECTIONS.items()}
    config = Config(**sections, source=source)
    _check_outside_watch(config.after_upload.move_to, "after_upload.move_to", config.watch)
    _check_outside_watch(config.after_upload.failed_to, "after_upload.failed_to", config.watch)
    check_shared_watch(config.ledger, config.watch)
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_label(key)}", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _read_yaml(file: Path) -> object:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{file}: no such file") from None
    except IsADirectoryError:
        raise ConfigError("", f"{file}: is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError("", f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except RecursionError:  # PyYAML parses nesting by recursion: "[[[[..." (issue 11)
        raise ConfigError("", f"{file}: YAML error: {_TOO_DEEP}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        start = exc.context_mark
        if exc.context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({_one_line(exc.context)} at line {start.line + 1})"
        raise ConfigError("", f"{file}: YAML error{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{file}: YAML error: {_one_line(str(exc))}") from None
    if _nested_deeper(data, MAX_DEPTH):
        raise ConfigError("", f"{file}: {_TOO_DEEP}")
    return data


MAX_DEPTH = 32  # the deepest real configuration is 5 levels (record.rules[0].share.users)
_TOO_DEEP = (
    f"lists and mappings nested more than {MAX_DEPTH} levels deep (or an &anchor used"
    " inside itself); a configuration needs a few levels"
)


def _nested_deeper(data: object, limit: int) -> bool:
    """Whether ``data`` nests lists and mappings past ``limit`` (or holds itself).

    Without recursion, and each node once: YAML aliases share nodes, so a "billion
    laughs" document is small here, and an anchor inside itself makes a cycle.
    """
    heights: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[object, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        if not isinstance(node, dict | list):
            continue
        children = list(node.values()) if isinstance(node, dict) else node
        key = id(node)
        if finished:
            in_progress.discard(key)
            heights[key] = 1 + max((heights.get(id(child), 0) for child in children), default=0)
            if heights[key] > limit:
                return True
        elif key in in_progress:
            return True  # a cycle: deeper than any limit
        elif key not in heights:
            in_progress.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return False


def _check_ca_file(path: Path | None, key: str) -> None:
    """The CA file must load now: once it failed every job as internal_error (issue 11)."""
    if path is None:
        return
    fix = "give the CA certificate that signed the server's, in PEM form"
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(key, f"{path} holds no certificate in PEM form; {fix}") from None
    except FileNotFoundError:
        raise ConfigError(key, f"{path}: no such file; {fix}") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path} is a folder, not a file; {fix}") from None
    except OSError as exc:
        raise ConfigError(key, f"{path}: cannot read: {exc.strerror or exc}") from None


def load_config(path: Path | str) -> Config:
    """Read and validate the YAML file at ``path``; relative paths in it start at its folder.

    Unlike :func:`parse_config`, this also loads ``valt.ca_file``, so that a missing or
    unreadable CA is a configuration error (exit 2) and not every job's failure.
    """
    file = Path(path).absolute()
    config = parse_config(_read_yaml(file), file.parent, source=file)
    _check_ca_file(config.valt.ca_file, "valt.ca_file")
    return config
