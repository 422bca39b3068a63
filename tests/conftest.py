"""Shared fixtures: one real PostgreSQL per session and a fresh database per test.

Set ``TEST_DATABASE_URL`` to an admin DSN to test against an existing server instead of a
throwaway cluster started from the local PostgreSQL binaries, and ``TEST_TABLE_LAYOUT=partitioned``
to create every migrated spans table partitioned by day (see layout.py).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from layout import LAYOUT, migrate_table
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tcp_proxy import TcpProxy

from otel_pg_exporter.testing.devdb import DevCluster, ExternalServer, PgServer

logger = logging.getLogger("otel_pg_exporter")


def pytest_report_header() -> str:
    return f"spans table layout: {LAYOUT} (TEST_TABLE_LAYOUT)"


@pytest.fixture(autouse=True)
def db_tracing_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the ENABLE_DB_TRACING master switch on; tests of the switch delete it again."""
    monkeypatch.setenv("ENABLE_DB_TRACING", "true")


@pytest.fixture(autouse=True)
def spool_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep every test's disk spool out of the user's cache folder."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


@pytest.fixture(autouse=True)
def forget_configure() -> Iterator[None]:
    """Leave no configure() handle or log correlation behind for the next test."""
    yield
    from otel_pg_exporter._configure import reset_for_tests

    reset_for_tests()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgServer]:
    """The session's PostgreSQL: ``TEST_DATABASE_URL`` if set, else a throwaway cluster."""
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        yield ExternalServer(url)
        return
    cluster = DevCluster(fsync=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def dev_cluster(pg_cluster: PgServer) -> Iterator[DevCluster]:
    """A cluster this run may stop and restart: the session one, or its own beside a URL server."""
    if isinstance(pg_cluster, DevCluster):
        yield pg_cluster
        return
    cluster = DevCluster(fsync=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def fresh_dsn(pg_cluster: PgServer) -> Iterator[str]:
    """A uniquely named empty database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name)
    yield dsn
    if isinstance(pg_cluster, DevCluster) and not pg_cluster.is_running():
        # A fault test that failed before restarting the server must not fail every later test.
        logger.warning("A test left PostgreSQL stopped; starting it again")
        pg_cluster.start()
    pg_cluster.drop_database(name)


@pytest.fixture
def migrated_dsn(fresh_dsn: str) -> str:
    """A fresh database with every migration applied, in the layout under test."""
    migrate_table(fresh_dsn)
    return fresh_dsn


@pytest.fixture(scope="module")
def module_database(pg_cluster: PgServer) -> Iterator[str]:
    """One migrated database per module (layout under test), for tests that only need an
    empty table."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name)
    migrate_table(dsn)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture
def dsn(module_database: str) -> str:
    """The module's database with an empty spans table."""
    with psycopg.connect(module_database) as conn:
        conn.execute("TRUNCATE trace_spans")
    return module_database


@pytest.fixture
def proxied(migrated_dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    """A migrated database reached through a TCP proxy the test can stall, cut or resume."""
    params = conninfo_to_dict(migrated_dsn)
    with TcpProxy(
        str(params.get("host", "127.0.0.1")), int(str(params.get("port", 5432)))
    ) as proxy:
        yield proxy, make_conninfo(migrated_dsn, host="127.0.0.1", port=proxy.port)
