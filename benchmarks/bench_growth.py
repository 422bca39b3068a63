"""Part 5: export cost per span with 1e4, 1e5 and 1e6 rows already in the table, and what
the query layer's indexes (migration 0002: started_at, error spans) add to it.

One table per size, each made by the package's migration (so with the real indexes), filled
with ``generate_series`` SQL: random-looking ids from md5, as trace ids are, rows of the
exporter's shape, added with the indexes in place so that the indexes have the shape inserts
give them. Then VACUUM ANALYZE and one CHECKPOINT, so that neither autovacuum nor a
checkpoint runs during the timed exports. Each run exports a few batches of 512 to every
table in turn (the order rotates), so run i of each size sees the same machine: wall time per
span (what the database adds shows here), the exporting thread's CPU per span, and the WAL
bytes written per span (pg_current_wal_insert_lsn; full-page images after the checkpoint
show up here). The largest size is filled twice: once as migrated, once without the two
indexes of migration 0002, so one run compares the write cost before and after them.
"""

from __future__ import annotations

import gc
import random
import time
from typing import Any

import psycopg
from opentelemetry.sdk.trace.export import SpanExportResult
from psycopg import sql

from benchmarks.bench_common import batches, part_main, sdk_spans, with_new_ids
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.schema.table import index_name

FILL = (
    "INSERT INTO {table} (trace_id, span_id, parent_span_id, service, operation, kind,"
    " started_at, completed_at, duration_ms, status, execution_id, metadata, resource,"
    " scope, otel, created_at)"
    " SELECT md5(i::text), left(md5((-i)::text), 16),"
    " CASE WHEN i %% 5 = 0 THEN NULL ELSE left(md5((1 - i)::text), 16) END,"
    " 'bench', 'job.step', 'internal', t, t + interval '1 ms', 1.0, 'unset', i,"
    " jsonb_build_object('http.method', 'GET', 'http.route', '/jobs/{{execution_id}}',"
    "   'http.status_code', 200, 'execution.id', i, 'job.step', 'transform'),"
    """ '{{"service.name": "bench", "telemetry.sdk.language": "python"}}'::jsonb,"""
    """ 'benchmarks.bench', '{{"trace_flags": 3}}'::jsonb, t"""
    " FROM generate_series(1, %s::int8) AS i,"
    " LATERAL (SELECT now() - interval '1 day' + i * interval '10 microseconds') AS s(t)"
)


WITHOUT_QUERY_INDEXES = "without_query_indexes"
QUERY_INDEXES = ("started_at", "errors_started_at")


def table_name(size: int | str) -> str:
    return f"growth_{size}"


def wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def fill(conn: psycopg.Connection[Any], dsn: str, size: int, name: str, *, bare: bool) -> float:
    started = time.perf_counter()
    migrate(dsn, table=name)
    if bare:  # the table as it was before the query layer's indexes
        for suffix in QUERY_INDEXES:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index_name(name, suffix))))
    conn.execute(sql.SQL(FILL).format(table=sql.Identifier(name)), (size,))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
    return time.perf_counter() - started


def run(config: dict[str, Any]) -> dict[str, Any]:
    dsn = config["dsn"]
    sizes: list[int] = config["sizes"]
    rng = random.Random(5)
    template = sdk_spans(config["batches_per_run"] * 512)
    largest = max(sizes)
    # Keys: each size, plus the largest again without the query indexes.
    keys: list[int | str] = [*sizes, WITHOUT_QUERY_INDEXES]
    results: dict[int | str, dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for key in keys:
            size = largest if key == WITHOUT_QUERY_INDEXES else int(key)
            bare = key == WITHOUT_QUERY_INDEXES
            results[key] = {
                "size": size,
                "query_indexes": not bare,
                "fill_s": fill(conn, dsn, size, table_name(key), bare=bare),
            }
        conn.execute("CHECKPOINT")
        exporters = {
            key: PostgresSpanExporter(dsn, enabled=True, table=table_name(key)) for key in keys
        }
        for exporter in exporters.values():  # connection, stage table, catalog caches
            exporter.export(with_new_ids(template[:512], rng))
        for result in results.values():
            result.update(wall_us_per_span=[], cpu_us_per_span=[], wal_bytes_per_span=[])
        for run_number in range(config["runs"]):
            shift = run_number % len(keys)
            for key in keys[shift:] + keys[:shift]:
                spans = with_new_ids(template, rng)
                gc.collect()
                wal_before = wal_position(conn)
                wall = cpu = 0.0
                for batch in batches(spans):
                    wall_before, cpu_before = time.perf_counter(), time.thread_time()
                    if exporters[key].export(batch) is not SpanExportResult.SUCCESS:
                        raise RuntimeError("export() failed")
                    cpu += time.thread_time() - cpu_before
                    wall += time.perf_counter() - wall_before
                wal = wal_position(conn) - wal_before
                result = results[key]
                result["wall_us_per_span"].append(wall / len(spans) * 1e6)
                result["cpu_us_per_span"].append(cpu / len(spans) * 1e6)
                result["wal_bytes_per_span"].append(wal / len(spans))
        for key, result in results.items():
            found = conn.execute(
                sql.SQL("SELECT count(*), pg_total_relation_size({}) FROM {}").format(
                    sql.Literal(table_name(key)), sql.Identifier(table_name(key))
                )
            ).fetchone()
            result["rows_at_end"], result["table_bytes"] = found if found else (0, 0)
    for exporter in exporters.values():
        exporter.shutdown()
    return {
        "spans_per_run": len(template),
        "levels": [results[size] for size in sizes],
        "without_query_indexes": results[WITHOUT_QUERY_INDEXES],
    }


if __name__ == "__main__":
    part_main(run)
