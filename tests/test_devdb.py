"""The throwaway PostgreSQL that every other test stands on, tested against real servers."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from otel_pg_exporter.testing import devdb
from otel_pg_exporter.testing.devdb import PASSWORD_ROLE, DevCluster, ExternalServer, PgServer

_SOURCE_ROOT = Path(devdb.__file__).resolve().parent.parent


def _scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def scratch_db(dev_cluster: DevCluster) -> Iterator[str]:
    """A database on the stoppable cluster, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dev_cluster.create_database(name)
    yield name
    dev_cluster.start()
    dev_cluster.drop_database(name)


def test_find_bin_dir_holds_the_server_binaries() -> None:
    """The binaries found include the three the cluster needs."""
    bin_dir = devdb.find_bin_dir()
    for name in ("pg_ctl", "initdb", "postgres"):
        assert os.access(bin_dir / name, os.X_OK)


def test_cluster_accepts_a_query_as_the_superuser(dev_cluster: DevCluster) -> None:
    """The started cluster answers over TCP on 127.0.0.1 as the superuser ``postgres``."""
    assert dev_cluster.is_running()
    assert f"postgresql://postgres@127.0.0.1:{dev_cluster.port}/postgres" == dev_cluster.dsn
    assert "postgres" == _scalar(dev_cluster.dsn, "SELECT current_user")
    assert "off" == _scalar(dev_cluster.dsn, "SHOW fsync")


def test_create_database_gives_a_usable_dsn(pg_cluster: PgServer) -> None:
    """A created database is reachable at the returned DSN and gone after it is dropped."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name)
    try:
        assert name == _scalar(dsn, "SELECT current_database()")
    finally:
        pg_cluster.drop_database(name)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(dsn, connect_timeout=10).close()


def test_drop_database_ends_open_sessions(pg_cluster: PgServer, fresh_dsn: str) -> None:
    """Dropping a database still in use succeeds, as a leaked pool must not fail teardown."""
    name = str(_scalar(fresh_dsn, "SELECT current_database()"))
    with psycopg.connect(fresh_dsn, autocommit=True) as held:
        pg_cluster.drop_database(name)
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")


def test_fresh_dsn_is_an_empty_database(fresh_dsn: str) -> None:
    """Each test gets a database with no tables of its own."""
    count = _scalar(
        fresh_dsn,
        "SELECT count(*) FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    assert 0 == count


def test_immediate_stop_then_restart_keeps_port_and_data(
    dev_cluster: DevCluster, scratch_db: str
) -> None:
    """After an immediate stop the server restarts on the same port with committed rows intact."""
    dsn = dev_cluster.dsn_for(scratch_db)
    port = dev_cluster.port
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    dev_cluster.stop(mode="immediate")
    assert not dev_cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()

    dev_cluster.restart()
    assert dev_cluster.is_running()
    assert port == dev_cluster.port
    assert 42 == _scalar(dsn, "SELECT n FROM kept")

    dev_cluster.restart()
    assert port == dev_cluster.port
    assert 42 == _scalar(dsn, "SELECT n FROM kept")


def test_stop_rejects_an_unknown_mode(dev_cluster: DevCluster) -> None:
    """A typo in the stop mode raises instead of being passed to pg_ctl."""
    with pytest.raises(ValueError, match="mode"):
        dev_cluster.stop(mode="quick")
    assert dev_cluster.is_running()


@pytest.fixture
def password_role(dev_cluster: DevCluster) -> Iterator[str]:
    """The password-checked role with an awkward password, dropped after the test."""
    password = "right p@ss/w:rd%"
    drop = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(PASSWORD_ROLE))
    create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(PASSWORD_ROLE), sql.Literal(password)
    )
    with psycopg.connect(dev_cluster.dsn, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(create)
    yield password
    with psycopg.connect(dev_cluster.dsn, autocommit=True) as conn:
        conn.execute(drop)


def test_password_role_connects_with_the_right_password(
    dev_cluster: DevCluster, password_role: str
) -> None:
    """The password role logs in over TCP when the password, percent-encoded, is right."""
    dsn = dev_cluster.dsn_for("postgres", user=PASSWORD_ROLE, password=password_role)
    assert PASSWORD_ROLE == _scalar(dsn, "SELECT current_user")


def test_password_role_fails_with_a_wrong_password(
    dev_cluster: DevCluster, password_role: str
) -> None:
    """The password role is refused with an authentication error when the password is wrong."""
    dsn = dev_cluster.dsn_for("postgres", user=PASSWORD_ROLE, password="wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=10).close()


def test_repr_hides_passwords(dev_cluster: DevCluster) -> None:
    """No server object prints a password, whatever form its DSN takes."""
    assert "password" not in repr(dev_cluster).lower()
    assert str(dev_cluster.port) in repr(dev_cluster)
    for dsn in (
        "postgresql://admin:s3cret@db.example:5432/postgres",
        "host=db.example user=admin password=s3cret dbname=postgres",
    ):
        shown = repr(ExternalServer(dsn))
        assert "s3cret" not in shown
        assert "db.example" in shown


def test_external_server_adapts_an_admin_dsn(dev_cluster: DevCluster) -> None:
    """The URL adapter creates and drops databases on a server it did not start."""
    server = ExternalServer(dev_cluster.dsn_for("postgres", password="unused-by-trust"))
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = server.create_database(name)
    try:
        assert name == _scalar(dsn, "SELECT current_database()")
        other = psycopg.conninfo.conninfo_to_dict(server.dsn_for(name, user="someone"))
        assert "someone" == other["user"]
        assert "password" not in other
    finally:
        server.drop_database(name)


def _devdb_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "otel_pg_exporter.testing.devdb", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=180,
    )


@pytest.mark.slow
def test_cli_start_status_stop_round_trip() -> None:
    """The CLI creates a cluster, prints only its DSN, leaves it running, and stops it."""
    # Under /tmp and world-searchable: as root the server runs as ``postgres`` and must reach it.
    base = Path(tempfile.mkdtemp(prefix="otelpg-cli-", dir="/tmp"))
    base.chmod(0o755)
    data_dir = base / "pgdata"
    try:
        started = _devdb_cli("start", "--dir", str(data_dir), "--no-fsync")
        assert 0 == started.returncode, started.stderr
        dsn = started.stdout.strip()
        assert [dsn] == started.stdout.splitlines()
        assert dsn.startswith("postgresql://postgres@127.0.0.1:")
        # The CLI process has exited; the server must still be there.
        assert 1 == _scalar(dsn, "SELECT 1")

        status = _devdb_cli("status", "--dir", str(data_dir))
        assert (0, dsn) == (status.returncode, status.stdout.strip())
        again = _devdb_cli("start", "--dir", str(data_dir))
        assert (0, dsn) == (again.returncode, again.stdout.strip())

        stopped = _devdb_cli("stop", "--dir", str(data_dir))
        assert 0 == stopped.returncode, stopped.stderr
        assert 3 == _devdb_cli("status", "--dir", str(data_dir)).returncode
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=5).close()
    finally:
        _devdb_cli("destroy", "--dir", str(data_dir))
        shutil.rmtree(base, ignore_errors=True)
    assert not data_dir.exists()
