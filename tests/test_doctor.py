"""`otel-pg doctor` against a real PostgreSQL: its checks, their fixes, exit codes, no leaks."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from spans import SpanFactory

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.cli import main
from otel_pg_exporter.export.exporter import spool_folder_key
from otel_pg_exporter.testing.devdb import PgServer

SECRET = "Hunter2-Secret"
DATABASE_CHECKS = [
    "dsn",
    "connection",
    "server version",
    "schema",
    "table",
    "privileges",
    "table size",
    "rows per day",
    "oldest row",
]
LOCAL_CHECKS = ["tracing", "setting dsn", "setting timeout", "setting spool_dir", "spool dir"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _doctor_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--json", *argv])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, document


def _check(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in document["checks"] if c["name"] == name]
    assert 1 == len(found), f"{len(found)} checks named {name!r}"
    return found[0]


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


@pytest.fixture
def role_without_insert(migrated_dsn: str, pg_cluster: PgServer) -> Iterator[str]:
    """The DSN of a new role (with a password) that may read the spans table but not insert."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(SECRET)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON trace_spans, otel_pg_schema_migrations TO {}").format(
                sql.Identifier(role)
            )
        )
    dbname = str(conninfo_to_dict(migrated_dsn)["dbname"])
    yield pg_cluster.dsn_for(dbname, user=role, password=SECRET)
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_doctor_passes_on_a_migrated_database(
    migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a migrated database doctor exits 0 and prints every check as `status  name: finding`."""
    assert 0 == main(["doctor", "--dsn", migrated_dsn])

    out = capsys.readouterr().out
    names = [match[1] for match in re.finditer(r"^(?:ok|warn|FAIL)  +([^:]+):", out, re.M)]
    assert [] == [name for name in DATABASE_CHECKS + LOCAL_CHECKS if name not in names]
    assert "FAIL" not in out
    assert out.splitlines()[-1].startswith("0 failure(s), ")


def test_doctor_json_reports_stored_rows(
    migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one object whose checks count the rows stored today and their oldest."""
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True)
    factory = SpanFactory()
    assert SpanExportResult.SUCCESS == exporter.export([factory.span(f"op{i}") for i in range(3)])
    exporter.shutdown()

    code, document = _doctor_json(capsys, "--dsn", migrated_dsn)

    assert (0, True) == (code, document["ok"])
    assert {"name", "status", "finding", "fix"} == set(document["checks"][0])
    assert ("ok", None) == (_check(document, "schema")["status"], _check(document, "schema")["fix"])
    assert _check(document, "rows per day")["finding"].endswith("; 3 in 7 days")
    assert "ago)" in _check(document, "oldest row")["finding"]


def test_doctor_fails_the_schema_of_an_empty_database(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without migrations doctor FAILs schema and table, says to migrate, and exits 1."""
    code, document = _doctor_json(capsys, "--dsn", fresh_dsn)

    schema, table = _check(document, "schema"), _check(document, "table")
    assert (1, False) == (code, document["ok"])
    assert ("FAIL", "FAIL") == (schema["status"], table["status"])
    assert "run otel-pg migrate --dsn ..." == schema["fix"]
    assert "does not exist" in table["finding"]


def test_doctor_on_a_down_database_fails_without_traceback_or_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A closed port gives a FAIL connection line and exit 1; the password is shown nowhere."""
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:{_closed_port()}/postgres"

    assert 1 == main(["doctor", "--dsn", dsn])

    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    (failure,) = [line for line in lines if line.startswith("FAIL")]
    assert failure.startswith("FAIL  connection: cannot connect to 'postgresql://postgres:***@")
    assert lines[lines.index(failure) + 1].startswith("  fix: start the database")
    assert "Traceback" not in captured.out + captured.err
    assert SECRET not in captured.out + captured.err


def test_doctor_fails_privileges_of_a_role_without_insert(
    role_without_insert: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role that may not INSERT into the table FAILs privileges, with the GRANT to run."""
    code, document = _doctor_json(capsys, "--dsn", role_without_insert)

    privileges = _check(document, "privileges")
    assert (1, "FAIL") == (code, privileges["status"])
    assert (
        "lacks INSERT on public.trace_spans, UPDATE on public.trace_spans"
        in (privileges["finding"])
    )
    assert "GRANT INSERT, UPDATE ON " in privileges["fix"]
    assert ["privileges"] == [c["name"] for c in document["checks"] if c["status"] == "FAIL"]
    assert SECRET not in json.dumps(document)


def test_doctor_warns_when_tracing_is_off(
    migrated_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ENABLE_DB_TRACING off doctor warns that nothing is written, and still exits 0."""
    monkeypatch.setenv("ENABLE_DB_TRACING", "false")

    code, document = _doctor_json(capsys, "--dsn", migrated_dsn)

    tracing = _check(document, "tracing")
    assert (0, "warn") == (code, tracing["status"])
    assert tracing["finding"].endswith("nothing is written")
    assert "False (from ENABLE_DB_TRACING)" == _check(document, "setting enabled")["finding"]


def test_doctor_names_where_each_setting_came_from(
    migrated_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Settings show their value and source (argument, variable, default); a bad one warns."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_DSN", migrated_dsn)
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_TIMEOUT", "soon")
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_POOL_MAX", "3")

    code, document = _doctor_json(capsys, "--table", "trace_spans")

    assert 0 == code
    assert (
        f"{migrated_dsn!r} (from OTEL_EXPORTER_POSTGRES_DSN)"
        == (_check(document, "setting dsn")["finding"])
    )
    assert "'trace_spans' (from argument)" == _check(document, "setting table")["finding"]
    assert (
        "3 (from OTEL_EXPORTER_POSTGRES_POOL_MAX)"
        == (_check(document, "setting pool_max")["finding"])
    )
    timeout = _check(document, "setting timeout")
    assert ("warn", "correct or unset OTEL_EXPORTER_POSTGRES_TIMEOUT") == (
        timeout["status"],
        timeout["fix"],
    )


def test_doctor_warns_about_spans_waiting_in_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spool folder with orphaned spans is a warning whose fix is otel-pg spool replay."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_SPOOL_DIR", str(tmp_path))
    dsn = f"postgresql://otel@127.0.0.1:{_closed_port()}/traces"
    exporter = PostgresSpanExporter(dsn, enabled=True, timeout=1, spool_dir=str(tmp_path))
    factory = SpanFactory()
    exporter.export([factory.span(f"op{i}") for i in range(4)])
    exporter.shutdown()

    code, document = _doctor_json(capsys, "--dsn", dsn)

    spool = _check(document, f"spool {spool_folder_key(dsn, None, 'trace_spans')}")
    assert (1, "warn") == (code, spool["status"])
    assert spool["finding"].startswith("4 rows in 1 segment(s), ")
    assert spool["finding"].endswith("no live owner (this target)")
    assert "spans waiting: run otel-pg spool replay --dsn ..." == spool["fix"]
