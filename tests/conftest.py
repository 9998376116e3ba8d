"""Shared test fixtures: a real fake Valt server on loopback, real files, real processes.

The helpers that need no pytest (the bench uses them too) are in tests/support.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from ingestd.config.load import load_config
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.watcher import Intake
from ingestd.ledger.store import SqliteLedger
from powercut import PowerCutMount, missing, mount

# The test modules import these from here, as before.
from tests.support import USERNAME, wait_for, write_config

if TYPE_CHECKING:  # psycopg is imported by the tests that use PostgreSQL only
    from tests.pg_support import PasswordRole, PgProxy, PgServer

PASSWORD = "s3cret-Pass-w0rd-xyz"
KiB = 1024
MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


# Modules whose tests must share one worker (xdist), by group. A campaign's tests share one
# module fixture. Tests that mount file systems (FUSE, tmpfs) must not mount while another's
# power cut remounts: the kernel gives the freed device number to whichever mount comes next,
# and the remounted disk would come back with another st_dev.
ONE_WORKER = {
    "tests/test_chaos_short.py": "chaos campaign",
    "tests/test_chaos_shared_short.py": "chaos campaign",  # two campaigns at once: too slow
    "tests/test_powercut_campaign.py": "mounts",
    "tests/test_powercut_fs.py": "mounts",
    "tests/test_power_durability.py": "mounts",
    "tests/test_move_across_filesystems.py": "mounts",
    "tests/test_folder_mounts.py": "mounts",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first: run in parallel (xdist), they would otherwise end the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Scheduling(), "ingestd-xdist-scheduling")


class _Scheduling:
    """``--dist load`` (the default of ``-n``), but each group of ONE_WORKER on one worker.

    ``--dist loadgroup`` would do, but with pytest 9 xdist's group suffix on the node id is
    lost and every test is scheduled alone.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                return ONE_WORKER.get(nodeid.split("::", 1)[0], nodeid)

        return Scheduling(config, log)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeValtThread]:
    with FakeValtThread(tmp_path / "server", users={USERNAME: PASSWORD}, faults=Faults()) as fake:
        yield fake


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL (tests/pg_support.py), one per worker, stopped when it ends."""
    from tests.pg_support import PgServer

    with PgServer.create() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A superuser URL of a new database of this test's own, dropped after it."""
    with pg_server.fresh_database() as url:
        yield url


@pytest.fixture
def pg_password_role(pg_server: PgServer, pg_url: str) -> Iterator[PasswordRole]:
    """(URL without password, password) of a role that owns pg_url's database and must
    give its password."""
    from tests.pg_support import database_of

    with pg_server.password_role(database_of(pg_url)) as role:
        yield role


@pytest.fixture
def pg_proxy(pg_server: PgServer) -> Iterator[PgProxy]:
    """A TCP port forwarded to pg_server, to cut off (``proxy.url(database_of(pg_url))``)."""
    from tests.pg_support import PgProxy

    with PgProxy(pg_server.socket_path) as proxy:
        yield proxy


Opener = Callable[[], Awaitable[Any]]


@pytest.fixture(params=["sqlite", "postgres"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a new ledger on either backend (the statements are the same; ledger/core.py)."""
    if request.param == "sqlite":
        return lambda: SqliteLedger.open(tmp_path / "ledger.db")
    from ingestd.ledger.postgres.store import PostgresLedger

    url = request.getfixturevalue("pg_url")
    return lambda: PostgresLedger.open(
        url, password=None, node="t", lease=60, roots={"x": "/x"}, migrate=True
    )


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerCutMount]:
    """The power-cut test file system (powercut/), mounted over a folder of the test's."""
    reason = missing()
    if reason:  # a skipped test is not a pass: say what to install
        pytest.fail(f"the power-cut file system cannot run here: {reason}")
    with mount(tmp_path / "backing", tmp_path / "mnt") as handle:
        yield handle


@pytest.fixture
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    return folder


async def intake_for_tests(tmp_path: Path, **watch: Any) -> tuple[Intake, SqliteLedger]:
    """An in-process intake over ``tmp_path/export`` and its ledger, the finished checks off
    (the caller closes the ledger)."""
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9", watch=watch))
    ledger = await SqliteLedger.open(config.ledger.path)
    intake = Intake(
        watch=config.watch,
        sidecars=config.record.sidecar,
        ledger=ledger,
        checks=FinishedChecks(check_open_writers=False, check_container=False, done_marker=None),
        is_active=lambda _job: False,
        on_ready=lambda: None,
    )
    return intake, ledger


def ingestd_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["INGESTD_VALT_PASSWORD"] = PASSWORD
    env.pop("INGESTD_FAILPOINTS", None)
    env.update(extra)
    return env


NOBODY = 65534  # root ignores file permissions: where they are the point, run as nobody


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's tmp_path is root's, mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="ingestd-nobody-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for folder in base.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def start_as_nobody(config: Path, log_file: Path, **env: str) -> subprocess.Popen[bytes]:
    """``ingestd run`` as uid/gid 65534 without groups: root reads any file, nobody does not."""
    command = [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        sys.executable,
        "-m",
        "ingestd",
        "run",
        "-c",
        str(config),
    ]
    with open(log_file, "ab") as handle:
        return subprocess.Popen(
            command, env=ingestd_env(**env), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO
        )


# Commands that end by themselves and kill nothing: run in the test's process (a second
# faster than a new interpreter); ``run`` and the rest get a real process.
IN_PROCESS = frozenset({"check", "status", "retry", "export", "pause", "resume", "ledger"})


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``ingestd ARGS``: a real process, or the same entry point in this one for IN_PROCESS."""
    if args and args[0] in IN_PROCESS and not _loop_running():
        return run_in_process(list(args), env or ingestd_env())
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args],
        env=env or ingestd_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def run_once(config: Path, max_wait: str = "20s", **env: str) -> subprocess.CompletedProcess[str]:
    """``ingestd run -c CONFIG --once``: in this process (a second faster), or as a real one
    when ``INGESTD_FAILPOINTS`` is given (a failpoint kills the process it is in) or when an
    event loop runs here already (an async test)."""
    args = ["run", "-c", str(config), "--once", "--max-wait", max_wait]
    if env.get("INGESTD_FAILPOINTS") or _loop_running():
        return run_cli(*args, env=ingestd_env(**env))
    return run_in_process(args, ingestd_env(**env))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_in_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``ingestd ARGS`` through its entry point, with ``env`` as the environment; its output
    captured, the logging it configures undone afterwards."""
    from ingestd import logs
    from ingestd.commands.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, root = dict(os.environ), logging.getLogger()
    saved_logging, saved_structlog = (list(root.handlers), root.level), structlog.get_config()
    # The secrets it registers are kept for the process's life: not for the next test's.
    saved_secrets = (set(logs._SECRETS), list(logs._TOKENS), logs._SECRETS_ORDER)
    os.environ.clear()
    os.environ.update(env)
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
        structlog.configure(**saved_structlog)
        with logs._SECRETS_LOCK:
            logs._SECRETS.clear()
            logs._SECRETS.update(saved_secrets[0])
            logs._TOKENS.clear()
            logs._TOKENS.extend(saved_secrets[1])
            logs._SECRETS_ORDER = saved_secrets[2]
    return subprocess.CompletedProcess(args, int(code or 0), out.getvalue(), err.getvalue())


def start_daemon(
    config: Path, log_file: Path, env: dict[str, str] | None = None, *extra: str
) -> subprocess.Popen[bytes]:
    """``ingestd run -c CONFIG`` in the background, its output going to ``log_file``."""
    with open(log_file, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ingestd", "run", "-c", str(config), *extra],
            env=env or ingestd_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout)


def random_file(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes; returns their sha256."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            block = rng.randbytes(min(left, MiB))
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def log_events(log_file: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon's output (other lines are skipped)."""
    events = []
    for line in log_file.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


@functools.cache
def documented_events() -> frozenset[str]:
    """The event names in the first column of the README's table of log events."""
    text = (REPO / "README.md").read_text()
    _, found, table = text.partition("\n| event | level | fields | meaning |\n")
    assert found, "README.md has no table of log events"
    names: set[str] = set()
    for line in table.splitlines()[1:]:  # the first is the | --- | row
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", line.split("|")[1]))
    return frozenset(names)


def assert_no_event(logged: str | Path | Iterable[Any], *names: str) -> None:
    """No event ``names`` in ``logged``: a daemon's output (text, or a log file), event dicts,
    event names, or (time, event, fields) entries. Each name must be in the README's table,
    so that a renamed event fails here instead of passing as absent."""
    unknown = [name for name in names if name not in documented_events()]
    assert not unknown, f"not in the README's table of log events: {unknown}"
    if isinstance(logged, Path):
        logged = log_events(logged)
    if isinstance(logged, str):
        found = [line for line in logged.splitlines() if any(name in line for name in names)]
    else:
        found = [entry for entry in logged if _event_name(entry) in names]
    assert not found, found


def _event_name(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry.get("event")
    return entry[1] if isinstance(entry, tuple) else entry


def server_videos(server: FakeValtThread) -> dict[str, dict[str, Any]]:
    """Record name -> {record id, sha256, received, status} for every record held."""
    held = {}
    for record in server.snapshot()["records"]:
        video = (record.get("videos") or [{}])[0]
        held[record["name"]] = {**video, "video_id": video.get("id"), "record_id": record["id"]}
    return held


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    import sqlite3

    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM jobs ORDER BY id")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # the daemon has created the file but not the schema yet
        raise
    finally:
        conn.close()


def health(port: int, wait: float = 0) -> tuple[int, dict[str, Any]]:
    """``GET /healthz`` on loopback: (status, JSON body), (0, {}) while nothing listens; with
    ``wait``, polled that long for an answer."""
    import urllib.error
    import urllib.request

    def get() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())
        except OSError:
            return 0, {}

    if wait:
        return wait_for(lambda: (lambda got: got if got[0] else None)(get()), timeout=wait)
    return get()


def issued_tokens(fake: Any) -> set[str]:
    """Every token a fake Valt (``FakeValt``) handed out: live ones and those it expired."""
    return set(fake.state.accounts.issued_tokens())


def job_states(ledger: Path) -> dict[str, str]:
    """File name -> state of every job in the ledger."""
    return {Path(row["path"]).name: row["state"] for row in ledger_rows(ledger)}


def free_port() -> int:
    """A loopback TCP port nobody listens on (for ``status.listen`` and webhook receivers)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
