"""Migrations against a real PostgreSQL: the table contract, idempotence, concurrency, rollback."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from otel_pg_exporter.schema.migrations import (
    MIGRATIONS_TABLE,
    MigrationError,
    applied_versions,
    available_migrations,
    index_name,
    migrate,
    rollback,
    upgrade,
)
from otel_pg_exporter.schema.table import (
    COLUMNS,
    FUNCTIONS,
    INDEXES,
    PRIMARY_KEY,
    function_names,
    index_names,
)

CONTRACT_COLUMNS = [
    ("trace_id", "text", "NO", None),
    ("span_id", "text", "NO", None),
    ("parent_span_id", "text", "YES", None),
    ("service", "text", "NO", None),
    ("operation", "text", "NO", None),
    ("kind", "text", "NO", None),
    ("started_at", "timestamp with time zone", "NO", None),
    ("completed_at", "timestamp with time zone", "NO", None),
    ("duration_ms", "double precision", "NO", None),
    ("status", "text", "NO", None),
    ("status_message", "text", "YES", None),
    ("execution_id", "bigint", "YES", None),
    ("metadata", "jsonb", "NO", "'{}'::jsonb"),
    ("events", "jsonb", "YES", None),
    ("links", "jsonb", "YES", None),
    ("resource", "jsonb", "YES", None),
    ("scope", "text", "YES", None),
    ("otel", "jsonb", "YES", None),
    ("created_at", "timestamp with time zone", "NO", "now()"),
]

HOSTILE_NAMES = [
    "trace_spans; DROP TABLE x",
    'odd"name$$; DROP TABLE x; --',
    "Spans Ümlaut {table}",
]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _all_versions() -> list[int]:
    return [migration.version for migration in available_migrations()]


def _columns(dsn: str, schema: str, table: str) -> list[tuple[str, str, str, str | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def _primary_key(dsn: str, schema: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT k.column_name FROM information_schema.table_constraints c"
            " JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)"
            " WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = %s"
            " AND c.table_name = %s ORDER BY k.ordinal_position",
            (schema, table),
        ).fetchall()
    return [row[0] for row in rows]


def _indexes(dsn: str, schema: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
            (schema, table),
        ).fetchall()
    return {row[0]: row[1] for row in rows}


def _relations(dsn: str) -> set[tuple[str, str, str]]:
    """Every table, index, view and sequence outside the system schemas."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%'"
        ).fetchall()
    return {(row[0], row[1], row[2]) for row in rows}


def _history(dsn: str, schema: str = "public") -> list[tuple[str, int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT table_name, version, name FROM {} ORDER BY 1, 2").format(
                psycopg.sql.Identifier(schema, MIGRATIONS_TABLE)
            )
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def test_migrate_creates_the_contract_table(fresh_dsn: str) -> None:
    """Migrating an empty database creates exactly the contract columns, key, indexes, comments."""
    assert _all_versions() == migrate(fresh_dsn)

    assert CONTRACT_COLUMNS == _columns(fresh_dsn, "public", "trace_spans")
    assert ["trace_id", "span_id"] == _primary_key(fresh_dsn, "public", "trace_spans")
    indexes = _indexes(fresh_dsn, "public", "trace_spans")
    assert {
        "trace_spans_pkey",
        "trace_spans_created_at_idx",
        "trace_spans_execution_id_idx",
        "trace_spans_service_started_at_idx",
        "trace_spans_started_at_idx",
        "trace_spans_errors_started_at_idx",
    } == set(indexes)
    assert indexes["trace_spans_errors_started_at_idx"].endswith(
        "USING btree (started_at) WHERE (status = 'error'::text)"
    )
    assert indexes["trace_spans_created_at_idx"].endswith("USING btree (created_at)")
    assert indexes["trace_spans_execution_id_idx"].endswith(
        "USING btree (execution_id) WHERE (execution_id IS NOT NULL)"
    )
    assert indexes["trace_spans_service_started_at_idx"].endswith(
        "USING btree (service, started_at)"
    )
    with psycopg.connect(fresh_dsn) as conn:
        row = conn.execute("SELECT obj_description('trace_spans'::regclass, 'pg_class')").fetchone()
        uncommented = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'trace_spans'::regclass"
            " AND attnum > 0 AND NOT attisdropped"
            " AND col_description(attrelid, attnum) IS NULL"
        ).fetchall()
    assert row is not None
    assert "OpenTelemetry" in row[0]
    assert [] == uncommented
    expected_history = [
        ("trace_spans", migration.version, migration.name) for migration in available_migrations()
    ]
    assert expected_history == _history(fresh_dsn)
    assert _all_versions() == applied_versions(fresh_dsn)


def test_the_table_module_declares_what_the_migrations_create(fresh_dsn: str) -> None:
    """schema/table.py's columns, key and index names are those of the migrated table: the
    writer and the query layer build their SQL from them."""
    migrate(fresh_dsn)

    columns = _columns(fresh_dsn, "public", "trace_spans")
    assert list(COLUMNS) == [(name, pg_type) for name, pg_type, _, _ in columns]
    assert list(PRIMARY_KEY) == _primary_key(fresh_dsn, "public", "trace_spans")
    assert set(index_names("trace_spans").values()) == (
        set(_indexes(fresh_dsn, "public", "trace_spans")) - {"trace_spans_pkey"}
    )
    assert set(INDEXES) == set(index_names("trace_spans"))


def test_migrate_recreates_a_table_dropped_by_hand(fresh_dsn: str) -> None:
    """With the history intact but the table dropped by hand, migrate recreates the table and
    its indexes (empty) instead of reporting the database up to date."""
    migrate(fresh_dsn)
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute("DROP TABLE trace_spans CASCADE")  # the query functions depend on it

    result = upgrade(fresh_dsn)

    assert [] == result.applied
    assert ["trace_spans"] == result.recreated  # with everything built on it
    assert set(FUNCTIONS) <= _functions(fresh_dsn, "public")
    assert CONTRACT_COLUMNS == _columns(fresh_dsn, "public", "trace_spans")
    assert {"trace_spans_pkey", *index_names("trace_spans").values()} == set(
        _indexes(fresh_dsn, "public", "trace_spans")
    )
    assert [] == upgrade(fresh_dsn).recreated


def test_migrate_recreates_an_index_dropped_by_hand_and_keeps_the_rows(fresh_dsn: str) -> None:
    """A missing index is recreated; the table and its rows are left as they are."""
    migrate(fresh_dsn)
    dropped = index_name("trace_spans", "service_started_at")
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute(
            "INSERT INTO trace_spans (trace_id, span_id, service, operation, kind, started_at,"
            " completed_at, duration_ms, status) VALUES ('t', 's', 'svc', 'op', 'internal',"
            " now(), now(), 0, 'unset')"
        )
        conn.execute(f'DROP INDEX "{dropped}"')

    assert [dropped] == upgrade(fresh_dsn).recreated
    assert dropped in _indexes(fresh_dsn, "public", "trace_spans")
    with psycopg.connect(fresh_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trace_spans").fetchone()
    assert (1,) == row


def _functions(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
    return {row[0] for row in rows}


def test_second_migrate_is_a_noop(fresh_dsn: str) -> None:
    """A second run applies nothing, returns an empty list and leaves the history as it was."""
    migrate(fresh_dsn)
    with psycopg.connect(fresh_dsn) as conn:
        before = conn.execute(f"SELECT * FROM {MIGRATIONS_TABLE} ORDER BY version").fetchall()

    assert [] == migrate(fresh_dsn)

    with psycopg.connect(fresh_dsn) as conn:
        after = conn.execute(f"SELECT * FROM {MIGRATIONS_TABLE} ORDER BY version").fetchall()
    assert before == after


def test_concurrent_migrations_apply_once(fresh_dsn: str) -> None:
    """Four migrate runs started together all succeed and each version is applied exactly once."""
    runs = 4
    start_together = threading.Barrier(runs)

    def run() -> list[int]:
        start_together.wait()
        return migrate(fresh_dsn)

    with ThreadPoolExecutor(max_workers=runs) as pool:
        results = [future.result() for future in [pool.submit(run) for _ in range(runs)]]

    assert _all_versions() == sorted(version for result in results for version in result)
    assert [] in results
    assert len(_all_versions()) == len(_history(fresh_dsn))


def test_custom_schema_and_table(fresh_dsn: str) -> None:
    """A schema and table name put the table and its own history there, nothing in public."""
    assert _all_versions() == migrate(fresh_dsn, schema="obs", table="spans")
    assert _all_versions() == migrate(fresh_dsn, schema="obs", table="spans_b")

    assert CONTRACT_COLUMNS == _columns(fresh_dsn, "obs", "spans")
    assert CONTRACT_COLUMNS == _columns(fresh_dsn, "obs", "spans_b")
    assert {"spans_pkey", *index_names("spans").values()} == set(
        _indexes(fresh_dsn, "obs", "spans")
    )
    assert {f"spans_{base}" for base in FUNCTIONS} == _functions(fresh_dsn, "obs") & {
        f"spans_{base}" for base in FUNCTIONS
    }
    assert {"spans", "spans_b"} == {row[0] for row in _history(fresh_dsn, "obs")}
    assert _all_versions() == applied_versions(fresh_dsn, schema="obs", table="spans")
    assert [] == applied_versions(fresh_dsn)
    assert set() == {relation for relation in _relations(fresh_dsn) if relation[0] == "public"}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_table_name_carrying_sql_is_only_a_name(fresh_dsn: str, name: str) -> None:
    """A table name holding SQL creates a table of exactly that name and runs nothing else."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE x (i int)")
        conn.execute("INSERT INTO x VALUES (1)")

    assert _all_versions() == migrate(fresh_dsn, table=name)

    tables = {relation[1] for relation in _relations(fresh_dsn) if relation[2] == "r"}
    assert {"x", name, MIGRATIONS_TABLE} == tables
    assert CONTRACT_COLUMNS == _columns(fresh_dsn, "public", name)
    expected_history = [
        (name, migration.version, migration.name) for migration in available_migrations()
    ]
    assert expected_history == _history(fresh_dsn)

    rollback(fresh_dsn, table=name)

    tables = {relation[1] for relation in _relations(fresh_dsn) if relation[2] == "r"}
    assert {"x"} == tables
    with psycopg.connect(fresh_dsn) as conn:
        assert [(1,)] == conn.execute("SELECT i FROM x").fetchall()


def test_rollback_removes_everything_and_migrate_works_again(fresh_dsn: str) -> None:
    """Rollback leaves the database as before the migration, and a new migrate starts over."""
    before = _relations(fresh_dsn)
    migrate(fresh_dsn)

    rollback(fresh_dsn)

    assert before == _relations(fresh_dsn)
    assert [] == applied_versions(fresh_dsn)
    assert _all_versions() == migrate(fresh_dsn)


def test_rollback_keeps_the_history_of_other_tables(fresh_dsn: str) -> None:
    """Rolling back one table keeps another's history; the last rollback drops the history."""
    migrate(fresh_dsn, schema="obs", table="a")
    migrate(fresh_dsn, schema="obs", table="b")

    rollback(fresh_dsn, schema="obs", table="a")

    assert {"b"} == {row[0] for row in _history(fresh_dsn, "obs")}
    assert _all_versions() == applied_versions(fresh_dsn, schema="obs", table="b")

    rollback(fresh_dsn, schema="obs", table="b")

    assert set() == {relation for relation in _relations(fresh_dsn) if relation[0] == "obs"}


def test_rollback_of_a_database_never_migrated_is_a_noop(fresh_dsn: str) -> None:
    """Rolling back where nothing was migrated changes nothing and raises nothing."""
    before = _relations(fresh_dsn)

    rollback(fresh_dsn)

    assert before == _relations(fresh_dsn)


def test_migrate_refuses_an_existing_table_it_did_not_create(fresh_dsn: str) -> None:
    """A table of the same name made by someone else is neither altered, indexed nor recorded."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE trace_spans (id int)")

    with pytest.raises(MigrationError, match="already exists"):
        migrate(fresh_dsn)

    assert [("id", "integer", "YES", None)] == _columns(fresh_dsn, "public", "trace_spans")
    assert {} == _indexes(fresh_dsn, "public", "trace_spans")
    assert [] == applied_versions(fresh_dsn)


def test_rollback_leaves_a_table_it_did_not_create(fresh_dsn: str) -> None:
    """Rollback refuses to drop a same-named table that migrate never recorded."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE trace_spans (id int)")

    with pytest.raises(MigrationError, match="not recorded"):
        rollback(fresh_dsn)

    assert [("id", "integer", "YES", None)] == _columns(fresh_dsn, "public", "trace_spans")


def test_longest_table_name_gets_distinct_index_names(fresh_dsn: str) -> None:
    """A 63-byte table name still gets distinct index and function names of at most 63
    bytes."""
    name = "s" * 61 + "é"

    migrate(fresh_dsn, table=name)

    names = set(_indexes(fresh_dsn, "public", name))
    assert 1 + len(INDEXES) == len(names)
    functions = set(function_names(name).values())
    assert len(FUNCTIONS) == len(functions)
    assert functions <= _functions(fresh_dsn, "public")
    assert all(len(function.encode()) <= 63 for function in functions)
    assert all(len(index.encode()) <= 63 for index in names)
    assert index_name(name, "created_at") in names


def test_index_name_cuts_on_a_character_boundary() -> None:
    """Shortened index names stay valid UTF-8, within 63 bytes, and differ per table."""
    first = index_name("é" * 31 + "a", "service_started_at")
    second = index_name("é" * 31 + "b", "service_started_at")

    assert first != second
    assert 63 >= len(first.encode())
    assert first.endswith("_service_started_at_idx")
    assert "trace_spans_created_at_idx" == index_name("trace_spans", "created_at")


@pytest.mark.parametrize(
    ("schema", "table", "parameter"),
    [(None, "", "table"), ("", "trace_spans", "schema"), (None, "t" * 64, "table")],
)
def test_bad_names_raise_value_error(schema: str | None, table: str, parameter: str) -> None:
    """An empty or over-long schema or table name raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match=parameter):
        migrate("", schema=schema, table=table)


def test_connection_failure_message_has_no_password() -> None:
    """An unreachable server raises MigrationError whose message hides the password."""
    dsn = f"postgresql://postgres:Hunter2-Secret@127.0.0.1:{closed_port()}/postgres"

    with pytest.raises(MigrationError) as raised:
        migrate(dsn)

    assert "Hunter2-Secret" not in str(raised.value)
    assert "***" in str(raised.value)


def test_migrate_runs_untraced_under_psycopg_instrumentation(fresh_dsn: str) -> None:
    """With psycopg auto-instrumentation on, migrate's own queries produce no spans."""
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.psycopg")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = instrumentation.PsycopgInstrumentor()
    instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    try:
        migrate(fresh_dsn)
        rollback(fresh_dsn)
        assert [] == list(exporter.get_finished_spans())
        with psycopg.connect(fresh_dsn) as conn:
            conn.execute("SELECT 1")
        assert 1 <= len(exporter.get_finished_spans())  # the instrumentation was really on
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_migrate_of_an_empty_database_is_fast(fresh_dsn: str) -> None:
    """Migrating an empty database takes well under the 10-second target."""
    started = time.perf_counter()
    migrate(fresh_dsn)
    elapsed = time.perf_counter() - started

    print(f"migrate on an empty database: {elapsed * 1000:.0f} ms")
    assert elapsed < 10.0
