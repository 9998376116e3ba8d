"""``ingestd ledger copy --to URL``: a SQLite ledger moved into a shared one, nothing uploaded
again; and ``ingestd check`` on a shared ledger.

Real parts: a SQLite ledger written by a real ``ingestd run --once`` against the fake Valt
server over loopback HTTP, a real PostgreSQL (tests/pg_support.py), the command line.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from conftest import (
    free_port,
    health,
    log_events,
    random_file,
    run_cli,
    run_once,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.lock import lock_holder
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger
from tests.pg_support import PasswordRole, PgServer, database_of
from tests.support import USERNAME, write_yaml

SECRET = "Pg-S3cret-in-the-url"


def sqlite_config(tmp_path: Path, server: FakeValtThread, export: Path) -> Path:
    """The one machine's configuration: a SQLite ledger, the folder named ``export``."""
    return write_config(
        tmp_path,
        server.url,
        watch={"paths": [{"path": str(export), "name": "export"}], "settle": "0.1s"},
        upload={"max_attempts": 1},
    )


def shared_config(
    tmp_path: Path,
    server: FakeValtThread,
    export: Path,
    url: str,
    home_name: str = "node",
    **sections: Any,
) -> Path:
    """A node of the shared ledger on the same machine: the same folder, by the same name."""
    home = tmp_path / home_name
    home.mkdir(exist_ok=True)
    base: dict[str, Any] = {
        "valt": {"url": server.url, "username": USERNAME, "timeout": "5s"},
        "watch": {
            "paths": [{"path": str(export), "name": "export"}],
            "settle": "0.1s",
            "rescan_interval": "1s",
            "check_container": False,
        },
        "upload": {"workers": 2, "chunk_size": "256KiB", "max_attempts": 1},
        "ledger": {"url": url, "node": "a", "lease": "5s"},
        "log": {"format": "json", "level": "info"},
        "status": {"listen": None},
    }
    return write_yaml(home / "config.yaml", base, sections)


def made_ledger(tmp_path: Path, server: FakeValtThread, export: Path) -> Path:
    """A SQLite ledger as a real run leaves it: b and c done, a failed (its create-upload
    answered 500), and a queued deletion and a suspected orphan beside them."""
    for n, name in enumerate("abc"):
        random_file(export / f"{name}.mp4", 200_000 + n, seed=n)
    config = sqlite_config(tmp_path, server, export)
    server.set_faults(fail_names=["a"])
    ran = run_once(config, "10s")
    assert ran.returncode == 1 and "a.mp4 (failed" in ran.stderr, ran.stderr
    server.set_faults(fail_names=[])
    asyncio.run(_queue_deletion_and_orphan(tmp_path / "ledger.db"))
    return config


async def _queue_deletion_and_orphan(path: Path) -> None:
    ledger = await SqliteLedger.open(path)
    try:
        [b] = [job for job in await ledger.jobs_in(State) if job.path.endswith("b.mp4")]
        await ledger.queue_deletion("rec-partial", b.id, "restarted")
        await ledger.note_orphan("rec-orphan", b.id, "b", "empty, not provably ours")
    finally:
        await ledger.close()


def sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


def pg_rows(url: str, table: str) -> list[dict[str, Any]]:
    order = {"suspected_orphans": "record_id", "meta": "key"}.get(table, "id")
    with psycopg.connect(url) as conn:
        cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
        names = [col.name for col in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def pg_tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    return {str(row[0]) for row in rows}


def where(url: str) -> str:
    return f"postgresql://local socket/{database_of(url)}"


def records(server: FakeValtThread) -> list[str]:
    return sorted(record["name"] for record in server.snapshot()["records"])


def _said(log: Path, event: str) -> bool:
    return any(entry.get("event") == event for entry in log_events(log))


def _marked(ledger: Path) -> set[str]:
    """The moved marker's keys the SQLite ledger holds (moving or moved)."""
    keys = {row["key"] for row in sqlite_rows(ledger, "meta")}
    return keys & {"moved_to", "moved_at", "moving_to"}


def migrate(config: Path) -> None:
    done = run_cli("ledger", "migrate", "-c", str(config))
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- the move


def test_a_copied_ledger_uploads_nothing_again_and_the_sqlite_one_is_moved(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = made_ledger(tmp_path, server, export)
    ledger = tmp_path / "ledger.db"
    before = sqlite_rows(ledger, "jobs")
    uploaded = records(server)
    assert pg_tables(pg_url) == set()  # no schema: the copy migrates it first
    assert run_cli("ledger", "backup", "-c", str(config)).returncode == 0  # not moved yet

    copied = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.splitlines() == [
        f"copied 3 jobs (1 live), 1 queued deletion and 1 suspected orphan to the shared "
        f"ledger {where(pg_url)}; the ledger {ledger} is now marked moved: set ledger.url to "
        "it and remove ledger.path"
    ]
    assert "?" not in copied.stdout  # the URL's query string (host=...) is never shown

    # Every job, every column, the paths portable; the target was empty: the ids are kept.
    after = pg_rows(pg_url, "jobs")
    assert [row["id"] for row in after] == [row["id"] for row in before]
    for old, new in zip(before, after, strict=True):
        name = Path(old["path"]).name
        assert (new["path"], new["root"]) == (f"export/{name}", "export")
        assert (new["lease_owner"], new["lease_until"]) == (None, None)
        if old["final_path"] is not None:  # kept where it was: the watch folder
            assert (old["final_path"], new["final_path"]) == (old["path"], new["path"])
        same = {k: v for k, v in old.items() if k not in ("path", "root", "final_path")}
        assert {k: new[k] for k in same} == same, name
    states = {Path(row["path"]).name: row["state"] for row in after}
    assert states == {"a.mp4": "failed", "b.mp4": "done", "c.mp4": "done"}
    [deletion] = pg_rows(pg_url, "deletions")
    [orphan] = pg_rows(pg_url, "suspected_orphans")
    b_id = next(row["id"] for row in after if row["path"] == "export/b.mp4")
    assert (deletion["record_id"], deletion["job_id"]) == ("rec-partial", b_id)
    assert (orphan["record_id"], orphan["job_id"]) == ("rec-orphan", b_id)

    # A node on the shared ledger uploads nothing again; a new file, once.
    random_file(export / "d.mp4", 150_000, seed=9)
    node = shared_config(tmp_path, server, export, pg_url)
    ran = run_once(node, "15s")
    assert records(server) == sorted([*uploaded, "d"]), ran.stderr
    states = {Path(row["path"]).name: row["state"] for row in pg_rows(pg_url, "jobs")}
    assert states == {"a.mp4": "failed", "b.mp4": "done", "c.mp4": "done", "d.mp4": "done"}

    # The SQLite ledger is moved: a daemon on it exits 2 naming the shared ledger.
    meta = {row["key"]: row["value"] for row in sqlite_rows(ledger, "meta")}
    assert meta["moved_to"] == where(pg_url) and float(meta["moved_at"]) > 0
    for command in (["run", "--once"], ["pause"], ["retry", "--failed"]):
        refused = run_cli(*command, "-c", str(config))
        assert refused.returncode == 2, (command, refused.stderr)
        [line] = refused.stderr.splitlines()
        assert line.startswith(
            f"ingestd: configuration error: the ledger {ledger} was moved to the shared ledger "
            f"{where(pg_url)} (ingestd ledger copy, at 20"
        ), line
        assert line.endswith("Z): set ledger.url to it and remove ledger.path"), line
    assert sqlite_rows(ledger, "jobs") == before  # nothing opened it for writing
    assert records(server) == sorted([*uploaded, "d"])

    # Read-only commands still work, and status says where it went.
    status = run_cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].startswith(
        f"MOVED: this ledger was moved to the shared ledger {where(pg_url)} (ingestd ledger "
        "copy, at 20"
    ), status.stdout
    shown = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
    assert shown["moved"] == {"to": where(pg_url), "at": float(meta["moved_at"]), "finished": True}
    exported = run_cli("export", "-c", str(config))
    assert exported.returncode == 0 and "b.mp4" in exported.stdout

    # A backup from before the copy, restored, is moved all the same.
    restored = run_cli("ledger", "restore", "--force", "-c", str(config))
    assert restored.returncode == 0, restored.stderr
    refused = run_cli("run", "--once", "-c", str(config))
    assert refused.returncode == 2 and "was moved to the shared ledger" in refused.stderr

    # Copying it again is refused: it was moved already.
    again = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert again.returncode == 1
    assert again.stderr.startswith(
        f"ingestd: ledger error: the ledger {ledger} was already moved to the shared ledger "
        f"{where(pg_url)} (ingestd ledger copy, at 20"
    ), again.stderr
    assert "nothing was copied again" in again.stderr
    assert len(pg_rows(pg_url, "jobs")) == 4


def test_into_a_shared_ledger_with_jobs_the_copied_jobs_get_new_ids(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = made_ledger(tmp_path, server, export)
    node = shared_config(tmp_path, server, export, pg_url)
    migrate(node)
    with psycopg.connect(pg_url) as conn:  # jobs of another folder, ids 1 and 2 taken
        for name in ("x", "y"):
            conn.execute(
                "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, "
                "discovered_at, updated_at) VALUES(%s, 'other', 'done', 1, 1, 1, 1, 1, 1)",
                (f"other/{name}.mp4",),
            )
    copied = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert copied.returncode == 0, copied.stderr
    assert "copied 3 jobs (1 live) under new ids, 1 queued deletion" in copied.stdout
    rows = {row["path"]: row for row in pg_rows(pg_url, "jobs")}
    assert len(rows) == 5
    old = {Path(row["path"]).name: row["id"] for row in sqlite_rows(tmp_path / "ledger.db", "jobs")}
    new = {name: rows[f"export/{name}"]["id"] for name in old}
    assert min(new.values()) > 2 and new != old
    [deletion] = pg_rows(pg_url, "deletions")
    [orphan] = pg_rows(pg_url, "suspected_orphans")
    assert deletion["job_id"] == orphan["job_id"] == new["b.mp4"]


def test_a_copy_killed_after_its_commit_is_finished_by_the_next_one_not_done_twice(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str, pg_server: PgServer
) -> None:
    config = made_ledger(tmp_path, server, export)
    ledger = tmp_path / "ledger.db"
    assert run_cli("ledger", "copy", "--to", pg_url, "-c", str(config)).returncode == 0
    # What a kill between the shared ledger's commit and the SQLite ledger's mark leaves.
    with sqlite3.connect(ledger) as conn:
        conn.execute("DELETE FROM meta WHERE key IN ('moved_to', 'moved_at')")
        conn.execute("INSERT INTO meta(key, value) VALUES('moving_to', ?)", (where(pg_url),))
    unfinished = (
        f"an `ingestd ledger copy` of the ledger {ledger} into the shared ledger "
        f"{where(pg_url)} did not finish: run it again with the same --to"
    )
    for command in (["run", "--once"], ["pause"]):
        refused = run_cli(*command, "-c", str(config))
        assert refused.returncode == 2, refused.stderr
        assert unfinished in refused.stderr, refused.stderr
    status = run_cli("status", "-c", str(config))
    assert status.stdout.startswith(
        f"MOVING: an `ingestd ledger copy` into the shared ledger {where(pg_url)} did not finish"
    ), status.stdout
    with pg_server.fresh_database() as other:
        elsewhere = run_cli("ledger", "copy", "--to", other, "-c", str(config))
        assert elsewhere.returncode == 1
        assert "did not finish: run it again with --to that ledger" in elsewhere.stderr
        assert pg_tables(other) == set()
    again = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        "copied (by an earlier run, stopped before marking it moved) 3 jobs (1 live)"
    ), again.stdout
    assert len(pg_rows(pg_url, "jobs")) == 3 and len(pg_rows(pg_url, "deletions")) == 1
    meta = {row["key"]: row["value"] for row in sqlite_rows(ledger, "meta")}
    assert meta["moved_to"] == where(pg_url) and "moving_to" not in meta


# --------------------------------------------------------------------------- refusals


def test_a_conflict_refuses_the_whole_copy_and_leaves_the_target_as_it_was(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = made_ledger(tmp_path, server, export)
    migrate(shared_config(tmp_path, server, export, pg_url))
    with psycopg.connect(pg_url) as conn:  # a node of the shared ledger works on a.mp4
        conn.execute(
            "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, "
            "discovered_at, updated_at) VALUES('export/a.mp4', 'export', 'waiting', "
            "1, 1, 1, 1, 1, 1)"
        )
    target = {table: pg_rows(pg_url, table) for table in ("jobs", "deletions", "meta")}
    refused = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        "ingestd: ledger error: 1 file(s) of this ledger have a live job in the shared ledger "
        f"too, the first {export / 'a.mp4'}: nothing was copied"
    ), line
    assert {table: pg_rows(pg_url, table) for table in target} == target
    assert not _marked(tmp_path / "ledger.db")  # still this machine's ledger


def test_a_failure_half_way_leaves_the_target_as_it_was(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = made_ledger(tmp_path, server, export)
    migrate(shared_config(tmp_path, server, export, pg_url))
    with psycopg.connect(pg_url) as conn:  # the last rows written (the orphans) are refused
        conn.execute("ALTER TABLE suspected_orphans ADD CONSTRAINT refuse_all CHECK (false)")
    refused = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert refused.returncode == 1
    assert "refused the copy" in refused.stderr and "nothing was copied" in refused.stderr
    assert pg_rows(pg_url, "jobs") == [] and pg_rows(pg_url, "deletions") == []
    assert not _marked(tmp_path / "ledger.db")
    assert run_once(config, "5s").returncode == 0  # a daemon runs on it again


def test_a_running_daemon_or_a_target_of_another_schema_refuses_the_copy(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = made_ledger(tmp_path, server, export)
    ledger = tmp_path / "ledger.db"
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: _said(log, "daemon.started"), timeout=20)
        assert lock_holder(ledger) == daemon.pid
        busy = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    finally:
        assert stop_process(daemon) == 0
    assert busy.returncode == 1
    assert busy.stderr.strip() == (
        f"ingestd: another ingestd (pid {daemon.pid}) is using the ledger {ledger}; stop the "
        "daemon first, then copy its ledger"
    )
    assert pg_tables(pg_url) == set()  # not even migrated

    migrate(shared_config(tmp_path, server, export, pg_url))
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    older = run_cli("ledger", "copy", "--to", pg_url, "-c", str(config))
    assert older.returncode == 1
    assert "the shared ledger has schema version 4, this ingestd needs 5" in older.stderr
    assert pg_rows(pg_url, "jobs") == []


def test_a_url_with_a_password_or_an_unnamed_folder_is_refused_with_exit_2(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config = sqlite_config(tmp_path, server, export)
    for url in (f"postgresql://ingestd:{SECRET}@db/x", f"postgresql://db/x?password={SECRET}"):
        refused = run_cli("ledger", "copy", "--to", url, "-c", str(config))
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            "ingestd: --to: must not carry a password (value not shown); put it in "
            "ledger.password_file, the systemd credential ledger-password, or libpq's PGPASSFILE"
        )
        assert SECRET not in refused.stdout + refused.stderr
    unnamed = write_config(tmp_path, server.url)
    refused = run_cli("ledger", "copy", "--to", "postgresql://db/x", "-c", str(unnamed))
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith("ingestd: configuration error: watch.paths[0].name: is required")


def test_the_password_comes_from_ledger_password_file_and_is_never_shown(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_password_role: PasswordRole
) -> None:
    config = made_ledger(tmp_path, server, export)
    url, password = pg_password_role
    secret = tmp_path / "ledger-password"
    secret.write_text("not-the-password\n")
    with_file = config.read_text().replace("ledger:\n", f"ledger:\n  password_file: {secret}\n")
    config.write_text(with_file)
    wrong = run_cli("ledger", "copy", "--to", url, "-c", str(config))
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"ingestd: ledger error: cannot connect to the shared ledger {where(url)}: password "
        f'authentication failed for user "{url.split("//")[1].split("@")[0]}"'
    )
    secret.write_text(password + "\n")
    copied = run_cli("ledger", "copy", "--to", url, "-c", str(config))
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.startswith("copied 3 jobs (1 live)")
    for output in (wrong.stdout, wrong.stderr, copied.stdout, copied.stderr):
        assert password not in output and "not-the-password" not in output


# --------------------------------------------------------------------------- ingestd check


def test_check_on_a_shared_ledger_connects_and_names_its_schema(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    node = shared_config(tmp_path, server, export, pg_url)
    bare = run_cli("check", "-c", str(node))
    assert bare.returncode == 1, bare.stdout
    failed = [line for line in bare.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        f"FAIL  shared ledger {where(pg_url)}: the shared ledger has no tables yet: run "
        f"`ingestd ledger migrate -c {node}` once (a daemon never changes a shared schema)"
    ]
    assert "ledger folder" not in bare.stdout  # ledger.path is not this ledger
    missing_db = pg_url.replace(f"/{database_of(pg_url)}?", "/no_such_db?")
    elsewhere = shared_config(tmp_path, server, export, missing_db, "elsewhere")
    gone = run_cli("check", "-c", str(elsewhere))
    assert gone.returncode == 1
    assert (
        f'FAIL  shared ledger {where(missing_db)}: cannot connect: database "no_such_db" does not'
        " exist" in gone.stdout.splitlines()
    ), gone.stdout

    migrate(node)
    fine = run_cli("check", "-c", str(node))
    assert fine.returncode == 0, fine.stdout
    assert f"ok    shared ledger {where(pg_url)}: schema version 5, node a" in fine.stdout
    assert "ledger folder" not in fine.stdout
    assert "?" not in fine.stdout and "host=" not in fine.stdout

    # The status port held by this node's daemon (there is no lock file to ask).
    port = free_port()
    listening = shared_config(
        tmp_path, server, export, pg_url, "listening", status={"listen": f"127.0.0.1:{port}"}
    )
    daemon = start_daemon(listening, tmp_path / "node.log")
    try:
        wait_for(lambda: _node_beats(pg_url, daemon.pid), timeout=20)
        health(port, wait=20)
        held = run_cli("check", "-c", str(listening))
    finally:
        assert stop_process(daemon) == 0
    assert held.returncode == 0, held.stdout
    assert (
        f"ok    status.listen 127.0.0.1:{port} is held by node a's ingestd (pid {daemon.pid})"
        in held.stdout.splitlines()
    ), held.stdout


def _node_beats(url: str, pid: int) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT heartbeat FROM nodes WHERE name='a'").fetchone()
    return bool(row and row[0] and json.loads(row[0])["pid"] == pid)
