"""The command line as a user meets it: exit codes and one clear line for each mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PASSWORD, REPO, ingestd_env, random_file, run_cli, write_config

from ingestd.fake_valt import FakeValtThread


def _one_line_error(result: object, *needles: str) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"upload": {"chunk_sise": "8MiB"}}, ["upload.chunk_sise", "chunk_size"]),
        ({"upload": {"chunk_size": "eight"}}, ["upload.chunk_size", "eight"]),
        ({"upload": {"workers": 0}}, ["upload.workers", "0"]),
        ({"watch": {"settle": "soon"}}, ["watch.settle", "soon"]),
        ({"after_upload": {"action": "move"}}, ["after_upload.move_to"]),
        ({"record": {"name": "{stm}"}}, ["record.name", "{stm}"]),
        ({"record": {"pattern": "(?P<room"}}, ["record.pattern"]),
        ({"status": {"listen": "nowhere"}}, ["status.listen", "nowhere"]),
        ({"log": {"level": "loud"}}, ["log.level", "loud"]),
        ({"valt": {"verify_tls": "yes please"}}, ["valt.verify_tls"]),
    ],
)
def test_configuration_mistakes_give_one_line_and_exit_2(
    tmp_path: Path, change: dict[str, object], needles: list[str]
) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, "http://127.0.0.1:9", **change)  # type: ignore[arg-type]
    for command in (["run", "--once"], ["check"]):
        _one_line_error(run_cli(command[0], "-c", str(config), *command[1:]), *needles)


def test_missing_required_keys_and_files(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"valt": {"url": "http://127.0.0.1:9"}}))
    _one_line_error(run_cli("check", "-c", str(config)), "valt.username")
    config.write_text("valt: {url: [unclosed\n")
    _one_line_error(run_cli("check", "-c", str(config)), "line")
    _one_line_error(run_cli("check", "-c", str(tmp_path / "absent.yaml")), "absent.yaml")


def test_missing_password_names_the_way_to_give_it(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, "http://127.0.0.1:9")
    env = ingestd_env()
    del env["INGESTD_VALT_PASSWORD"]
    _one_line_error(run_cli("run", "-c", str(config), env=env), "INGESTD_VALT_PASSWORD")


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    _one_line_error(run_cli("retry", "-c", str(tmp_path / "x.yaml")), "retry")
    _one_line_error(run_cli("frobnicate"))
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, "http://127.0.0.1:9")
    _one_line_error(
        run_cli("run", "-c", str(config), "--once", "--max-wait", "later"), "--max-wait"
    )
    env = ingestd_env(INGESTD_FAILPOINTS="no_such_point")
    _one_line_error(run_cli("run", "-c", str(config), env=env), "no_such_point")


def test_config_from_environment_variable(tmp_path: Path, server: FakeValtThread) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, server.url)
    result = run_cli("check", env=ingestd_env(INGESTD_CONFIG=str(config)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_all_fine(tmp_path: Path, server: FakeValtThread) -> None:
    (tmp_path / "export").mkdir()
    result = run_cli("check", "-c", str(write_config(tmp_path, server.url)))
    assert result.returncode == 0, result.stdout
    assert "server version 6.7.2" in result.stdout
    assert "free on the volume of" in result.stdout
    assert "FAIL" not in result.stdout
    full = write_config(tmp_path, server.url, watch={"min_free": "1000TB"})
    result = run_cli("check", "-c", str(full))
    assert result.returncode == 1
    assert "watch.min_free is 909.5 TiB" in result.stdout


def test_check_wrong_password_exits_1_naming_the_credentials(
    tmp_path: Path, server: FakeValtThread
) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, server.url)
    result = run_cli("check", "-c", str(config), env=ingestd_env(INGESTD_VALT_PASSWORD="nope"))
    assert result.returncode == 1
    assert "FAIL  credentials" in result.stdout
    assert server.snapshot()["login_failures"] == 1


def test_check_unreachable_server_and_missing_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", valt={"timeout": "2s"})
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 1
    assert "cannot be reached" in result.stdout
    assert "does not exist" in result.stdout  # the export folder was never made


def test_run_once_lists_what_is_not_done(tmp_path: Path, server: FakeValtThread) -> None:
    export = tmp_path / "export"
    random_file(export / "empty.mp4", 0)
    random_file(export / "fine.mp4", 1000)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    result = run_cli("run", "-c", str(config), "--once", "--max-wait", "2s")
    assert result.returncode == 1
    assert "not done:" in result.stderr and "empty.mp4" in result.stderr
    assert "empty file" in result.stderr
    assert "fine.mp4" not in result.stderr


def test_status_before_any_run(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    result = run_cli("status", "-c", str(write_config(tmp_path, "http://127.0.0.1:9")))
    assert result.returncode == 0
    assert "no ledger yet" in result.stdout


def test_retry_by_job_id_and_password_never_in_output(
    tmp_path: Path, server: FakeValtThread
) -> None:
    export = tmp_path / "export"
    random_file(export / "a.mp4", 1000)
    config = write_config(
        tmp_path, server.url, watch={"settle": "0.1s"}, upload={"max_attempts": 1}
    )
    server.set_faults(fail_names=["a"])  # its create-upload 500s; the server answers others
    first = run_cli("run", "-c", str(config), "--once", "--max-wait", "5s")
    assert first.returncode == 1 and "a.mp4 (failed" in first.stderr
    server.set_faults(fail_names=[])
    retried = run_cli("retry", "-c", str(config), "1")
    assert retried.returncode == 0 and "re-queued 1 job(s): 1" in retried.stdout
    second = run_cli("run", "-c", str(config), "--once", "--max-wait", "5s")
    assert second.returncode == 0, second.stderr
    for output in (first.stdout, first.stderr, second.stdout, retried.stdout):
        assert PASSWORD not in output


def test_export_writes_the_audit_csv(tmp_path: Path, server: FakeValtThread) -> None:
    import csv
    import io

    export = tmp_path / "export"
    digest = random_file(export / "room 1" / "a, b.mp4", 3000)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    assert run_cli("export", "-c", str(config)).stdout.splitlines() == [
        "file,size,sha256,record_id,uploaded_at,record_name,node"
    ]
    assert run_cli("run", "-c", str(config), "--once", "--max-wait", "5s").returncode == 0
    result = run_cli("export", "-c", str(config))
    assert result.returncode == 0
    [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row["file"] == str(export / "room 1" / "a, b.mp4")
    assert (row["size"], row["sha256"]) == ("3000", digest)
    assert row["record_id"] == server.snapshot()["records"][0]["id"]
    assert row["uploaded_at"].endswith("+00:00")
    assert row["node"] == ""  # a SQLite ledger has no nodes
    later = run_cli("export", "-c", str(config), "--since", "2999-01-01")
    assert later.stdout.count("\n") == 1
    _one_line_error(run_cli("export", "-c", str(config), "--since", "yesterday"), "--since")


def test_progress_line_counts_files_bytes_rate_and_eta() -> None:
    import io

    from ingestd.daemon.progress import ProgressLine
    from ingestd.ledger.model import Job, State

    def job(state: State, size: int, acked: int) -> Job:
        return Job(
            1, "/x", "/", state, size, 0, 0, 0, None, None, None, acked, 0, None, 0, 0,
            None, 0, 0.0, None, None, None, None, None, 0, 0.0, None, None, None, 0.0,
        )  # fmt: skip

    line = ProgressLine(io.StringIO())
    jobs = [job(State.DONE, 1000, 0), job(State.UPLOADING, 3000, 0), job(State.WAITING, 10, 0)]
    first = line.render(jobs)
    assert first.startswith("[1/3 files] 1000 B of 3.9 KiB") and "waiting" in first
    line.started -= 2.0
    jobs[1].bytes_acked = 2000
    rendered = line.render(jobs)  # 2000 bytes in a little over 2 s; 1010 left
    assert rendered.startswith("[1/3 files] 2.9 KiB of 3.9 KiB, 99")
    assert "B/s, 1 s left" in rendered


def test_check_probe_upload_chunked_and_not(tmp_path: Path, server: FakeValtThread) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, server.url)
    result = run_cli("check", "-c", str(config), "--probe-upload")
    assert result.returncode == 0, result.stdout
    assert "two chunks accepted" in result.stdout
    state = server.snapshot()
    assert state["records"] == [] and len(state["deleted"]) == 1  # cleaned up

    server.set_faults(no_chunking=True)
    result = run_cli("check", "-c", str(config), "--probe-upload")
    assert result.returncode == 1, result.stdout
    assert "refused a second chunk" in result.stdout
    assert "whole-file upload accepted" in result.stdout
    assert server.snapshot()["records"] == []
    whole = write_config(tmp_path, server.url, upload={"chunk_size": 0})
    result = run_cli("check", "-c", str(whole), "--probe-upload")
    assert result.returncode == 0, result.stdout
    assert "whole-file upload accepted" in result.stdout


# Runs a command as ``ingestd`` does and writes, as it exits, every module it loaded.
LOADED_AT_EXIT = (
    "import atexit, json, sys\n"
    "out = sys.argv[1]\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from ingestd.commands.main import main\n"
    "main(sys.argv[2:])\n"
)
SERVER_SIDE = ("aiohttp", "ingestd.fake_valt", "ingestd.daemon")


def _loaded(tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    subprocess.run(
        [sys.executable, "-c", LOADED_AT_EXIT, str(out), *args],
        env=ingestd_env(),
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    return list(json.loads(out.read_text()))


def _of(modules: list[str], *packages: str) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def test_status_and_export_load_neither_the_server_side_nor_the_daemon(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, "http://127.0.0.1:9"))
    assert _of(_loaded(tmp_path, "status", "-c", config), *SERVER_SIDE) == []  # no ledger yet
    assert run_cli("pause", "-c", config).returncode == 0  # now there is one
    for command in (["status"], ["status", "--json"], ["export"]):
        assert _of(_loaded(tmp_path, *command, "-c", config), *SERVER_SIDE) == [], command


def test_check_does_not_load_the_daemon(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, "http://127.0.0.1:9"))
    loaded = _loaded(tmp_path, "check", "-c", config)
    assert "ingestd.commands.check" in loaded
    assert _of(loaded, "ingestd.daemon") == []
