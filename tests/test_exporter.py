"""PostgresSpanExporter against a real PostgreSQL: storage, failures, locks, names, suppression."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from layout import migrate_table
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql
from support import wait_until

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter.testing.devdb import PASSWORD_ROLE, PgServer

SUCCESS = SpanExportResult.SUCCESS
FAILURE = SpanExportResult.FAILURE
SERVICE = "exporter-tests"
SECRET = "Hunter2-Secret"
RIGHT_PASSWORD = "Right-Pass-4096"

HOSTILE_NAMES = [
    "trace_spans; DROP TABLE x",
    'odd"name$$; DROP TABLE x; --',
    "Spans Ümlaut {table}",
]

ExporterFactory = Callable[..., PostgresSpanExporter]


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own database: none leaks in from the developer's shell."""
    for name in (
        ev.OTEL_EXPORTER_POSTGRES_DSN,
        "DATABASE_URL",
        ev.OTEL_EXPORTER_POSTGRES_SCHEMA,
        ev.OTEL_EXPORTER_POSTGRES_TABLE,
        ev.OTEL_EXPORTER_POSTGRES_TIMEOUT,
        ev.OTEL_EXPORTER_POSTGRES_POOL_MAX,
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_exporter() -> Iterator[ExporterFactory]:
    """Builds exporters and shuts every one down after the test, so no pool outlives it."""
    made: list[PostgresSpanExporter] = []

    def make(*args: Any, **kwargs: Any) -> PostgresSpanExporter:
        exporter = PostgresSpanExporter(*args, **kwargs)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown()


def make_spans(count: int, service: str = SERVICE) -> list[ReadableSpan]:
    """``count`` finished root spans made by the real SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.test_exporter")
    for index in range(count):
        with tracer.start_as_current_span(f"operation {index}") as span:
            span.set_attribute("index", index)
    provider.shutdown()
    return list(memory.get_finished_spans())


def span_keys(spans: list[ReadableSpan]) -> set[tuple[str, str]]:
    keys = set()
    for span in spans:
        context = span.get_span_context()
        assert context is not None
        keys.add((f"{context.trace_id:032x}", f"{context.span_id:016x}"))
    return keys


def target(table: str = "trace_spans", schema: str | None = None) -> sql.Identifier:
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def count_rows(dsn: str, table: str = "trace_spans", schema: str | None = None) -> int:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}").format(target(table, schema))
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def stored_keys(
    dsn: str, table: str = "trace_spans", schema: str | None = None
) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT trace_id, span_id FROM {}").format(target(table, schema))
        return {(str(trace_id), str(span_id)) for trace_id, span_id in conn.execute(query)}


def table_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def our_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "otel_pg_exporter" and record.levelno >= logging.WARNING
    ]


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record of every logger, formatted, exception text included."""
    return caplog.text + "\n".join(record.getMessage() for record in caplog.records)


def timed_export(exporter: PostgresSpanExporter, spans: list[ReadableSpan]) -> tuple[Any, float]:
    started = time.monotonic()
    result = exporter.export(spans)
    return result, time.monotonic() - started


# --- the happy path -------------------------------------------------------------------------


def test_export_stores_every_span(migrated_dsn: str, make_exporter: ExporterFactory) -> None:
    """A batch exports with SUCCESS and every span is a row keyed by its W3C ids."""
    spans = make_spans(25)
    exporter = make_exporter(migrated_dsn)

    assert SUCCESS == exporter.export(spans)

    assert span_keys(spans) == stored_keys(migrated_dsn)
    expected = {
        "spans_exported": 25,
        "spans_duplicate": 0,
        "spans_rejected": 0,
        "spans_failed": 0,
        "spans_spooled": 0,
        "export_calls": 1,
        "export_failures": 0,
    }
    stats = exporter.stats()
    assert expected == {key: stats[key] for key in expected}


def test_exporting_the_same_batch_twice_stores_no_duplicates(
    migrated_dsn: str, make_exporter: ExporterFactory
) -> None:
    """A re-exported batch succeeds, adds no row, and is counted as duplicates."""
    spans = make_spans(10)
    exporter = make_exporter(migrated_dsn)

    assert (SUCCESS, SUCCESS) == (exporter.export(spans), exporter.export(spans))

    assert 10 == count_rows(migrated_dsn)
    stats = exporter.stats()
    assert (10, 10, 2, 0) == (
        stats["spans_exported"],
        stats["spans_duplicate"],
        stats["export_calls"],
        stats["export_failures"],
    )


def test_an_empty_batch_succeeds_without_touching_the_database(
    make_exporter: ExporterFactory,
) -> None:
    """export([]) is SUCCESS even with an unreachable DSN, and opens no pool."""
    exporter = make_exporter(f"postgresql://otel@127.0.0.1:{closed_port()}/traces")

    assert SUCCESS == exporter.export([])
    assert exporter._writer._pool is None


def test_exporter_without_arguments_takes_its_target_from_the_environment(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, make_exporter: ExporterFactory
) -> None:
    """PostgresSpanExporter() writes where OTEL_EXPORTER_POSTGRES_DSN/_SCHEMA/_TABLE point."""
    migrate_table(fresh_dsn, schema="from_env", table="env_spans")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{closed_port()}/not_this")
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_DSN, fresh_dsn)
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_SCHEMA, "from_env")
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_TABLE, "env_spans")

    assert SUCCESS == make_exporter().export(make_spans(3))

    assert 3 == count_rows(fresh_dsn, schema="from_env", table="env_spans")


# --- the database fails ---------------------------------------------------------------------


def test_unreachable_database_fails_fast_and_warns_once_without_the_password(
    make_exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A closed port fails two exports quickly, with one warning and the password nowhere."""
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(
        f"postgresql://otel:{SECRET}@127.0.0.1:{closed_port()}/traces", timeout=5
    )
    spans = make_spans(3)

    first, first_s = timed_export(exporter, spans)
    second, second_s = timed_export(exporter, spans)

    assert (FAILURE, FAILURE) == (first, second)
    assert first_s < 4, f"first export took {first_s:.2f} s"
    assert second_s < 4, f"second export took {second_s:.2f} s"
    warnings = our_warnings(caplog)
    assert 1 == len(warnings), warnings
    assert "Could not store 3 spans" in warnings[0]
    assert SECRET not in all_log_text(caplog)
    assert SECRET not in repr(exporter)
    assert (2, 6) == (exporter.stats()["export_failures"], exporter.stats()["spans_failed"])


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://otel:{SECRET} with spaces@127.0.0.1:1/traces",
        f"postgresql://otel:{SECRET}%zz@127.0.0.1:1/traces",
        f"host=127.0.0.1 port=1 password={SECRET} garbage",
    ],
    ids=["space-in-url-password", "bad-percent-escape", "keyword-garbage"],
)
def test_malformed_dsn_fails_without_showing_the_password(
    make_exporter: ExporterFactory, caplog: pytest.LogCaptureFixture, dsn: str
) -> None:
    """A connection string libpq cannot parse fails the export, its password in no log."""
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(dsn, timeout=2)

    assert FAILURE == exporter.export(make_spans(1))

    assert 1 == len(our_warnings(caplog))
    assert SECRET not in all_log_text(caplog)


@pytest.fixture
def password_role(pg_cluster: PgServer) -> Iterator[str]:
    """The scram-checked role with a known password, dropped after the test."""
    drop = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(PASSWORD_ROLE))
    create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(PASSWORD_ROLE), sql.Literal(RIGHT_PASSWORD)
    )
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(create)
    yield RIGHT_PASSWORD
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(drop)


def test_wrong_password_fails_naming_authentication_without_either_password(
    pg_cluster: PgServer,
    password_role: str,
    make_exporter: ExporterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected password fails the export; the warning says authentication, no password shown."""
    dsn = pg_cluster.dsn_for("postgres", user=PASSWORD_ROLE, password=SECRET)
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.OperationalError:
        pass
    else:
        pytest.skip("this server does not check passwords for the test role")
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(dsn, timeout=5)

    result, elapsed = timed_export(exporter, make_spans(2))

    assert FAILURE == result
    assert elapsed < 4, f"export took {elapsed:.2f} s"
    warnings = our_warnings(caplog)
    assert 1 == len(warnings), warnings
    assert "authentication" in warnings[0]
    logged = all_log_text(caplog)
    assert SECRET not in logged
    assert password_role not in logged
    assert SECRET not in repr(exporter)


def test_missing_table_fails_advising_otel_pg_migrate(
    fresh_dsn: str, make_exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Exporting to a database without the table fails with advice to run `otel-pg migrate`."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")
    exporter = make_exporter(fresh_dsn)

    assert FAILURE == exporter.export(make_spans(4))

    warnings = our_warnings(caplog)
    assert 1 == len(warnings), warnings
    assert "otel-pg migrate" in warnings[0]
    assert (1, 4) == (exporter.stats()["export_failures"], exporter.stats()["spans_failed"])


def test_locked_table_fails_within_the_timeout_then_the_batch_is_stored(
    migrated_dsn: str, make_exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind an ACCESS EXCLUSIVE lock an export fails in seconds; once released it succeeds."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")
    exporter = make_exporter(migrated_dsn, timeout=1)
    spans = make_spans(5)
    locker = psycopg.connect(migrated_dsn)
    try:
        locker.execute("LOCK TABLE trace_spans IN ACCESS EXCLUSIVE MODE")
        locked, elapsed = timed_export(exporter, spans)
    finally:
        locker.rollback()
        locker.close()

    assert FAILURE == locked
    assert elapsed < 4, f"export behind the lock took {elapsed:.2f} s"
    warnings = our_warnings(caplog)
    assert 1 == len(warnings), warnings
    assert "lock" in warnings[0].lower()
    # After a lock timeout the exporter spools at once until its next probe (0.5 s at first),
    # then writes directly again.
    wait_until(
        lambda: SUCCESS == exporter.export(spans),
        5,
        interval=0.1,
        message="an export to succeed once the lock is released",
    )
    assert span_keys(spans) == stored_keys(migrated_dsn)


# --- where rows go --------------------------------------------------------------------------


@pytest.mark.parametrize("table", HOSTILE_NAMES)
def test_table_name_carrying_sql_is_only_ever_a_name(
    fresh_dsn: str, make_exporter: ExporterFactory, table: str
) -> None:
    """A table name with SQL in it names one odd table; the SQL never runs."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE x (id int)")
    migrate_table(fresh_dsn, table=table)

    assert SUCCESS == make_exporter(fresh_dsn, table=table).export(make_spans(3))

    assert 3 == count_rows(fresh_dsn, table=table)
    assert table_exists(fresh_dsn, "x")


def test_custom_schema_and_table_receive_the_rows(
    fresh_dsn: str, make_exporter: ExporterFactory
) -> None:
    """With schema and table given, rows land in schema.table and nowhere else."""
    migrate_table(fresh_dsn, schema="telemetry", table="spans")
    spans = make_spans(6)

    assert SUCCESS == make_exporter(fresh_dsn, schema="telemetry", table="spans").export(spans)

    assert span_keys(spans) == stored_keys(fresh_dsn, schema="telemetry", table="spans")
    assert not table_exists(fresh_dsn, "public.trace_spans")


# --- the exporter's own work is never traced ------------------------------------------------


@pytest.fixture
def psycopg_spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """psycopg auto-instrumentation on, its spans kept in memory; off again after the test."""
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "instrumented"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = PsycopgInstrumentor()
    instrumentor.instrument(tracer_provider=provider, enable_commenter=False)
    try:
        yield provider, memory
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_exporter_database_work_is_not_traced_by_psycopg_instrumentation(
    migrated_dsn: str,
    make_exporter: ExporterFactory,
    psycopg_spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """With psycopg instrumented, exports (pool setup included) make no span; a plain query does."""
    _, memory = psycopg_spans
    spans = make_spans(7)
    exporter = make_exporter(migrated_dsn)

    assert SUCCESS == exporter.export(spans)
    assert SUCCESS == exporter.export(make_spans(2))
    traced_by_export = [span.name for span in memory.get_finished_spans()]

    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("SELECT 1")
    traced_by_plain_query = [span.name for span in memory.get_finished_spans()]

    assert [] == traced_by_export
    assert 1 <= len(traced_by_plain_query)
    assert 9 == count_rows(migrated_dsn)


def test_exporter_behind_the_instrumented_provider_exports_only_application_spans(
    migrated_dsn: str,
    psycopg_spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Exporting through the same instrumented provider stores app spans and makes no new ones."""
    provider, memory = psycopg_spans
    exporter = PostgresSpanExporter(migrated_dsn)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.application")
    for index in range(10):
        with tracer.start_as_current_span(f"app {index}"):
            pass

    assert provider.force_flush()
    finished = list(memory.get_finished_spans())

    assert sorted(f"app {index}" for index in range(10)) == sorted(span.name for span in finished)
    assert span_keys(finished) == stored_keys(migrated_dsn)


# --- lifecycle ------------------------------------------------------------------------------


def test_shutdown_is_idempotent_and_later_exports_fail(
    migrated_dsn: str, make_exporter: ExporterFactory
) -> None:
    """shutdown() twice is fine; export after it is FAILURE; force_flush answers a bool."""
    exporter = make_exporter(migrated_dsn)
    assert SUCCESS == exporter.export(make_spans(1))
    flushed_before = exporter.force_flush()

    exporter.shutdown()
    exporter.shutdown()

    assert FAILURE == exporter.export(make_spans(1))
    flushed_after = exporter.force_flush()
    assert (True, bool) == (flushed_before, type(flushed_after))
    assert exporter._writer._pool is None
    assert 1 == count_rows(migrated_dsn)


def test_shutdown_before_any_export_never_connects(make_exporter: ExporterFactory) -> None:
    """An exporter that never exported shuts down without connecting, even to a dead address."""
    exporter = make_exporter(f"postgresql://otel@127.0.0.1:{closed_port()}/traces")

    started = time.monotonic()
    exporter.shutdown()

    assert time.monotonic() - started < 1
    assert FAILURE == exporter.export(make_spans(1))


def test_batch_span_processor_delivers_a_thousand_spans(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind the SDK's BatchSpanProcessor, 1000 spans are all rows after force_flush."""
    caplog.set_level(logging.WARNING)
    exporter = PostgresSpanExporter(migrated_dsn)
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.test_exporter")
    for index in range(1000):
        with tracer.start_as_current_span(f"bsp {index}"):
            pass

    assert provider.force_flush()
    assert 1000 == count_rows(migrated_dsn)
    provider.shutdown()

    assert [] == [record.getMessage() for record in caplog.records]
    assert 1000 == exporter.stats()["spans_exported"]
    assert FAILURE == exporter.export(make_spans(1))


@pytest.mark.slow
def test_export_rate_of_twenty_thousand_spans(
    migrated_dsn: str, make_exporter: ExporterFactory
) -> None:
    """20,000 spans exported in batches of 512 all arrive; the rate is printed, not judged."""
    spans = make_spans(20_000)
    exporter = make_exporter(migrated_dsn)
    exporter.export(spans[:1])  # open the pool outside the measurement

    started = time.perf_counter()
    results = {exporter.export(spans[i : i + 512]) for i in range(0, len(spans), 512)}
    elapsed = time.perf_counter() - started

    print(f"\nexported {len(spans)} spans in {elapsed:.2f} s: {len(spans) / elapsed:,.0f} spans/s")
    assert {SUCCESS} == results
    assert 20_000 == count_rows(migrated_dsn)


def big_spans(count: int, value_chars: int) -> list[ReadableSpan]:
    """``count`` spans each carrying ``value_chars`` of incompressible hex in one attribute."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.test_exporter")
    for index in range(count):
        with tracer.start_as_current_span(f"big {index}") as span:
            span.set_attribute("blob", os.urandom(value_chars // 2).hex())
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_a_batch_larger_than_the_spool_is_counted_once_as_dropped(
    make_exporter: ExporterFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database down, a batch bigger than the whole spool is not written: its spans
    are counted once, as dropped (never also as spooled), and the warning says dropped."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")
    exporter = make_exporter(
        f"postgresql://otel@127.0.0.1:{closed_port()}/traces",
        spool_dir=str(tmp_path),
        spool_max_mb=1,
        timeout=1,
    )
    spans = big_spans(300, 8_192)  # about 2.4 MB of rows against a 1 MB spool

    assert FAILURE == exporter.export(spans)

    stats = exporter.stats()
    assert (0, 300, 300) == (
        stats["spans_spooled"],
        stats["spans_dropped_spool_full"],
        stats["spans_failed"],
    )
    (warning,) = [text for text in our_warnings(caplog) if "Could not store" in text]
    assert "dropped: a batch of 300 spans" in warning
    assert "larger than the whole spool" in warning
    assert "spooled to disk" not in warning


def test_stats_keys_are_named_for_their_units_and_the_old_names_remain(
    make_exporter: ExporterFactory, dsn: str
) -> None:
    """Export times are export_time_*_us; spans_rejected and export_seconds_*_us are kept as
    aliases with the same values for one release."""
    exporter = make_exporter(dsn)
    assert SUCCESS == exporter.export(make_spans(3))

    stats = exporter.stats()
    assert stats["export_time_total_us"] > 0
    assert stats["export_time_max_us"] > 0
    assert (
        stats["export_time_total_us"],
        stats["export_time_max_us"],
        stats["spans_dropped_rejected"],
    ) == (
        stats["export_seconds_total_us"],
        stats["export_seconds_max_us"],
        stats["spans_rejected"],
    )
