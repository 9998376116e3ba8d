"""Property-based tests of configuration documents (Hypothesis).

Whatever the file holds (any text, any YAML value, the example config with any one
value replaced or any key added), ``load_config`` ends in a :class:`Config` or in a
:class:`ConfigError` whose message is one line: never another exception, which the
command line would show as a traceback instead of exit 2.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingestd.config.load import load_config
from ingestd.config.schema import Config
from ingestd.errors import ConfigError

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXAMPLE = yaml.safe_load((REPO / "config.example.yaml").read_text())

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["8MiB", "10s", "-1s", "1e400", "00:00-24:00", "{stem}", "~", "..", "\0"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _outcome(file: Path) -> Config | ConfigError:
    try:
        return load_config(file)
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "an empty message"
        assert "\n" not in message and "\r" not in message, message
        return exc


@SETTINGS
@given(text=st.text(max_size=300))
@example(text="valt: " + "{a: " * 1200 + "1" + "}" * 1200)  # deeper than Python recursion
@example(text="a: &a [1]\nb: [*a, *a]\nvalt: !!python/object:os.system {}\n")
@example(text="\ufeffvalt: {url: x}\n\x00")
def test_any_text_is_a_config_or_one_config_error(folder: Path, text: str) -> None:
    file = folder / "text.yaml"
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    _outcome(file)


@SETTINGS
@given(document=values)
def test_any_yaml_value_is_a_config_or_one_config_error(folder: Path, document: Any) -> None:
    file = folder / "value.yaml"
    file.write_text(yaml.safe_dump(document))
    _outcome(file)


def _replace(document: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = document
    for name in path[:-1]:
        node = node.setdefault(name, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[path[-1]] = value


keys_in_example = [
    [section, key] for section, body in EXAMPLE.items() for key in (body or {}) if body
]


@SETTINGS
@given(
    path=st.sampled_from(keys_in_example) | st.lists(st.text(max_size=8), min_size=1, max_size=3),
    value=values,
)
def test_the_example_with_any_one_value_changed_is_a_config_or_one_config_error(
    folder: Path, path: list[str], value: Any
) -> None:
    document = copy.deepcopy(EXAMPLE)
    # Folders the example names may not exist here; the values are what is under test.
    document["watch"]["paths"] = [str(folder / "export")]
    _replace(document, path, value)
    file = folder / "changed.yaml"
    file.write_text(yaml.safe_dump(document))
    _outcome(file)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1200 + "]" * 1200,
        "valt: &a {url: https://valt.example.com, username: u, x: *a}\n",
        "valt: " + "[" * 40 + "]" * 40 + "\n",
    ],
    ids=["deeper-than-the-parser", "anchor-inside-itself", "deep"],
)
def test_nesting_too_deep_names_the_file_and_the_limit(folder: Path, text: str) -> None:
    file = folder / "deep.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match="nested more than 32 levels deep") as raised:
        load_config(file)
    assert str(file) in str(raised.value)
