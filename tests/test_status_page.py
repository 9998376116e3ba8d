"""The status page (``GET /``) and its data (``GET /status.json``) of a real daemon:
the token, ``log.redact_paths``, and the bounded lists."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import (
    KiB,
    free_port,
    random_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread

TOKEN = "page-token-0123456789abcdef"


def _get(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    """(HTTP status, headers, body); status 0 while nothing listens yet."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        try:
            return error.code, dict(error.headers), error.read().decode()
        finally:
            error.close()
    except OSError:
        return 0, {}, ""


def _status_json(port: int, token: str | None = None) -> dict[str, Any]:
    status, _, body = wait_for(
        lambda: (lambda got: got if got[0] else None)(_get(port, "/status.json", token))
    )
    assert status == 200, (status, body)
    data: dict[str, Any] = json.loads(body)
    return data


def _failed_and_waiting(port: int, token: str | None = None) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        data = _status_json(port, token)
        return data if data["failed"]["items"] and data["waiting"]["items"] else None

    result: dict[str, Any] = wait_for(ready, timeout=40, interval=0.3)
    return result


def test_the_page_is_one_self_contained_document(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path, server.url, status={"listen": f"127.0.0.1:{port}"})
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        _status_json(port)
        status, headers, page = _get(port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"
        # Nothing from outside: no script, style, image or font is loaded from anywhere.
        for outside in ("http://", "https://", "//cdn", "<script src", "<link", "@import"):
            assert outside not in page, outside
        assert "status.json" in page and "setTimeout(refresh" in page
    finally:
        assert stop_process(daemon) == 0


def test_the_page_and_its_data_need_the_token(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    token_file = tmp_path / "status-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        status={"listen": f"127.0.0.1:{port}", "token_file": str(token_file)},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _get(port, "/")[0], timeout=60)
        for path in ("/", "/status.json"):
            status, headers, body = _get(port, path)
            assert status == 401, (path, status)
            assert headers["WWW-Authenticate"].startswith("Basic")
            assert "<html" not in body and "totals" not in body
            assert _get(port, path, "not-the-token-at-all")[0] == 401
        status, _, page = _get(port, "/", TOKEN)
        assert status == 200 and "<html" in page
        assert _status_json(port, TOKEN)["totals"]["done"] == 0
        # A browser sends the token as the password of HTTP Basic, for the page and its data.
        basic = base64.b64encode(f"operator:{TOKEN}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/status.json", headers={"Authorization": f"Basic {basic}"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
    finally:
        assert stop_process(daemon) == 0
    assert TOKEN not in (tmp_path / "daemon.log").read_text(errors="replace")


def _names_files(tmp_path: Path, export: Path, server: FakeValtThread) -> list[str]:
    """A waiting file and a failed one, in a folder that carries a person's name."""
    room = export / "Room 7 Jane Doe"
    random_file(room / "Jane Doe interview.mp4", 100 * KiB)  # no marker: it waits
    random_file(room / "John Roe statement.mp4", 100 * KiB, seed=2)
    (room / "John Roe statement.mp4.done").touch()
    server.set_faults(refuse_names=["John Roe statement"])  # a permanent 400 quoting the name
    return [str(export), "Room 7", "Jane", "John", "interview", "statement", ".mp4"]


def test_redact_paths_keeps_every_name_out_of_the_page_and_its_data(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    pieces = _names_files(tmp_path, export, server)
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        status={"listen": f"127.0.0.1:{port}"},
        watch={"done_marker": ".done"},
        log={"redact_paths": True},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        data = _failed_and_waiting(port)
        _, _, page = _get(port, "/")
    finally:
        assert stop_process(daemon) == 0
    [failed] = data["failed"]["items"]
    [waiting] = data["waiting"]["items"]
    assert failed["name"] == f"job {failed['job']}" and waiting["name"] == f"job {waiting['job']}"
    assert failed["retry"] == f"ingestd retry {failed['job']}"
    assert failed["reason"] == "http_400" and "Invalid record name" in failed["detail"]
    assert [folder["folder"] for folder in data["health"]["folders"]] == ["watch.paths[0]"]
    text = json.dumps(data) + page
    for piece in [*pieces, str(tmp_path)]:
        assert piece not in text, piece


def test_without_redact_paths_the_page_names_the_files(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    _names_files(tmp_path, export, server)
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        status={"listen": f"127.0.0.1:{port}"},
        watch={"done_marker": ".done"},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        data = _failed_and_waiting(port)
    finally:
        assert stop_process(daemon) == 0
    assert data["failed"]["items"][0]["name"] == "Room 7 Jane Doe/John Roe statement.mp4"
    assert data["waiting"]["items"][0]["name"] == "Room 7 Jane Doe/Jane Doe interview.mp4"
    assert "Jane Doe interview.mp4.done" in data["waiting"]["items"][0]["why"]
    assert data["health"]["folders"][0]["path"] == str(export)
    assert data["totals"]["failed"] == 1 and data["totals"]["waiting"] == 1


def test_each_list_shows_twenty_and_counts_the_rest(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    for index in range(25):
        random_file(export / f"clip{index:02}.mp4", 10 * KiB, seed=index)
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        status={"listen": f"127.0.0.1:{port}"},
        watch={"done_marker": ".done"},  # none is written: all 25 wait
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:

        def all_waiting() -> dict[str, Any] | None:
            data = _status_json(port)
            return data if data["totals"]["waiting"] == 25 else None

        data = wait_for(all_waiting, timeout=30, interval=0.3)
    finally:
        assert stop_process(daemon) == 0
    assert len(data["waiting"]["items"]) == 20 and data["waiting"]["more"] == 5
    names = {item["name"] for item in data["waiting"]["items"]}
    assert len(names) == 20 and all(name.startswith("clip") for name in names)
