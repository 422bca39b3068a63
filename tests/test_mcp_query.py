"""The MCP `query` tool against a real PostgreSQL: every unsafe attempt is refused and leaves
the table as it was, results are capped, and a role that could do harm gets no `query` at all
(while the other tools keep working)."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mcp.client.session import ClientSession
from planted import TRACE_A, Planted, plant
from test_mcp import call, drop_role, fingerprint, in_session, ok, rows

from otel_pg_exporter.cli import main
from otel_pg_exporter.mcp.reader import role_problems
from otel_pg_exporter.query import Target
from otel_pg_exporter.testing.devdb import PgServer

PWNED = Path("/tmp/otel_pg_mcp_pwned")  # noqa: S108 - a file no attempt may create

# Each attempt and a phrase of the tool error it must give.
ATTEMPTS: dict[str, tuple[str, str]] = {
    "insert": (
        "INSERT INTO trace_spans (trace_id) VALUES ('x')",
        'syntax error at or near "INSERT"',
    ),
    "update": ("UPDATE trace_spans SET status = 'ok'", 'syntax error at or near "UPDATE"'),
    "delete": ("DELETE FROM trace_spans", 'syntax error at or near "DELETE"'),
    "truncate": ("TRUNCATE trace_spans", 'syntax error at or near "TRUNCATE"'),
    "drop": ("DROP TABLE trace_spans", 'syntax error at or near "DROP"'),
    "create": ("CREATE TABLE evil (x int)", 'syntax error at or near "CREATE"'),
    "commit then delete": ("COMMIT; DELETE FROM trace_spans", 'syntax error at or near "COMMIT"'),
    "two statements": (
        "SELECT 1; DELETE FROM trace_spans",
        "cannot insert multiple commands into a prepared statement",
    ),
    "copy to program": (
        f"COPY trace_spans TO PROGRAM 'touch {PWNED}'",
        'syntax error at or near "COPY"',
    ),
    "read a server file": (
        "SELECT pg_read_file('/etc/passwd')",
        "permission denied for function pg_read_file",
    ),
    "import a server file": (
        "SELECT lo_import('/etc/passwd')",
        "permission denied for function lo_import",
    ),
    "terminate a backend": (
        "SELECT pg_terminate_backend({admin_pid})",
        "must be a superuser to terminate superuser process",
    ),
    "set role": ("SET ROLE postgres", 'syntax error at or near "SET"'),
    "set_config role": (
        "SELECT set_config('role', 'postgres', false)",
        'permission denied to set role "postgres"',
    ),
    "read-write by default": (
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "it changed the setting(s) default_transaction_read_only",
    ),
    "no statement timeout": (
        "SELECT set_config('statement_timeout', '0', false)",
        "it changed the setting(s) statement_timeout",
    ),
    "lock table": ("LOCK TABLE trace_spans", 'syntax error at or near "LOCK"'),
    "advisory lock": ("SELECT pg_advisory_lock(1)", "it took advisory lock(s)"),
    "select for update": (
        "SELECT * FROM trace_spans FOR UPDATE",
        "cannot execute SELECT FOR UPDATE in a read-only transaction",
    ),
    "delete in a CTE": (
        "WITH gone AS (DELETE FROM trace_spans RETURNING *) SELECT count(*) FROM gone",
        "DECLARE CURSOR must not contain data-modifying statements in WITH",
    ),
    "sleep": ("SELECT pg_sleep(100)", "query cancelled: it ran past the 1 s timeout"),
    "sleep after lifting the timeout": (
        "SELECT set_config('statement_timeout', '0', false), pg_sleep(100)",
        "query cancelled: it ran past the 1 s timeout",
    ),
}


@pytest.fixture(scope="module")
def planted(module_database: str) -> Planted:
    return Planted(module_database, plant(module_database))


@pytest.fixture(scope="module")
def reader(planted: Planted, pg_cluster: PgServer) -> Iterator[str]:
    """The DSN of a role made by `otel-pg grant reader`."""
    name = f"reader_{uuid.uuid4().hex[:8]}"
    assert 0 == main(["grant", "reader", name, "--dsn", planted.dsn])
    yield pg_cluster.dsn_for(planted.dsn.rsplit("/", 1)[1], user=name)
    drop_role(planted.dsn, name)


def test_every_unsafe_query_is_refused_and_the_table_is_unchanged(
    planted: Planted, reader: str
) -> None:
    """As a reader role made by `otel-pg grant reader`: writes, DDL, several statements,
    server files and programs, signalling a superuser's backend, role and setting changes,
    locks and endless queries all come back as tool errors; afterwards the table, the admin's
    session and the reader's defaults are as they were."""
    before = fingerprint(planted.dsn)
    admin = psycopg.connect(planted.dsn, autocommit=True)
    admin_pid = admin.info.backend_pid

    async def steps(session: ClientSession) -> dict[str, tuple[bool, str]]:
        answers = {}
        for name, (statement, _) in ATTEMPTS.items():
            answers[name] = await call(session, "query", sql=statement.format(admin_pid=admin_pid))
        answers["allowed"] = await call(
            session, "query", sql=f"SELECT count(*) FROM trace_tree('{TRACE_A}')"
        )
        return answers

    started = time.monotonic()
    try:
        answers, stderr = in_session(reader, steps, "--query-timeout", "1")
        elapsed = time.monotonic() - started
        assert (1,) == admin.execute("SELECT 1").fetchone()
    finally:
        admin.close()

    for name, (_, phrase) in ATTEMPTS.items():
        is_error, text = answers[name]
        assert is_error, (name, text)
        assert phrase in text, (name, text)
    assert (False, [[4]]) == (answers["allowed"][0], rows(answers["allowed"][1])[1:])
    assert before == fingerprint(planted.dsn)
    assert not PWNED.exists()
    with psycopg.connect(reader) as conn:
        assert ("on", "10s") == conn.execute(
            "SELECT current_setting('default_transaction_read_only'),"
            " current_setting('statement_timeout')"
        ).fetchone()
    with psycopg.connect(planted.dsn) as conn:
        assert (None,) == conn.execute("SELECT to_regclass('evil')").fetchone()
    assert elapsed < 30
    assert "Traceback" not in stderr


def test_results_are_capped_in_rows_and_characters(planted: Planted, reader: str) -> None:
    """A huge cross join stops at the character cap, a long series at 200 rows; each says so."""

    async def steps(session: ClientSession) -> tuple[str, str]:
        return (
            await ok(session, "query", sql="SELECT * FROM trace_spans a, trace_spans b"),
            await ok(session, "query", sql="SELECT g FROM generate_series(1, 10000000) g"),
        )

    (cross, series), _ = in_session(reader, steps)

    assert len(cross) < 24_000
    assert "cut: more rows past the 20,000-character cap" in cross
    assert 38 == len(rows(cross)[0]["columns"])
    assert [{"columns": ["g"]}, *[[n] for n in range(1, 201)]] == rows(series)
    assert "cut: more rows past the cap of 200" in series


def test_a_superuser_connection_gets_no_query_but_every_other_tool(planted: Planted) -> None:
    """Connected as the superuser, `query` is refused outright, naming the problem and the fix;
    get_trace and schema still answer."""
    before = fingerprint(planted.dsn)

    async def steps(session: ClientSession) -> tuple[tuple[bool, str], str, str]:
        return (
            await call(session, "query", sql="SELECT 1"),
            await ok(session, "get_trace", trace_id=TRACE_A),
            await ok(session, "schema"),
        )

    ((is_error, refused), trace, schema), _ = in_session(planted.dsn, steps)

    assert is_error
    assert "query refused: the connection's role could do harm" in refused
    assert "role 'postgres' is a superuser" in refused
    assert "otel-pg grant reader NAME" in refused
    assert 4 == len(rows(trace))
    assert "trace_tree" in schema
    assert before == fingerprint(planted.dsn)


@pytest.mark.parametrize(
    ("grant", "problem"),
    [
        ("GRANT INSERT ON trace_spans TO {role}", "can INSERT 'trace_spans'"),
        ("GRANT UPDATE (status) ON trace_spans TO {role}", "can UPDATE 'trace_spans'"),
        ("GRANT DELETE, TRUNCATE ON trace_spans TO {role}", "can DELETE/TRUNCATE 'trace_spans'"),
        ("ALTER TABLE trace_spans OWNER TO {role}", "owns 'trace_spans'"),
        ("GRANT pg_write_server_files TO {role}", "is a member of pg_write_server_files"),
        ("GRANT pg_execute_server_program TO {role}", "is a member of pg_execute_server_program"),
        ("GRANT pg_read_server_files TO {role}", "is a member of pg_read_server_files"),
        ("GRANT pg_signal_backend TO {role}", "is a member of pg_signal_backend"),
        ("ALTER ROLE {role} CREATEROLE", "has CREATEROLE"),
        ("ALTER ROLE {role} CREATEDB", "has CREATEDB"),
        ("ALTER ROLE {role} BYPASSRLS", "has BYPASSRLS"),
        ("GRANT postgres TO {role}", "is a superuser (through role 'postgres')"),
        (
            "CREATE ROLE {role}_w NOLOGIN; GRANT INSERT ON trace_spans TO {role}_w;"
            " GRANT {role}_w TO {role}",
            "can INSERT 'trace_spans' (through role",
        ),
    ],
)
def test_a_role_that_could_do_harm_is_named(
    planted: Planted, reader: str, grant: str, problem: str
) -> None:
    """Whatever makes a role unfit for `query` (itself or through a role it can become), the
    refusal names it; the grant rolled back, the reader is fit again."""
    role = reader.rsplit("@", 1)[0].rsplit("/", 1)[1]
    with (
        psycopg.connect(planted.dsn, autocommit=True) as admin,
        admin.transaction(force_rollback=True),
    ):
        for statement in grant.split(";"):
            admin.execute(statement.strip().format(role=role).encode())
        problems = role_problems(admin, Target(), role)
    with psycopg.connect(reader) as conn:
        assert [] == role_problems(conn, Target())
    assert any(problem in p for p in problems), problems
