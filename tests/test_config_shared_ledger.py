"""The configuration of a ledger shared by several daemons: ledger.url, password_file, node and
lease, the rules they put on ledger.path and watch.paths, the ledger's password, and what
``ingestd check`` says about it. Real YAML files through the real loader and command line."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO, ingestd_env, run_cli, write_config

from ingestd.config.credentials import ledger_password
from ingestd.config.load import load_config
from ingestd.config.schema import Config, LedgerConfig
from ingestd.errors import ConfigError
from ingestd.fake_valt import FakeValtThread

SECRET = "Xq7-pg-S3CRET"
URL = "postgresql://ingestd@db.example.org/ingestd"
NAMED = "    - {path: /mnt/export, name: export}\n"
OPEN_WRITERS = (
    "warn  the open-writer check sees only this host's processes: writers on other hosts"
    " are caught by the settle time, the container check and marker files"
)
NO_PASSWORD = (
    "ledger.url: must not carry a password (value not shown); put it in ledger.password_file,"
    " the systemd credential ledger-password, or libpq's PGPASSFILE"
)


def write(
    tmp_path: Path, ledger: str, paths: str = NAMED, valt: str = "https://valt.example.com"
) -> Path:
    """A config file whose ledger: section is ``ledger`` (YAML lines, unindented)."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"valt:\n  url: {valt}\n  username: ingest\n"
        f"watch:\n  paths:\n{paths}"
        "status:\n  listen: null\n"
        + ("ledger:\n" + textwrap.indent(ledger, "  ") if ledger else "")
    )
    return path


def load(tmp_path: Path, ledger: str, paths: str = NAMED) -> Config:
    return load_config(write(tmp_path, ledger, paths))


def load_error(tmp_path: Path, ledger: str, paths: str = NAMED) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, ledger, paths)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(caught.value.key + ": "), message
    return caught.value


# --------------------------------------------------------------------------- the keys


def test_a_sqlite_config_gets_the_defaults_of_the_new_keys(tmp_path: Path) -> None:
    ledger = load(tmp_path, "path: state/ledger.db\n", "    - /srv/capture/export\n").ledger
    assert ledger.path == tmp_path / "state" / "ledger.db"
    assert (ledger.url, ledger.password_file, ledger.lease) == (None, None, 60.0)
    assert ledger.node == socket.gethostname()
    assert ledger.shared is False
    assert load(tmp_path, "").ledger == LedgerConfig() == LedgerConfig(node=socket.gethostname())


def test_a_shared_ledger_takes_url_password_file_node_and_lease(tmp_path: Path) -> None:
    url = f"{URL}?sslmode=verify-full&application_name={SECRET}"
    config = load(
        tmp_path,
        f"url: {url}\npassword_file: secrets/pg\nnode: capture-3.site_b\nlease: 2m\n",
    )
    ledger = config.ledger
    assert ledger.shared is True
    assert ledger.url == url
    assert ledger.password_file == tmp_path / "secrets" / "pg"  # from the config's folder
    assert (ledger.node, ledger.lease) == ("capture-3.site_b", 120.0)
    assert ledger.path == LedgerConfig().path  # there, unused: the ledger is the URL's
    assert config.watch.names == ("export",)
    # The URL's query string may hold connection details: never in a repr.
    assert SECRET not in repr(config) and SECRET not in str(ledger)


def test_node_null_is_the_host_name(tmp_path: Path) -> None:
    assert load(tmp_path, f"url: {URL}\nnode: null\n").ledger.node == socket.gethostname()


@pytest.mark.parametrize("node", ["a", "x" * 64, "Capture-3", "10.0.0.7", "room_3"])
def test_node_names_that_are_taken(tmp_path: Path, node: str) -> None:
    assert load(tmp_path, f"url: {URL}\nnode: '{node}'\n").ledger.node == node


@pytest.mark.parametrize(
    ("node", "shown"),
    [
        ("''", '""'),
        ("'two words'", '"two words"'),
        ("x" * 65, '"' + "x" * 65 + '"'),
        ("café", '"café"'),
        ("room/3", '"room/3"'),
        ("12", "12"),
        ("[a]", "a list"),
    ],
)
def test_a_bad_node_name_is_one_line_naming_ledger_node(
    tmp_path: Path, node: str, shown: str
) -> None:
    error = load_error(tmp_path, f"url: {URL}\nnode: {node}\n")
    assert str(error) == (
        f"ledger.node: must be 1 to 64 letters, digits, '.', '_' or '-' (got {shown})"
    )


def test_a_host_name_that_is_no_node_name_asks_for_ledger_node(tmp_path: Path) -> None:
    """In a UTS namespace of its own the host name can be anything the kernel takes."""
    config = write(tmp_path, f"url: {URL}\n")
    (tmp_path / "sqlite").mkdir()
    sqlite = write(tmp_path / "sqlite", "", "    - /srv/a\n")
    code = (
        "import socket, sys\n"
        "from ingestd.config.load import load_config\n"
        "from ingestd.errors import ConfigError\n"
        "socket.sethostname('capture 3!')\n"
        "print(load_config(sys.argv[2]).ledger.node)\n"  # SQLite: the host name, unchecked
        "try:\n"
        "    load_config(sys.argv[1])\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        ["unshare", "--uts", sys.executable, "-c", code, str(config), str(sqlite)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "capture 3!",
        'ledger.node: is not set, and the host name "capture 3!" is not a valid node name'
        " (1 to 64 letters, digits, '.', '_' or '-'); set ledger.node",
    ]


@pytest.mark.parametrize(("lease", "seconds"), [("5s", 5.0), ("1h", 3600.0), (30, 30.0)])
def test_lease_from_5s_to_1h(tmp_path: Path, lease: object, seconds: float) -> None:
    assert load(tmp_path, f"url: {URL}\nlease: {lease}\n").ledger.lease == seconds


@pytest.mark.parametrize(("lease", "shown"), [("4s", '"4s"'), ("61m", '"61m"'), ("0", "0")])
def test_a_lease_out_of_range_is_one_line_naming_ledger_lease(
    tmp_path: Path, lease: str, shown: str
) -> None:
    error = load_error(tmp_path, f"url: {URL}\nlease: {lease}\n")
    assert str(error) == (
        f"ledger.lease: must be from 5 s to 1 h (got {shown}): shorter, and one slow database"
        " answer loses a claim; longer, and a stopped node's jobs wait that long"
    )


def test_a_lease_that_is_no_duration_names_ledger_lease(tmp_path: Path) -> None:
    error = load_error(tmp_path, f"url: {URL}\nlease: soon\n")
    assert error.key == "ledger.lease" and '"soon"' in str(error)


# --------------------------------------------------------------------------- ledger.url


@pytest.mark.parametrize(
    "url",
    [
        URL,
        "postgres://db.example.org/ingestd?sslmode=verify-full&target_session_attrs=read-write",
        "postgresql:///ingestd",  # the local socket
        "postgresql://",  # every default: libpq's environment and service file
        "postgresql://ingestd@[::1]:5433/ingestd",
        "postgresql://ingestd@db1:5432,db2:5432/ingestd",
        "postgresql://ingestd@db/ingestd?passfile=/etc/ingestd/pgpass",
        "postgresql://user%3Aname@db/ingestd",  # a user name with a colon, percent-encoded
    ],
)
def test_urls_that_are_taken(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, f"url: '{url}'\n").ledger.url == url


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://ingestd:{SECRET}@db.example.org/ingestd",
        f"postgres://ingestd:{SECRET}@db1:5432,db2:5432/ingestd",
        f"postgresql://db.example.org/ingestd?sslmode=require&password={SECRET}",
        f"postgresql:///ingestd?password={SECRET}",
        f"postgresql://db/ingestd?pass%77ord={SECRET}",  # libpq decodes the key too
        f"postgresql://ingestd:{SECRET}@@db/ingestd",  # an "@" in the password, unencoded
        f"postgresql://ingestd:{SECRET}@db?dbname=ingestd",  # no "/" before the query
        "postgresql://ingestd:@db/ingestd",  # an empty one: still not the place for it
    ],
)
def test_a_url_with_a_password_is_refused_without_showing_it(tmp_path: Path, url: str) -> None:
    error = load_error(tmp_path, f"url: '{url}'\n")
    assert str(error) == NO_PASSWORD
    assert SECRET not in str(error) and "sslmode" not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://ingestd:{SECRET}@db/ingestd",
        f"https://db/ingestd?password={SECRET}",
        f"POSTGRESQL://ingestd:{SECRET}@db/ingestd",  # libpq takes the prefix as written
        f"host=db user=ingestd password={SECRET}",  # a key=value string is no URL
    ],
)
def test_a_url_of_another_kind_is_refused_without_showing_it(tmp_path: Path, url: str) -> None:
    error = load_error(tmp_path, f"url: '{url}'\n")
    assert str(error) == (
        "ledger.url: must start with postgresql:// or postgres://, like"
        " postgresql://ingestd@db.example.org/ingestd (value not shown)"
    )
    assert SECRET not in str(error)


@pytest.mark.parametrize(("value", "shown"), [("''", '""'), ("5", "5"), ("{a: 1}", "a mapping")])
def test_a_url_that_is_no_text_says_what_it_got(tmp_path: Path, value: str, shown: str) -> None:
    error = load_error(tmp_path, f"url: {value}\n")
    assert str(error) == (
        "ledger.url: must be a URL like postgresql://ingestd@db.example.org/ingestd, or null"
        f" for the SQLite ledger at ledger.path (got {shown})"
    )


def test_the_command_line_refuses_a_url_with_a_password_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    config = write(tmp_path, f"url: 'postgresql://u:{SECRET}@db/x?password={SECRET}'\n")
    for command in (["check"], ["run", "--once"], ["status"]):
        result = run_cli(*command, "-c", str(config))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"ingestd: configuration error: {NO_PASSWORD}"
        assert SECRET not in result.stdout + result.stderr


# --------------------------------------------------------------------------- with other keys


def test_path_and_url_together_is_an_error_naming_both(tmp_path: Path) -> None:
    error = load_error(tmp_path, f"path: /var/lib/ingestd/ledger.db\nurl: {URL}\n")
    assert str(error) == (
        "ledger.url: cannot be set together with ledger.path: the ledger is either SQLite at"
        " ledger.path or PostgreSQL at ledger.url; remove one of them"
    )


def test_path_with_url_null_is_the_sqlite_ledger(tmp_path: Path) -> None:
    ledger = load(tmp_path, "path: /srv/l.db\nurl: null\n", "    - /srv/a\n").ledger
    assert (ledger.path, ledger.shared) == (Path("/srv/l.db"), False)


@pytest.mark.parametrize(
    ("paths", "index"),
    [
        ("    - /mnt/export\n", 0),
        ("    /mnt/export\n", 0),  # a single folder, not in a list
        (NAMED + "    - /mnt/other\n", 1),
        (NAMED + "    - {path: /mnt/other, name: other}\n    - /mnt/third\n", 2),
    ],
)
def test_with_url_every_watch_folder_needs_a_name(tmp_path: Path, paths: str, index: int) -> None:
    error = load_error(tmp_path, f"url: {URL}\n", paths)
    assert str(error) == (
        f"watch.paths[{index}].name: is required with ledger.url: hosts that mount the share"
        " at different paths agree on its files by this name; write the entry as"
        " {path: /mnt/export, name: export}"
    )


def test_the_command_line_exits_2_on_both_rules(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    both = write(tmp_path, f"path: {tmp_path / 'l.db'}\nurl: {URL}\n")
    result = run_cli("check", "-c", str(both))
    assert result.returncode == 2
    assert result.stderr.startswith("ingestd: configuration error: ledger.url: cannot be set")
    unnamed = write(tmp_path, f"url: {URL}\n", f"    - {tmp_path / 'export'}\n")
    result = run_cli("check", "-c", str(unnamed))
    assert result.returncode == 2
    assert result.stderr.startswith("ingestd: configuration error: watch.paths[0].name: ")
    assert len(result.stderr.splitlines()) == 1


def test_the_example_file_turned_shared_as_its_comments_say(tmp_path: Path) -> None:
    """Set url, remove path, name the folder: the example loads; keep path: it does not."""
    data = yaml.safe_load((REPO / "config.example.yaml").read_text())
    assert data["ledger"]["url"] is None and data["ledger"]["node"] is None
    data["ledger"]["url"] = URL
    data["watch"]["paths"] = [{"path": "/srv/capture/export", "name": "export"}]
    (tmp_path / "kept.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"^ledger\.url: cannot be set together with ledger\.path"
    ):
        load_config(tmp_path / "kept.yaml")
    del data["ledger"]["path"]
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump(data))
    ledger = load_config(tmp_path / "shared.yaml").ledger
    assert (ledger.shared, ledger.node, ledger.lease) == (True, socket.gethostname(), 60.0)


# --------------------------------------------------------------------------- the password


def _shared(tmp_path: Path, extra: str = "") -> LedgerConfig:
    return load(tmp_path, f"url: {URL}\n{extra}").ledger


def test_the_password_file_comes_first(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "ledger-password").write_text("from-credential\n")
    (tmp_path / "pg").write_text(SECRET + "\n\n")
    ledger = _shared(tmp_path, "password_file: pg\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    assert ledger_password(ledger, environ) == SECRET + "\n"  # one newline stripped


def test_then_the_systemd_credential_then_none(tmp_path: Path) -> None:
    ledger = _shared(tmp_path)
    (tmp_path / "creds").mkdir()
    assert ledger_password(ledger, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) is None
    assert ledger_password(ledger, {}) is None  # libpq's PGPASSWORD / PGPASSFILE apply
    (tmp_path / "creds" / "ledger-password").write_text(SECRET + "\r\n")
    assert ledger_password(ledger, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == SECRET


def test_the_environment_is_read_when_none_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ledger-password").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert ledger_password(_shared(tmp_path)) == SECRET


def test_a_password_file_that_cannot_be_read_is_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "binary").write_bytes(b"\xff" + SECRET.encode())
    (tmp_path / "folder").mkdir()
    expected = {
        "missing": f"ledger.password_file: cannot read {tmp_path / 'missing'}: No such file or"
        " directory",
        "folder": f"ledger.password_file: cannot read {tmp_path / 'folder'}: Is a directory",
        "binary": f"ledger.password_file: cannot read {tmp_path / 'binary'}: not UTF-8 text",
        "empty": f"ledger.password_file: {tmp_path / 'empty'} is empty",
    }
    for name, message in expected.items():
        ledger = _shared(tmp_path, f"password_file: {name}\n")
        with pytest.raises(ConfigError) as caught:
            ledger_password(ledger, {})
        assert str(caught.value) == message
        assert SECRET not in str(caught.value)


def test_an_unreadable_credential_names_the_key_too(tmp_path: Path) -> None:
    (tmp_path / "ledger-password").write_bytes(b"\xfe\xff")
    with pytest.raises(ConfigError) as caught:
        ledger_password(_shared(tmp_path), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert str(caught.value) == (
        f"ledger.password_file: cannot read {tmp_path / 'ledger-password'}: not UTF-8 text"
    )


# --------------------------------------------------------------------------- ingestd check


def test_check_says_what_the_open_writer_check_cannot_see(
    tmp_path: Path, server: FakeValtThread
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    paths = f"    - {{path: '{export}', name: export}}\n"
    shared = write(tmp_path, f"url: {URL}\n", paths, valt=server.url)
    result = run_cli("check", "-c", str(shared), env=ingestd_env())
    lines = result.stdout.splitlines()
    assert OPEN_WRITERS in lines, result.stdout
    assert "server version 6.7.2" in result.stdout  # the rest of check runs as before
    # Neither for a SQLite ledger, nor when the open-writer check is off.
    sqlite = run_cli("check", "-c", str(write_config(tmp_path, server.url)))
    assert sqlite.returncode == 0, sqlite.stdout
    assert not [line for line in sqlite.stdout.splitlines() if "open-writer" in line]
    text = shared.read_text()
    shared.write_text(text.replace("  paths:", "  check_open_writers: false\n  paths:"))
    off = run_cli("check", "-c", str(shared))
    assert "ok    configuration" in off.stdout and OPEN_WRITERS not in off.stdout
