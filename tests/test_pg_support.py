"""The PostgreSQL test infrastructure (tests/pg_support.py) works for real: a server,
a database per test, a crash and its recovery, a proxy that cuts the network, a password."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.pg_support import PasswordRole, PgProxy, PgServer, database_of


def test_a_query_through_the_url(pg_server: PgServer, pg_url: str) -> None:
    assert pg_url.startswith("postgresql://postgres@/t_")
    assert f"?host={pg_server.socket_dir}" in pg_url
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT current_database(), current_user, 1 + 1").fetchone()
    assert row == (database_of(pg_url), "postgres", 2)
    assert pg_server.socket_path.is_socket()


def test_each_database_is_a_test_of_its_own(pg_server: PgServer, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")
        conn.execute("INSERT INTO jobs VALUES (1)")
    with pg_server.fresh_database() as other:
        assert database_of(other) != database_of(pg_url)
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)
    names = {row[0] for row in pg_server.psql("SELECT datname FROM pg_database")}
    assert database_of(pg_url) in names
    assert database_of(other) not in names  # dropped after its test


def test_a_killed_server_starts_again_with_its_committed_rows(
    pg_server: PgServer, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")
        conn.execute("INSERT INTO jobs VALUES (1)")
    open_transaction = psycopg.connect(pg_url)
    open_transaction.execute("INSERT INTO jobs VALUES (2)")  # never committed
    old_pid = int((pg_server.pgdata / "postmaster.pid").read_text().split()[0])
    pg_server.kill()
    assert not pg_server.running
    with pytest.raises(psycopg.OperationalError):
        open_transaction.execute("SELECT 1")
    open_transaction.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_url, connect_timeout=2).close()
    pg_server.start()
    assert pg_server.running
    assert int((pg_server.pgdata / "postmaster.pid").read_text().split()[0]) != old_pid
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(1,)]
    assert "automatic recovery in progress" in pg_server.log.read_text()  # a crash, not a stop


def _select_one(url: str) -> object:
    with psycopg.connect(url, connect_timeout=2) as conn:
        row = conn.execute("SELECT 1").fetchone()
        return None if row is None else row[0]


def test_the_proxy_forwards_and_a_cut_closes_and_hangs(pg_url: str, pg_proxy: PgProxy) -> None:
    url = pg_proxy.url(database_of(pg_url))
    assert url == f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{database_of(pg_url)}"
    assert _select_one(url) == 1
    conn = psycopg.connect(url)
    assert pg_proxy.connections == 1
    pg_proxy.cut()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")  # its connection was closed
    conn.close()
    began = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        _select_one(url)  # accepted, never answered
    assert time.monotonic() - began >= 1.5
    pg_proxy.restore()
    assert _select_one(url) == 1


def test_the_proxy_can_refuse_and_keeps_its_port(pg_url: str, pg_proxy: PgProxy) -> None:
    url = pg_proxy.url(database_of(pg_url))
    pg_proxy.cut(mode="refuse")
    began = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        _select_one(url)
    assert time.monotonic() - began < 1
    pg_proxy.cut(mode="hang")  # from refusing to holding, and back
    pg_proxy.cut(mode="refuse")
    pg_proxy.restore()
    assert _select_one(url) == 1


def test_a_partition_holds_a_query_until_the_network_returns(
    pg_url: str, pg_proxy: PgProxy
) -> None:
    answers: list[object] = []
    with psycopg.connect(pg_proxy.url(database_of(pg_url))) as conn:
        pg_proxy.cut(existing="hang")
        asking = threading.Thread(
            target=lambda: answers.append(conn.execute("SELECT 42").fetchone())
        )
        asking.start()
        asking.join(0.5)
        assert asking.is_alive() and not answers  # no answer, no error: a silent network
        pg_proxy.restore()
        asking.join(5)
    assert answers == [(42,)]


def test_the_password_role_needs_its_password(
    pg_password_role: PasswordRole, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, password = pg_password_role
    assert password not in url and "ingestd_pw@" in url
    monkeypatch.delenv("PGPASSWORD", raising=False)
    (tmp_path / "wrong").mkdir()
    wrong = PasswordRole(url, password + "x").passfile(tmp_path / "wrong")
    monkeypatch.setenv("PGPASSFILE", str(wrong))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url).close()
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(url).close()
    monkeypatch.setenv("PGPASSFILE", str(pg_password_role.passfile(tmp_path)))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ingestd_pw",)
        conn.execute("CREATE TABLE jobs (id int)")  # it owns the database
