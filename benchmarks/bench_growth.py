"""Part 5: export cost per span with 1e4, 1e5 and 1e6 rows already in the table.

One table per size, each made by the package's migration (so with the real indexes), filled
with ``generate_series`` SQL: random-looking ids from md5, as trace ids are, rows of the
exporter's shape, added with the indexes in place so that the indexes have the shape inserts
give them. Then VACUUM ANALYZE and one CHECKPOINT, so that neither autovacuum nor a
checkpoint runs during the timed exports. Each run exports a few batches of 512 to every
table in turn (the order rotates), so run i of each size sees the same machine: wall time per
span (what the database adds shows here), the exporting thread's CPU per span, and the WAL
bytes written per span (pg_current_wal_insert_lsn; full-page images after the checkpoint
show up here).
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


def table_name(size: int) -> str:
    return f"growth_{size}"


def wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def fill(conn: psycopg.Connection[Any], dsn: str, size: int) -> float:
    started = time.perf_counter()
    name = table_name(size)
    migrate(dsn, table=name)
    conn.execute(sql.SQL(FILL).format(table=sql.Identifier(name)), (size,))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
    return time.perf_counter() - started


def run(config: dict[str, Any]) -> dict[str, Any]:
    dsn = config["dsn"]
    sizes: list[int] = config["sizes"]
    rng = random.Random(5)
    template = sdk_spans(config["batches_per_run"] * 512)
    results: dict[int, dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for size in sizes:
            results[size] = {"size": size, "fill_s": fill(conn, dsn, size)}
        conn.execute("CHECKPOINT")
        exporters = {
            size: PostgresSpanExporter(dsn, enabled=True, table=table_name(size)) for size in sizes
        }
        for exporter in exporters.values():  # connection, stage table, catalog caches
            exporter.export(with_new_ids(template[:512], rng))
        for result in results.values():
            result.update(wall_us_per_span=[], cpu_us_per_span=[], wal_bytes_per_span=[])
        for run_number in range(config["runs"]):
            shift = run_number % len(sizes)
            for size in sizes[shift:] + sizes[:shift]:
                spans = with_new_ids(template, rng)
                gc.collect()
                wal_before = wal_position(conn)
                wall = cpu = 0.0
                for batch in batches(spans):
                    wall_before, cpu_before = time.perf_counter(), time.thread_time()
                    if exporters[size].export(batch) is not SpanExportResult.SUCCESS:
                        raise RuntimeError("export() failed")
                    cpu += time.thread_time() - cpu_before
                    wall += time.perf_counter() - wall_before
                wal = wal_position(conn) - wal_before
                result = results[size]
                result["wall_us_per_span"].append(wall / len(spans) * 1e6)
                result["cpu_us_per_span"].append(cpu / len(spans) * 1e6)
                result["wal_bytes_per_span"].append(wal / len(spans))
        for size, result in results.items():
            found = conn.execute(
                sql.SQL("SELECT count(*), pg_total_relation_size({}) FROM {}").format(
                    sql.Literal(table_name(size)), sql.Identifier(table_name(size))
                )
            ).fetchone()
            result["rows_at_end"], result["table_bytes"] = found if found else (0, 0)
    for exporter in exporters.values():
        exporter.shutdown()
    return {"spans_per_run": len(template), "levels": [results[size] for size in sizes]}


if __name__ == "__main__":
    part_main(run)
