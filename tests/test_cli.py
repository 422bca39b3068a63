"""The otel-pg command line against a real PostgreSQL: exit codes, output, no password leaks."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from layout import migrate_args
from psycopg.conninfo import conninfo_to_dict

import otel_pg_exporter.cli
from otel_pg_exporter.cli import main
from otel_pg_exporter.schema.migrations import applied_versions, available_migrations
from otel_pg_exporter.testing.devdb import PASSWORD_ROLE, PgServer

SECRET = "Hunter2-Secret"
# Import root of the package under test, so a subprocess runs the same code as this process.
IMPORT_ROOT = Path(otel_pg_exporter.cli.__file__).resolve().parents[2]


def _all_versions() -> list[int]:
    return [migration.version for migration in available_migrations()]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _table_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def _run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ if env is None else env)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(IMPORT_ROOT), *filter(None, [environ.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "otel_pg_exporter", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own database: none leaks in from the developer's shell."""
    for name in (
        "OTEL_EXPORTER_POSTGRES_DSN",
        "DATABASE_URL",
        "OTEL_EXPORTER_POSTGRES_SCHEMA",
        "OTEL_EXPORTER_POSTGRES_TABLE",
    ):
        monkeypatch.delenv(name, raising=False)


def test_migrate_applies_then_reports_up_to_date(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`otel-pg migrate` exits 0, saying what it applied, then that the table is up to date."""
    assert 0 == main(["migrate", *migrate_args(), "--dsn", fresh_dsn])
    first = capsys.readouterr().out
    assert 0 == main(["migrate", *migrate_args(), "--dsn", fresh_dsn])
    second = capsys.readouterr().out

    assert first.startswith("Applied migration(s) 1")
    assert " s\n" in first
    assert "up to date" in second
    assert _all_versions() == applied_versions(fresh_dsn)


def test_migrate_says_it_recreated_a_table_dropped_by_hand(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`otel-pg migrate` after a hand-dropped table recreates it and says so (not "up to date")."""
    assert 0 == main(["migrate", *migrate_args(), "--dsn", fresh_dsn])
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute("DROP TABLE trace_spans CASCADE")
    capsys.readouterr()

    assert 0 == main(["migrate", *migrate_args(), "--dsn", fresh_dsn])

    out = capsys.readouterr().out
    assert out.startswith("Recreated trace_spans: recorded as migrated but missing")
    assert "up to date" not in out
    assert _table_exists(fresh_dsn, "trace_spans")


def test_migrate_takes_its_settings_from_the_environment(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without options, the DSN, schema and table come from the OTEL_EXPORTER_POSTGRES_* vars."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/not_this_one")
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_DSN", fresh_dsn)
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_SCHEMA", "obs")
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_TABLE", "env_spans")

    assert 0 == main(["migrate", *migrate_args()])

    assert _all_versions() == applied_versions(fresh_dsn, schema="obs", table="env_spans")


def test_migrate_falls_back_to_libpq_variables(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no DSN anywhere, libpq's own PG* variables say where to connect."""
    params = conninfo_to_dict(fresh_dsn)
    for key, variable in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("dbname", "PGDATABASE"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
    ):
        if params.get(key) is not None:
            monkeypatch.setenv(variable, str(params[key]))

    assert 0 == main(["migrate", *migrate_args()])

    assert _all_versions() == applied_versions(fresh_dsn)


@pytest.mark.slow
def test_python_dash_m_migrate_exits_0(fresh_dsn: str) -> None:
    """`python -m otel_pg_exporter migrate --dsn ...` migrates and exits 0."""
    result = _run_module(
        "migrate", *migrate_args(), "--dsn", fresh_dsn, "--table", "from_subprocess"
    )

    assert (0, "") == (result.returncode, result.stderr)
    assert "Applied migration(s) 1" in result.stdout
    assert _all_versions() == applied_versions(fresh_dsn, table="from_subprocess")


@pytest.mark.slow
def test_wrong_password_exits_1_without_showing_it(pg_cluster: PgServer) -> None:
    """A rejected password exits 1 with the reason on stderr and the password nowhere."""
    dsn = pg_cluster.dsn_for("postgres", user=PASSWORD_ROLE, password=SECRET)
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.OperationalError:
        pass
    else:
        pytest.skip("this server does not check passwords for the test role")

    result = _run_module("migrate", "--dsn", dsn)

    assert 1 == result.returncode
    # The reason is libpq's: "password authentication failed" on the test cluster.
    assert "otel-pg migrate: error: cannot connect" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_unreachable_server_exits_1_without_showing_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An address where nothing listens exits 1, the DSN shown with its password redacted."""
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:{_closed_port()}/postgres"

    assert 1 == main(["migrate", "--dsn", dsn])

    captured = capsys.readouterr()
    assert "postgres:***@127.0.0.1" in captured.err
    assert SECRET not in captured.err + captured.out


@pytest.mark.parametrize(
    "dsn",
    [f"host=127.0.0.1 password={SECRET} garbage", f"postgresql://u:{SECRET}@[::1/x"],
)
def test_malformed_dsn_exits_1_without_showing_the_password(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection string libpq cannot parse exits 1 and never echoes the password."""
    assert 1 == main(["migrate", "--dsn", dsn])

    captured = capsys.readouterr()
    assert "invalid connection string" in captured.err
    assert SECRET not in captured.err + captured.out


def test_rollback_needs_yes(fresh_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`otel-pg rollback` without --yes exits 2 and drops nothing; with --yes it drops the table."""
    assert 0 == main(["migrate", *migrate_args(), "--dsn", fresh_dsn])

    assert 2 == main(["rollback", "--dsn", fresh_dsn])
    assert "--yes" in capsys.readouterr().err
    assert _table_exists(fresh_dsn, "trace_spans")

    assert 0 == main(["rollback", "--dsn", fresh_dsn, "--yes"])
    assert not _table_exists(fresh_dsn, "trace_spans")
    assert [] == applied_versions(fresh_dsn)


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["migrate", "--table", ""], ["migrate", "--no-such-option"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or unknown command, a bad option or an empty table name exits 2."""
    assert 2 == main(argv)
    assert "error" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`otel-pg migrate --help` prints the options and exits 0."""
    assert 0 == main(["migrate", "--help"])
    assert "--dsn" in capsys.readouterr().out
