"""Record metadata end to end: placeholders, pattern groups, rules, sidecars and share names,
on real files uploaded to the fake Valt server by a real ``ingestd`` process."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PASSWORD,
    USERNAME,
    ingestd_env,
    ledger_rows,
    random_file,
    run_cli,
    run_once,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.errors import ShareNameError, SidecarError
from ingestd.fake_valt import FakeValtThread
from ingestd.intake.sidecar import (
    MALFORMED_GRACE,
    find_sidecar,
    read_sidecar,
    sidecar_paths,
    sidecar_wait_reason,
)
from ingestd.valt.client import ValtClient
from ingestd.valt.shares import ShareDirectory

ADMIN_CALLS = ("GET /api/v3/admin/users", "GET /api/v3/admin/user_groups")


def _records(server: FakeValtThread) -> dict[str, dict[str, Any]]:
    """Record name -> what the fake holds (name, template, share, videos)."""
    return {record["name"]: record for record in server.snapshot()["records"]}


def _admin_calls(server: FakeValtThread) -> dict[str, int]:
    """Requests to the admin listings (not ``admin/general``, the reachability call)."""
    counts = server.call(lambda fake: dict(fake.request_counts))
    return {
        key: count
        for key, count in counts.items()
        if "/admin/" in key and not key.endswith("/admin/general")
    }


def _sidecar_wait_reason_in_ledger(tmp_path: Path) -> str | None:
    for row in ledger_rows(tmp_path / "ledger.db"):
        if "sidecar" in (row["wait_reason"] or ""):
            return str(row["wait_reason"])
    return None


def _aged(path: Path, seconds: float) -> Path:
    """Backdate ``path``'s mtime, as a file written ``seconds`` ago."""
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def _write(path: Path, text: str, age: float = 60.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return _aged(path, age)


def _rows_by_stem(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {Path(row["path"]).stem: row for row in ledger_rows(tmp_path / "ledger.db")}


def _lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


# --- placeholders, pattern groups, rules ------------------------------------------------------


def test_placeholders_and_pattern_groups_fill_name_and_template(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    matching = export / "room-3" / "2024-05-01_case-K17.mp4"
    random_file(matching, 3000, seed=1)
    other = export / "loose.MP4"
    random_file(other, 1234, seed=2)
    moment = dt.datetime(2024, 5, 2, 9, 30).timestamp()
    for path in (matching, other):
        os.utime(path, (moment, moment))
    config = write_config(
        tmp_path,
        server.url,
        record={
            "pattern": r"^(?P<room>[^/]+)/(?P<day>[0-9-]+)_case-(?P<case>\w+)",
            "name": "{room} {day} case {case} {mtime:%H%M}",
            "template": {1: "{case}", 2: "{parent}|{ext}|{size}|{stem}"},
        },
    )
    result = run_once(config, "30s")
    assert result.returncode == 0, result.stderr
    records = _records(server)
    assert set(records) == {"room-3 2024-05-01 case K17 0930", "case  0930"}
    assert records["room-3 2024-05-01 case K17 0930"]["template"] == {
        "1": "K17",
        "2": "room-3|mp4|3000|2024-05-01_case-K17",
    }
    # The pattern does not match: its groups render empty, the built-ins still fill.
    assert records["case  0930"]["template"] == {"1": "", "2": "|MP4|1234|loose"}


def test_rules_first_match_wins_with_double_star(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    for index, rel in enumerate(
        ["room-3/a.mp4", "room-3/x/deep/b.mp4", "room-4/deep/c.mp4", "other/deep/d.mp4", "top.mp4"]
    ):
        random_file(export / rel, 1000 + index, seed=index)
    config = write_config(
        tmp_path,
        server.url,
        record={
            "name": "default {stem}",
            "template": {1: "default"},
            "share": {"groups": [4]},
            "rules": [
                {
                    "match": "room-3/**",
                    "name": "three {stem}",
                    "template": {2: "{parent}"},
                    "share": {"users": [2]},
                },
                {"match": "room-*/**", "name": "room {stem}"},
                {"match": "**/deep/*.mp4", "name": "deep {stem}", "template": {}},
            ],
        },
    )
    result = run_once(config, "30s")
    assert result.returncode == 0, result.stderr
    records = _records(server)
    assert set(records) == {"three a", "three b", "room c", "deep d", "default top"}
    # The first rule wins even where a later one matches too; its template replaces the default.
    assert records["three b"]["template"] == {"2": "room-3/x/deep"}
    assert records["three b"]["share"] == {"users": [2], "groups": []}
    assert records["room c"]["template"] == {"1": "default"}  # no template of its own
    assert records["room c"]["share"] == {"users": [], "groups": [4]}
    assert records["deep d"]["template"] == {}
    assert records["default top"]["template"] == {"1": "default"}


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({"pattern": "(?P<room>[^/]+)/", "template": {7: "{rooom}"}}, "record.template.7"),
        ({"rules": [{"match": "a/**", "name": "{case}"}]}, "record.rules[0].name"),
        ({"rules": [{"match": "/"}]}, "record.rules[0].match"),
    ],
)
def test_bad_metadata_config_is_refused_at_load_time(
    tmp_path: Path, export: Path, record: dict[str, Any], key: str
) -> None:
    random_file(export / "a" / "clip.mp4", 100)
    config = write_config(tmp_path, "http://127.0.0.1:9", record=record)
    for command in (["run", "--once"], ["check"]):
        result = run_cli(command[0], "-c", str(config), *command[1:])
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], result.stderr
    assert ledger_rows(tmp_path / "ledger.db") == []


# --- sidecars ---------------------------------------------------------------------------------


def test_sidecars_override_the_config(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    for index, name in enumerate(["a.mp4", "b.mp4", "c.mov", "d.mp4", "e.mp4"]):
        random_file(export / name, 2000 + index, seed=index)
    _write(
        export / "a.json",
        json.dumps(
            {"name": "Case {not a placeholder}", "template": {"1": "K-1"}, "share": {"users": [3]}}
        ),
    )
    _write(export / "b.mp4.yaml", "template:\n  2: 17\nshare:\n  groups: [staff, 5]\n")
    _write(export / "c.mov.json", '{"name": "full-name form wins"}')
    _write(export / "c.json", '{"name": "stem form loses"}')
    _write(export / "e.mp4.JSON", "\ufeff" + '{"name": "with a BOM", "share": {"users": []}}')
    config = write_config(
        tmp_path,
        server.url,
        record={
            "name": "config {stem}",
            "template": {1: "cfg-{stem}", 2: "room"},
            "share": {"users": [1], "groups": [4]},
        },
    )
    result = run_once(config, "30s")
    assert result.returncode == 0, result.stderr
    records = _records(server)
    # Sidecars are never uploaded themselves: one record per video.
    assert set(records) == {
        "Case {not a placeholder}",
        "config b",
        "full-name form wins",
        "config d",
        "with a BOM",
    }
    # Sidecar fields are set over the config's; a kind of share it names replaces that kind.
    assert records["Case {not a placeholder}"]["template"] == {"1": "K-1", "2": "room"}
    assert records["Case {not a placeholder}"]["share"] == {"users": [3], "groups": [4]}
    assert records["config b"]["template"] == {"1": "cfg-b", "2": "17"}
    assert records["config b"]["share"] == {"users": [1], "groups": [4, 5]}
    assert records["full-name form wins"]["template"] == {"1": "cfg-c", "2": "room"}
    assert records["config d"]["share"] == {"users": [1], "groups": [4]}
    assert records["with a BOM"]["share"] == {"users": [], "groups": [4]}


def test_sidecars_are_ignored_when_switched_off(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", 500)
    _write(export / "a.json", "{broken")
    config = write_config(tmp_path, server.url, record={"sidecar": False})
    result = run_once(config, "30s")
    assert result.returncode == 0, result.stderr
    assert set(_records(server)) == {"a"}


def test_malformed_sidecar_fails_its_job_and_others_go_on(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    for index, stem in enumerate(["bad-json", "bad-key", "bad-user", "good"]):
        random_file(export / f"{stem}.mp4", 1500 + index, seed=index)
    # Older than the grace period: these stay malformed, nothing is being written.
    _write(export / "bad-json.json", '{"name": "half')
    _write(export / "bad-key.yaml", "titel: Interview\n")
    _write(export / "bad-user.json", '{"share": {"users": ["zed"]}}')
    _write(export / "good.json", '{"name": "good one", "share": {"users": ["alice"]}}')
    # Two workers: jobs failing at the same instant must not collide in the ledger.
    config = write_config(tmp_path, server.url, upload={"workers": 2})
    result = run_once(config, "30s")
    assert result.returncode == 1
    records = _records(server)
    assert set(records) == {"good one"}  # no record, not even an empty one, for the others
    assert records["good one"]["share"]["users"] == [2]
    rows = _rows_by_stem(tmp_path)
    assert rows["good"]["state"] == "done"
    for stem, needles in {
        "bad-json": ["sidecar bad-json.json", "not valid JSON", "(line 1, column 10)"],
        "bad-key": ["sidecar bad-key.yaml", "has an unknown key", "allowed: name"],
        "bad-user": ["sidecar bad-user.json", "share.users", "unknown user 'zed'", "alice"],
    }.items():
        assert rows[stem]["state"] == "failed", rows[stem]
        assert rows[stem]["fail_reason"] == "bad_sidecar", rows[stem]
        for needle in needles:
            assert needle in rows[stem]["fail_detail"], rows[stem]["fail_detail"]
        assert f"not done: {export / stem}.mp4 (failed: bad_sidecar" in result.stderr
    # Fixed, then retried: the same job uploads with the sidecar's metadata.
    _write(export / "bad-json.json", '{"name": "fixed"}')
    assert run_cli("retry", "-c", str(config), str(rows["bad-json"]["id"])).returncode == 0
    assert run_once(config, "30s").returncode == 0  # failed jobs are not part of a --once pass
    assert "fixed" in _records(server)


def _write_slowly(path: Path, pieces: list[str], pause: float) -> threading.Thread:
    """Append ``pieces`` to ``path`` with pauses in between, as a slow writer does."""

    def write() -> None:
        for piece in pieces:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(piece)
            time.sleep(pause)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_sidecar_written_slowly_is_not_used_half_written(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 4000)
    # Every prefix of this YAML parses, with wrong values: only settling protects.
    pieces = ["name: Interview K", "-17 final\n", "template:\n", "  1: K", "-17\n"]
    sidecar = export / "clip.yaml"
    sidecar.write_text("")
    config = write_config(
        tmp_path, server.url, watch={"settle": "1s"}, upload={"max_attempts": 100}
    )
    writer = _write_slowly(sidecar, pieces, pause=0.25)
    try:
        result = run_once(config, "30s")
    finally:
        writer.join()
    assert result.returncode == 0, result.stderr
    records = _records(server)
    assert set(records) == {"Interview K-17 final"}
    assert records["Interview K-17 final"]["template"] == {"1": "K-17"}


def test_unsettled_sidecar_keeps_the_video_waiting(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 4000)
    sidecar = export / "clip.json"
    sidecar.write_text('{"name": "Interv')
    config = write_config(tmp_path, server.url)
    daemon = start_daemon(config, tmp_path / "daemon.log", None, "--once", "--max-wait", "60s")
    try:
        reason = wait_for(lambda: _sidecar_wait_reason_in_ledger(tmp_path), MALFORMED_GRACE - 2)
        assert "sidecar clip.json is not valid yet" in reason, reason
        time.sleep(1.0)  # the video keeps waiting; the server has nothing yet
        assert server.snapshot()["records"] == []
        sidecar.write_text('{"name": "Interview K-17"}')
        assert daemon.wait(60) == 0
    finally:
        stop_process(daemon)
    assert set(_records(server)) == {"Interview K-17"}
    (row,) = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "done" and row["attempts"] == 0  # it waited; it did not fail and retry


def test_sidecar_wait_reasons_and_lookup(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    now = time.time()
    assert sidecar_wait_reason(video, 5.0, now) is None  # no sidecar at all
    stem_form = _write(tmp_path / "clip.json", '{"name": "a"}', age=1.0)
    assert sidecar_wait_reason(video, 5.0, time.time()) == (
        "sidecar clip.json changed within the last 5 s"
    )
    _aged(stem_form, 6.0)
    assert sidecar_wait_reason(video, 5.0, time.time()) is None
    # The full-name form wins over the stem form; both travel with the video.
    full_form = _write(tmp_path / "clip.mp4.yml", "name: [unclosed", age=6.0)
    found = find_sidecar(video)
    assert found is not None and found[0] == full_form
    reason = sidecar_wait_reason(video, 5.0, time.time())
    assert reason is not None and reason.startswith("sidecar clip.mp4.yml is not valid yet (")
    _aged(full_form, MALFORMED_GRACE + 1)  # malformed for good: no waiting, the upload fails
    assert sidecar_wait_reason(video, 5.0, time.time()) is None
    assert sorted(p.name for p in sidecar_paths(video)) == ["clip.json", "clip.mp4.yml"]
    # A clock far ahead on the writer's side must not hold the video for ever.
    os.utime(stem_form, (now + 3600, now + 3600))
    full_form.unlink()
    assert sidecar_wait_reason(video, 5.0, time.time()) is None


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("a.json", "", "is empty"),
        ("a.yaml", "   \n", "is empty"),
        ("a.json", "[1, 2]", "must be a mapping with name, template or share (got a list)"),
        ("a.json", '{"name": ""}', "name must be non-empty text"),
        ("a.json", '{"name": true}', "name must be non-empty text (got true or false)"),
        ("a.yaml", "template: [1]", "template must map field ids to values (got a list)"),
        (
            "a.yaml",
            "template: {Room: x}",
            "template field ids must be numbers such as 12 (got text)",
        ),
        ("a.yaml", "template: {1: [x]}", "template.1 must be text (got a list)"),
        ("a.yaml", "share: alice", "share must be a mapping with users/groups (got text)"),
        ("a.yaml", "share: {user: [1]}", "share has an unknown key (allowed: users, groups)"),
        ("a.yaml", "share: {users: [1.5]}", "share.users takes id numbers or names (got a number)"),
        ("a.yaml", "name: x\n  bad: indent", "is not valid YAML (line 2, column 6)"),
    ],
)
def test_malformed_sidecars_say_what_is_wrong(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(SidecarError) as caught:
        read_sidecar(path)
    assert caught.value.file == name
    assert caught.value.problem.startswith(problem), caught.value.problem


def test_sidecar_values_are_normalised(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.yaml", "name: 2024\ntemplate: {'01': 7, 2: null}\nshare: {users: bob}\n"
    )
    sidecar = read_sidecar(path)
    assert sidecar.name == "2024"
    assert dict(sidecar.template) == {"1": "7", "2": ""}
    assert sidecar.users == ("bob",) and sidecar.groups is None


# --- share names ------------------------------------------------------------------------------


def test_share_names_are_resolved_to_ids_once(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    for index in range(3):
        random_file(export / f"clip-{index}.mp4", 1000 + index, seed=index)
    random_file(export / "room-3" / "r.mp4", 999)
    config = write_config(
        tmp_path,
        server.url,
        record={
            "share": {"users": ["alice", 3, "ALICE"], "groups": ["Staff"]},
            "rules": [{"match": "room-3/**", "share": {"users": ["bob"]}}],
        },
    )
    result = run_once(config, "30s")
    assert result.returncode == 0, result.stderr
    records = _records(server)
    for index in range(3):
        assert records[f"clip-{index}"]["share"] == {"users": [2, 3], "groups": [4]}
    assert records["r"]["share"] == {"users": [3], "groups": []}
    # Listed once at start-up, not once a file.
    assert _admin_calls(server) == {ADMIN_CALLS[0]: 1, ADMIN_CALLS[1]: 1}


@pytest.mark.parametrize(
    ("record", "key", "needle"),
    [
        ({"share": {"users": ["alice", "bob2"]}}, "record.share.users", "unknown user 'bob2'"),
        (
            {"rules": [{"match": "x/**", "share": {"groups": ["staf"]}}]},
            "record.rules[0].share.groups",
            "unknown group 'staf'",
        ),
    ],
)
def test_unknown_share_name_is_a_configuration_error(
    tmp_path: Path,
    server: FakeValtThread,
    export: Path,
    record: dict[str, Any],
    key: str,
    needle: str,
) -> None:
    random_file(export / "clip.mp4", 1000)
    config = write_config(tmp_path, server.url, record=record)
    result = run_once(config, "30s")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ingestd: configuration error: {key}: {needle}"), line
    assert "known:" in line
    assert server.snapshot()["records"] == []
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 1, checked.stdout
    (fail,) = _lines(checked.stdout, "FAIL")
    assert key in fail and needle in fail


def test_forbidden_listing_asks_for_numeric_ids(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    server.set_faults(admin_forbidden=True)
    random_file(export / "clip.mp4", 1000)
    config = write_config(
        tmp_path, server.url, record={"share": {"users": ["alice"], "groups": [4]}}
    )
    result = run_once(config, "30s")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "record.share.users" in line and "write numeric user ids instead" in line, line
    assert f"'{USERNAME}' may not list users" in line
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 1
    (fail,) = _lines(checked.stdout, "FAIL")
    assert "write numeric user ids instead" in fail
    # Ids work with such an account, without any admin call.
    server.set_faults(admin_forbidden=False)
    before = _admin_calls(server)
    config = write_config(tmp_path, server.url, record={"share": {"users": [2], "groups": [4]}})
    server.set_faults(admin_forbidden=True)
    assert run_once(config, "30s").returncode == 0
    assert _records(server)["clip"]["share"] == {"users": [2], "groups": [4]}
    assert _admin_calls(server) == before


def test_ids_only_make_no_admin_calls(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    random_file(export / "a.mp4", 1000, seed=1)
    random_file(export / "room-3" / "b.mp4", 1001, seed=2)
    _write(export / "a.json", '{"share": {"users": [5], "groups": [5]}}')
    config = write_config(
        tmp_path,
        server.url,
        record={
            "share": {"users": [2], "groups": [4]},
            "rules": [{"match": "room-3/**", "share": {"users": [3]}}],
        },
    )
    result = run_once(config, "30s")
    assert result.returncode == 0, result.stderr
    records = _records(server)
    assert records["a"]["share"] == {"users": [5], "groups": [5]}
    assert records["b"]["share"] == {"users": [3], "groups": []}
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout
    assert _admin_calls(server) == {}


def test_refused_credentials_at_start_up_do_not_stop_the_daemon_over_names(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """Names need a login; refused credentials are the daemon's usual auth story (design.md),
    not a crash: one login attempt, no hammering, the names looked up once a login works."""
    random_file(export / "a.mp4", 1000)
    config = write_config(tmp_path, server.url, record={"share": {"users": ["alice"]}})
    result = run_cli(
        "run",
        "-c",
        str(config),
        "--once",
        "--max-wait",
        "2s",
        env=ingestd_env(INGESTD_VALT_PASSWORD="wrong"),
    )
    assert result.returncode == 1
    assert "the server refused the credentials" in result.stderr
    assert "Traceback" not in result.stderr
    assert server.call(lambda fake: fake.request_counts.get("POST /api/v3/login")) == 1
    assert '"event": "share.names_deferred"' in result.stdout
    assert run_once(config, "30s").returncode == 0  # the right password: looked up, then uploaded
    assert _records(server)["a"]["share"] == {"users": [2], "groups": []}


async def test_directory_lists_again_for_a_name_added_later(server: FakeValtThread) -> None:
    async with ValtClient(base_url=server.url, username=USERNAME, password=PASSWORD) as client:
        directory = ShareDirectory(client, refresh_after=3600)
        assert await directory.ids("users", ["bob", 7, "alice", 3]) == [3, 7, 2]
        server.call(lambda fake: fake.state.directory.users.update(carol=9))
        with pytest.raises(ShareNameError, match="unknown user 'carol'"):
            await directory.lookup("users", "carol")  # the listing is fresh: not asked again
        directory.refresh_after = 0
        assert await directory.lookup("users", "carol") == 9
        server.call(lambda fake: fake.state.directory.groups.update(twins=11, Twins=12))
        with pytest.raises(ShareNameError, match=r"2 groups are called 'TWINS' \(ids 11, 12\)"):
            await directory.lookup("groups", "TWINS")
    assert _admin_calls(server) == {ADMIN_CALLS[0]: 2, ADMIN_CALLS[1]: 1}


# --- check: the information template ---------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "code", "lines"),
    [
        (
            {"template_id": 1, "template": {1: "{stem}", 2: "room"}},
            0,
            ["ok    record.template fits template 1 'Interview'"],
        ),
        (
            {"template_id": 1, "template": {2: "room"}},
            1,
            ["FAIL  record.template: required field 1 'Case number' of template 1 'Interview'"],
        ),
        (
            {"template_id": 1, "template": {1: "x", 9: "y"}},
            1,
            ["FAIL  record.template.9: template 1 'Interview' has no field 9 (1 'Case number'"],
        ),
        (
            {
                "template_id": 1,
                "template": {1: "x"},
                "rules": [{"match": "a/**", "template": {2: "y"}}],
            },
            1,
            ["FAIL  record.rules[0].template: required field 1 'Case number'"],
        ),
        (
            {"template_id": 7, "template": {1: "x"}},
            1,
            ["FAIL  record.template_id: there is no template 7 on the server"],
        ),
    ],
)
def test_check_holds_template_fields_against_the_server(
    tmp_path: Path,
    server: FakeValtThread,
    export: Path,
    record: dict[str, Any],
    code: int,
    lines: list[str],
) -> None:
    config = write_config(tmp_path, server.url, record=record)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == code, result.stdout
    for expected in lines:
        assert any(line.startswith(expected) for line in result.stdout.splitlines()), result.stdout
    assert len(_lines(result.stdout, "FAIL")) == code


def test_check_skips_the_template_for_an_ordinary_account(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    server.set_faults(admin_forbidden=True)
    config = write_config(tmp_path, server.url, record={"template_id": 1, "template": {}})
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stdout
    (skip,) = _lines(result.stdout, "skip")
    assert "template 1 not checked" in skip and "may not read admin/templates" in skip
