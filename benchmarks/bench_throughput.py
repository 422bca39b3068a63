"""Part 3: sustained spans per second committed by one process, three ways, run by run:

- ``exporter``: ``PostgresSpanExporter.export()`` of pre-built ReadableSpans, 512 per call,
  with the sender thread (as behind ``configure()``, the CLI and ``CountingBatchSpanProcessor``),
  timed until ``force_flush()`` says every span is committed;
- ``exporter_direct``: the same without the sender thread (as behind the SDK's own
  ``BatchSpanProcessor``): each ``export()`` commits its batch before it returns;
- ``raw``: the raw limit, psycopg alone: binary COPY of the same rows, mapped beforehand,
  into the writer's temporary stage and ``INSERT ... ON CONFLICT DO NOTHING`` with the
  writer's own SQL, one transaction per 512 rows;
- ``raw_joined``: the same with one transaction per ``MAX_BATCH_ROWS`` rows, the most the
  sender thread joins into one COPY when batches wait for it: the raw limit of the
  exporter's own path;
- ``per_span_insert``: the risk review's approach, one INSERT and commit per span (rows
  mapped beforehand, so it is not charged for mapping).
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import psycopg
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from psycopg import sql

from benchmarks.bench_common import BATCH_SIZE, batches, part_main, sdk_spans, with_new_ids
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.sender import MAX_BATCH_ROWS
from otel_pg_exporter.export.writer import SpanWriter
from otel_pg_exporter.schema.table import Row

TABLE = "trace_spans"

PER_SPAN_INSERT = sql.SQL(
    "INSERT INTO {table} (trace_id, span_id, parent_span_id, service, operation, kind,"
    " started_at, completed_at, duration_ms, status, status_message, execution_id,"
    " metadata, events, links, resource, scope, otel)"
    " VALUES (%s, %s, %s, %s, %s, %s,"
    " timestamptz 'epoch' + (%s::int8 / 1000) * interval '1 microsecond',"
    " timestamptz 'epoch' + (%s::int8 / 1000) * interval '1 microsecond',"
    " (%s::int8 - %s::int8) / 1e6::float8, %s, %s, %s,"
    " %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s::jsonb)"
    " ON CONFLICT DO NOTHING"
).format(table=sql.Identifier(TABLE))


class RawCopy:
    """The writer's idempotent path with nothing around it: one connection, no pool, no
    OpenTelemetry, no retries, no deadline."""

    def __init__(self, dsn: str) -> None:
        self.writer = SpanWriter(dsn=dsn, table=TABLE)  # for its SQL only; it never connects
        self.conn = psycopg.connect(dsn)
        with self.conn.transaction():
            self.conn.execute(self.writer._create_stage_sql)

    def write(self, rows: Sequence[Row]) -> None:
        writer = self.writer
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(writer._copy_sql) as copy:
                copy.set_types(writer._types)
                for row in rows:
                    copy.write_row(row)
            cur.execute(writer._insert_sql)

    def close(self) -> None:
        self.conn.close()


class PerSpanInsert:
    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def write(self, row: Row) -> None:
        (trace_id, span_id, parent, service, operation, kind, start_ns, end_ns) = row[:8]
        self.conn.execute(
            PER_SPAN_INSERT,
            (
                trace_id,
                span_id,
                parent,
                service,
                operation,
                kind,
                start_ns,
                end_ns,
                end_ns,
                start_ns,
                *row[8:],
            ),
        )

    def close(self) -> None:
        self.conn.close()


def timed(work: Callable[[], None]) -> float:
    gc.collect()
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE)))
        found = row.fetchone()
        return int(found[0]) if found else 0


def run(config: dict[str, Any]) -> dict[str, Any]:
    dsn = config["dsn"]
    rng = random.Random(3)
    template = sdk_spans(config["spans"])
    exporter = PostgresSpanExporter(dsn, enabled=True)
    exporter.use_sender_thread()
    direct = PostgresSpanExporter(dsn, enabled=True)
    settings = exporter.settings
    mapper = SpanMapper(
        scrubber=exporter.scrubber,
        execution_id_attribute=settings.execution_id_attribute,
        max_value_chars=settings.max_value_chars,
        max_span_chars=settings.max_span_chars,
    )
    raw = RawCopy(dsn)
    single = PerSpanInsert(dsn)

    def export_all(target: PostgresSpanExporter, spans: Sequence[ReadableSpan]) -> None:
        """Every batch exported and, with the sender thread, committed (force_flush)."""
        for batch in batches(spans):
            if target.export(batch) is not SpanExportResult.SUCCESS:
                raise RuntimeError("export() failed")
        if not target.force_flush():
            raise RuntimeError("force_flush() failed")

    def copy_all(rows: Sequence[Row], size: int = BATCH_SIZE) -> None:
        for batch in batches(rows, size):
            raw.write(batch)

    def insert_all(rows: Sequence[Row]) -> None:
        for row in rows:
            single.write(row)

    # Warm up all three paths (pool, prepared statements, caches).
    export_all(exporter, with_new_ids(template[:1024], rng))
    export_all(direct, with_new_ids(template[:1024], rng))
    copy_all([mapper.to_row(span) for span in with_new_ids(template[:1024], rng)])
    insert_all([mapper.to_row(span) for span in with_new_ids(template[:50], rng)])

    rows_before = count_rows(dsn)
    rates: dict[str, list[float]] = {
        "exporter": [],
        "exporter_direct": [],
        "raw": [],
        "raw_joined": [],
        "per_span_insert": [],
    }
    inserts_n = config["insert_spans"]
    for run_number in range(config["runs"]):
        spans = with_new_ids(template, rng)
        direct_spans = with_new_ids(template, rng)
        copy_rows = [mapper.to_row(span) for span in with_new_ids(template, rng)]
        joined_rows = [mapper.to_row(span) for span in with_new_ids(template, rng)]
        insert_rows = [mapper.to_row(span) for span in with_new_ids(template[:inserts_n], rng)]
        work: list[tuple[str, int, Callable[[], None]]] = [
            ("exporter", len(spans), partial(export_all, exporter, spans)),
            ("exporter_direct", len(direct_spans), partial(export_all, direct, direct_spans)),
            ("raw", len(copy_rows), partial(copy_all, copy_rows)),
            ("raw_joined", len(joined_rows), partial(copy_all, joined_rows, MAX_BATCH_ROWS)),
            ("per_span_insert", len(insert_rows), partial(insert_all, insert_rows)),
        ]
        shift = run_number % len(work)
        for name, count, job in work[shift:] + work[:shift]:
            rates[name].append(count / timed(job))
    committed = count_rows(dsn) - rows_before
    expected = config["runs"] * (4 * len(template) + inserts_n)
    stats = exporter.stats()
    exporter.shutdown()
    direct.shutdown()
    raw.close()
    single.close()
    return {
        "spans_per_run": len(template),
        "insert_spans_per_run": inserts_n,
        "rows_per_s": rates,
        "rows_committed": committed,
        "rows_expected": expected,
        "exporter_stats": {key: value for key, value in stats.items() if isinstance(value, int)},
    }


if __name__ == "__main__":
    part_main(run)
