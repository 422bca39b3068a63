"""configure(pool=...) / PostgresSpanExporter(pool=...): the application's ConnectionPool,
shared. One connection at a time for one short transaction, a bounded wait for it (then the
batch is spooled), the connection given back as found, the pool never closed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from support import clean_environ, wait_until

from otel_pg_exporter import CountingBatchSpanProcessor, PostgresSpanExporter, SettingsError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[False, True], ids=["transactional", "autocommit"])
def app_pool(request: pytest.FixtureRequest, migrated_dsn: str) -> Iterator[ConnectionPool[Any]]:
    """The application's pool: one connection, autocommit or not."""
    pool: ConnectionPool[Any] = ConnectionPool(
        migrated_dsn,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": request.param},
        open=True,
        name="app",
    )
    pool.wait(10)
    yield pool
    pool.close()


def provider_for(exporter: PostgresSpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "shared-pool"}))
    provider.add_span_processor(CountingBatchSpanProcessor(exporter, schedule_delay_millis=20))
    return provider


def make_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("tests.test_shared_pool")
    for index in range(count):
        with tracer.start_as_current_span("work", attributes={"index": index}):
            pass


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT span_id) FROM trace_spans").fetchone()
    assert row is not None
    assert row[0] == row[1], "a span was stored twice"
    return int(row[0])


def session_state(pool: ConnectionPool[Any]) -> dict[str, Any]:
    """What the exporter must not change on the application's connection."""
    with pool.connection(timeout=5) as conn:
        state: dict[str, Any] = {"autocommit": conn.autocommit, "backend": conn.info.backend_pid}
        with conn.cursor() as cur:
            for name, statement in {
                "prepared": "SELECT count(*) FROM pg_prepared_statements",
                "temp_tables": "SELECT count(*) FROM pg_class"
                " WHERE relnamespace = pg_my_temp_schema()",
                "statement_timeout": "SELECT current_setting('statement_timeout')",
                "lock_timeout": "SELECT current_setting('lock_timeout')",
                "search_path": "SELECT current_setting('search_path')",
                "application_name": "SELECT current_setting('application_name')",
            }.items():
                row = cur.execute(statement, prepare=False).fetchone()
                assert row is not None
                state[name] = row[0]
        # psycopg's own record of what it prepared on this connection
        state["psycopg_prepared"] = len(conn._prepared._names)
        return state


def test_a_shared_pool_of_one_serves_app_and_exporter_and_is_left_open_and_clean(
    migrated_dsn: str, app_pool: ConnectionPool[Any], tmp_path: Path
) -> None:
    before = session_state(app_pool)
    exporter = PostgresSpanExporter(
        enabled=True, pool=app_pool, pool_wait=50, spool_dir=str(tmp_path / "spool")
    )
    provider = provider_for(exporter)
    app_waits: list[float] = []
    app_errors: list[BaseException] = []
    stop = threading.Event()

    def app() -> None:  # the application's own requests on the same pool, all along
        while not stop.is_set():
            started = time.monotonic()
            try:
                with app_pool.connection(timeout=5) as conn:
                    app_waits.append(time.monotonic() - started)
                    conn.execute("SELECT pg_sleep(0.002)", prepare=False)
            except BaseException as exc:
                app_errors.append(exc)
                return

    thread = threading.Thread(target=app)
    thread.start()
    try:
        for _ in range(40):  # many batches: more than psycopg's prepare threshold (5)
            make_spans(provider, 25)
            time.sleep(0.01)
        provider.force_flush(20_000)  # some batches may have been spooled: replayed below
    finally:
        stop.set()
        thread.join(10)
    replayer = exporter.replayer
    assert replayer is not None
    wait_until(lambda: count_rows(migrated_dsn) == 1000, 30, message="all spans stored")
    stats = exporter.stats()
    provider.shutdown()

    assert [] == app_errors
    assert app_waits and max(app_waits) < 1.0, max(app_waits)
    assert not any(v for k, v in stats.items() if k.startswith("spans_dropped_")), stats
    assert stats["connection_waits"] > 0
    # Every wait of the exporter stays within pool_wait (plus scheduling noise).
    assert stats["connection_wait_max_us"] < 500_000, stats
    assert not app_pool.closed
    after = session_state(app_pool)
    assert before == after
    assert 0 == after["prepared"] == after["temp_tables"] == after["psycopg_prepared"]


def test_a_busy_shared_pool_spools_the_batch_after_pool_wait_then_replays_it(
    migrated_dsn: str, app_pool: ConnectionPool[Any], tmp_path: Path
) -> None:
    exporter = PostgresSpanExporter(
        enabled=True, pool=app_pool, pool_wait=50, spool_dir=str(tmp_path / "spool")
    )
    provider = provider_for(exporter)
    try:
        with app_pool.connection(timeout=5):  # the app holds the only connection
            make_spans(provider, 30)
            started = time.monotonic()
            stored = provider.force_flush(10_000)
            took = time.monotonic() - started
            stats = exporter.stats()
        assert not stored
        assert took < 2.0, took
        assert stats["batches_no_connection"] >= 1, stats
        assert 30 == stats["spans_spooled"], stats
        wait_until(lambda: count_rows(migrated_dsn) == 30, 30, message="the spool replayed")
    finally:
        provider.shutdown()
    assert not app_pool.closed
    assert session_state(app_pool)["temp_tables"] == 0


def test_an_async_pool_is_refused_with_the_alternative_named() -> None:
    async def make() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool("", open=False)
        with pytest.raises(SettingsError, match=r"pool: .*AsyncConnectionPool.*ConnectionPool"):
            PostgresSpanExporter(enabled=True, pool=pool)  # type: ignore[arg-type]

    asyncio.run(make())
    with pytest.raises(SettingsError, match=r"pool: must be a psycopg_pool\.ConnectionPool"):
        PostgresSpanExporter(enabled=True, pool="postgresql://x")  # type: ignore[arg-type]


def test_configure_with_a_pool_stores_spans_and_shutdown_leaves_the_pool_open(
    migrated_dsn: str,
) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from opentelemetry import trace
        from psycopg_pool import ConnectionPool
        import otel_pg_exporter

        pool = ConnectionPool(sys.argv[1], min_size=1, max_size=1, open=True)
        handle = otel_pg_exporter.configure(pool=pool, pool_wait=200)
        tracer = trace.get_tracer("shared")
        for index in range(12):
            with tracer.start_as_current_span("job"):
                pass
        stored = handle.force_flush(10)
        handle.shutdown(5)
        with pool.connection() as conn:
            alive = conn.execute("SELECT 1").fetchone()[0] == 1
        print(json.dumps({"stored": stored, "closed": pool.closed, "alive": alive}))
        pool.close()
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, migrated_dsn],
        env=clean_environ(ENABLE_DB_TRACING="true"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr
    assert '{"stored": true, "closed": false, "alive": true}' in completed.stdout
    assert 12 == count_rows(migrated_dsn)
