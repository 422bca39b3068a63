"""``make bench-scale``: the read side, retention and the exporter on a loaded table.

For each layout (plain, partitioned by day) in a throwaway PostgreSQL: load N realistic spans
(10 million by default) spread over 30 days (traces of 10 spans across 5 services, 1 % with
an error and its exception event, a third with an execution id, 4 attributes each), in bulk
``INSERT ... SELECT`` chunks with every index in place, then VACUUM ANALYZE. Then measure:

- ``trace_tree`` by id and ``execution_trace`` (20 random ids each; median and p95 ms);
- ``error_traces`` for the last hour, ``slow_operations`` for the last day;
- an attribute query (``metadata @> ...``) without an index, then with ``otel-pg index add
  attributes`` (build time, size), and the export rate with that index;
- export throughput into the loaded table against an empty one (same database and run);
- cleanup of the oldest day while an exporter writes: its time, and the longest export the
  writer saw (plain: batched DELETE; partitioned: one partition detached and dropped);
- ``otel-pg migrate`` on the loaded database: the re-run, and the upgrade from 0001 alone
  (the query layer's indexes built on the loaded table).

Targets: trace lookup < 10 ms, last-hour errors < 100 ms, export into the loaded table
>= 0.8x the empty one, no export stalled > 100 ms by the cleanup, migrate < 10 s.
Writes benchmarks/results/bench-scale.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.sdk.trace.export import SpanExportResult

from benchmarks.bench_common import batches, sdk_spans, with_new_ids
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.schema import indexes, maintenance, partitions
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.schema.table import index_name
from otel_pg_exporter.testing.devdb import DevCluster

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPANS_PER_TRACE = 10
CHUNK = 500_000
LOOKUPS = 20

LOAD = """
INSERT INTO trace_spans (trace_id, span_id, parent_span_id, service, operation, kind,
    started_at, completed_at, duration_ms, status, status_message, execution_id, metadata,
    events, resource, scope, created_at)
SELECT md5('t' || tr), left(md5('s' || i), 16),
       CASE WHEN k = 0 THEN NULL ELSE left(md5('s' || (i - k)), 16) END,
       'svc' || (tr %% 5) || CASE WHEN k > 5 THEN '-db' ELSE '' END,
       CASE WHEN k = 0 THEN 'GET /route' || (tr %% 20) ELSE 'step' || k END,
       CASE WHEN k = 0 THEN 'server' WHEN k > 5 THEN 'client' ELSE 'internal' END,
       t0 + k * interval '2 ms', t0 + k * interval '2 ms' + d * interval '1 ms', d,
       CASE WHEN err AND k = 3 THEN 'error' ELSE 'unset' END,
       CASE WHEN err AND k = 3 THEN 'TimeoutError: upstream timed out' END,
       CASE WHEN tr %% 3 = 0 THEN tr END,
       jsonb_build_object('http.route', '/items/' || (tr %% 100), 'conversation.id',
                          'c' || (tr %% 100000), 'user.id', tr %% 5000, 'step', k),
       CASE WHEN err AND k = 3 THEN jsonb_build_array(jsonb_build_object('name', 'exception',
            'time', t0, 'attributes', jsonb_build_object('exception.type', 'TimeoutError',
            'exception.message', 'upstream timed out', 'exception.stacktrace', 'Traceback ...')))
       END,
       jsonb_build_object('service.name', 'svc' || (tr %% 5), 'telemetry.sdk.language', 'python'),
       'benchmarks.scale', t0
  FROM generate_series(%(first)s::int8, %(last)s::int8) AS i,
       LATERAL (SELECT i / 10 AS tr, (i %% 10)::int AS k) AS ids,
       LATERAL (SELECT now() - interval '30 days'
                       + (i / 10) * (interval '30 days' / %(traces)s) AS t0,
                       CASE WHEN (i %% 10) = 0 THEN 40.0 ELSE 1.0 + (i %% 7) END AS d,
                       (i / 10) %% 100 = 7 AS err) AS shape
"""


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return (time.perf_counter() - started) * 1000, result


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def load(dsn: str, spans: int, *, partitioned: bool) -> float:
    started = time.perf_counter()
    migrate(dsn, partitioned=partitioned)
    if partitioned:
        partitions.maintain(dsn, days_behind=31, days_ahead=2)
    traces = spans // SPANS_PER_TRACE
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, spans, CHUNK):
            last = min(first + CHUNK, spans) - 1
            conn.execute(LOAD, {"first": first, "last": last, "traces": traces})
            say(f"    loaded {last + 1:,} / {spans:,}")
        conn.execute("VACUUM ANALYZE trace_spans")
    return time.perf_counter() - started


def lookups(conn: psycopg.Connection[Any], query: str, ids: Sequence[Any]) -> list[float]:
    took = []
    for value in ids:
        params = None if value is None else (value,)
        started = time.perf_counter()
        conn.execute(query, params).fetchall()
        took.append((time.perf_counter() - started) * 1000)
    return took


def export_rate(dsn: str, table: str, spans: int) -> float:
    """Spans per second one exporter stores into ``table`` (batches of 512, synchronous)."""
    exporter = PostgresSpanExporter(dsn, enabled=True, table=table, retention_days=0)
    rng = random.Random(9)
    template = sdk_spans(spans)
    exporter.export(with_new_ids(template[:512], rng))  # connection, stage table
    payload = with_new_ids(template, rng)
    started = time.perf_counter()
    for batch in batches(payload):
        if exporter.export(batch) is not SpanExportResult.SUCCESS:
            raise RuntimeError("export failed")
    rate = len(payload) / (time.perf_counter() - started)
    exporter.shutdown()
    return rate


def cleanup_with_writer(dsn: str) -> dict[str, Any]:
    """Delete the oldest day while an exporter writes; the cleanup's time and the writer's
    longest export."""
    exporter = PostgresSpanExporter(dsn, enabled=True, retention_days=0)
    rng = random.Random(11)
    template = sdk_spans(256)
    took: list[float] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            batch = with_new_ids(template, rng)
            started = time.perf_counter()
            result = exporter.export(batch)
            took.append((time.perf_counter() - started) * 1000)
            if result is not SpanExportResult.SUCCESS:
                raise RuntimeError("export failed during cleanup")

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.0)
    baseline = len(took)
    try:
        ms, report = timed(
            lambda: maintenance.cleanup(dsn, older_than=timedelta(days=29), pause_s=0.05)
        )
    finally:
        time.sleep(0.5)
        stop.set()
        writer.join()
        exporter.shutdown()
    during = took[baseline:] or took
    return {
        "cleanup_ms": ms,
        "rows": report.rows,
        "partitions": report.partitions,
        "batches": report.batches,
        "writer_exports": len(during),
        "writer_max_ms": max(during),
        "writer_median_ms": statistics.median(during),
    }


def migrate_times(dsn: str) -> dict[str, float]:
    rerun_ms, _ = timed(lambda: migrate(dsn))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM otel_pg_schema_migrations WHERE version >= 2")
        for suffix in ("started_at", "errors_started_at"):
            conn.execute(f'DROP INDEX IF EXISTS "{index_name("trace_spans", suffix)}"')
    upgrade_ms, _ = timed(lambda: migrate(dsn))
    return {"rerun_ms": rerun_ms, "upgrade_from_0001_ms": upgrade_ms}


def measure(dsn: str, spans: int, *, partitioned: bool, export_spans: int) -> dict[str, Any]:
    result: dict[str, Any] = {"layout": "partitioned" if partitioned else "plain"}
    result["load_s"] = load(dsn, spans, partitioned=partitioned)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(  # pg_partition_tree is empty for a plain table
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
            " FROM pg_partition_tree('trace_spans')), pg_total_relation_size('trace_spans'))"
        ).fetchone()
        result["table_bytes"] = int(row[0]) if row else 0
        rng = random.Random(3)
        traces = spans // SPANS_PER_TRACE
        ids = [
            hashlib.md5(f"t{rng.randrange(traces)}".encode(), usedforsecurity=False).hexdigest()
            for _ in range(LOOKUPS)
        ]
        executions = [rng.randrange(traces // 3) * 3 for _ in range(LOOKUPS)]
        lookups(conn, "SELECT * FROM trace_tree(%s)", ids[:3])  # warm the catalog caches
        result["trace_tree_ms"] = lookups(conn, "SELECT * FROM trace_tree(%s)", ids)
        result["execution_trace_ms"] = lookups(
            conn, "SELECT * FROM execution_trace(%s)", executions
        )
        result["error_traces_hour_ms"] = lookups(
            conn, "SELECT * FROM error_traces(now() - interval '1 hour')", [None] * 5
        )
        result["slow_operations_day_ms"] = lookups(
            conn, "SELECT * FROM slow_operations(now() - interval '1 day')", [None] * 3
        )
        attribute_query = """SELECT count(*) FROM trace_spans
                              WHERE metadata @> '{"conversation.id": "c4242"}'"""
        result["attribute_query_no_index_ms"] = lookups(conn, attribute_query, [None] * 2)
    build_ms, made = timed(lambda: indexes.add_index(dsn))
    result["attribute_index_build_ms"] = build_ms
    result["attribute_index_bytes"] = made.bytes
    with psycopg.connect(dsn, autocommit=True) as conn:
        result["attribute_query_with_index_ms"] = lookups(conn, attribute_query, [None] * 5)
    migrate(dsn, table="empty_spans", partitioned=partitioned)
    if partitioned:
        partitions.maintain(dsn, table="empty_spans")
    result["export_rate_empty"] = export_rate(dsn, "empty_spans", export_spans)
    result["export_rate_loaded_with_attribute_index"] = export_rate(
        dsn, "trace_spans", export_spans
    )
    indexes.drop_index(dsn)
    result["export_rate_loaded"] = export_rate(dsn, "trace_spans", export_spans)
    result["cleanup"] = cleanup_with_writer(dsn)
    result["migrate"] = migrate_times(dsn)
    return result


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rows_for(results: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(measure, layout, value, target, verdict) rows of the report."""
    out: list[tuple[str, str, str, str, str]] = []

    def add(
        measure: str, layout: str, value: str, target: str = "", ok: bool | None = None
    ) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        out.append((measure, layout, value, target, verdict))

    for r in results:
        layout = r["layout"]
        tree, execs = r["trace_tree_ms"], r["execution_trace_ms"]
        add("load (bulk INSERT ... SELECT, indexes in place)", layout, f"{r['load_s']:.0f} s")
        add("table + indexes", layout, f"{r['table_bytes'] / 2**30:.2f} GiB")
        add(
            "trace_tree by id, median / p95",
            layout,
            f"{statistics.median(tree):.2f} / {percentile(tree, 0.95):.2f} ms",
            "< 10 ms",
            percentile(tree, 0.95) < 10,
        )
        add(
            "execution_trace, median / p95",
            layout,
            f"{statistics.median(execs):.2f} / {percentile(execs, 0.95):.2f} ms",
        )
        errors = statistics.median(r["error_traces_hour_ms"])
        add("error_traces, last hour", layout, f"{errors:.1f} ms", "< 100 ms", errors < 100)
        slow = statistics.median(r["slow_operations_day_ms"])
        add("slow_operations, last day", layout, f"{slow:.0f} ms")
        add(
            "attribute query (metadata @> ...), no index / GIN index",
            layout,
            f"{statistics.median(r['attribute_query_no_index_ms']):.0f} / "
            f"{statistics.median(r['attribute_query_with_index_ms']):.2f} ms",
        )
        add(
            "GIN attribute index: build, size",
            layout,
            f"{r['attribute_index_build_ms'] / 1000:.0f} s, "
            f"{r['attribute_index_bytes'] / 2**20:,.0f} MiB",
        )
        ratio = r["export_rate_loaded"] / r["export_rate_empty"]
        add(
            "export rate, loaded / empty table",
            layout,
            f"{r['export_rate_loaded']:,.0f} / {r['export_rate_empty']:,.0f} spans/s "
            f"= {ratio:.2f}x",
            ">= 0.8x",
            ratio >= 0.8,
        )
        gin = r["export_rate_loaded_with_attribute_index"] / r["export_rate_loaded"]
        add("export rate with / without the GIN attribute index", layout, f"{gin:.2f}x")
        c = r["cleanup"]
        what = (
            f"{len(c['partitions'])} partition(s) dropped, {c['rows']:,} rows deleted"
            if layout == "partitioned"
            else f"{c['rows']:,} rows in {c['batches']:,} batches"
        )
        add("cleanup of the oldest day", layout, f"{c['cleanup_ms'] / 1000:.1f} s ({what})")
        add(
            "longest export during the cleanup (median)",
            layout,
            f"{c['writer_max_ms']:.0f} ms ({c['writer_median_ms']:.0f} ms, "
            f"{c['writer_exports']} exports)",
            "< 100 ms",
            c["writer_max_ms"] < 100,
        )
        m = r["migrate"]
        rerun = m["rerun_ms"]
        add(
            "migrate, re-run on the loaded database",
            layout,
            f"{rerun:.0f} ms",
            "< 10 s",
            rerun < 10_000,
        )
        add(
            "migrate 0001 -> this release on the loaded table (builds 2 indexes)",
            layout,
            f"{m['upgrade_from_0001_ms'] / 1000:.1f} s",
            "< 10 s",
            m["upgrade_from_0001_ms"] < 10_000,
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=10_000_000, help="spans per layout")
    parser.add_argument("--export-spans", type=int, default=20_480)
    parser.add_argument("--layouts", default="plain,partitioned")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    results = []
    started = time.monotonic()
    with DevCluster() as cluster:
        for layout in args.layouts.split(","):
            say(f"{layout}: loading {args.spans:,} spans")
            dsn = cluster.create_database(f"scale_{layout}")
            results.append(
                measure(
                    dsn,
                    args.spans,
                    partitioned=layout == "partitioned",
                    export_spans=args.export_spans,
                )
            )
            cluster.drop_database(f"scale_{layout}")
            write_report(args, results, started)
    return 0


def write_report(args: argparse.Namespace, results: list[dict[str, Any]], started: float) -> None:
    """The table so far (after each layout, so a long run leaves what it measured)."""
    rows = rows_for(results)
    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, Python "
    machine += platform.python_version()
    lines = [
        f"# make bench-scale: {args.spans:,} spans per layout, {time.monotonic() - started:.0f} s",
        "",
        machine,
        "",
        "| measure | layout | result | target | |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-scale.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "bench-scale.json").write_text(
        json.dumps({"spans": args.spans, "results": results}, indent=2, default=str),
        encoding="utf-8",
    )


if __name__ == "__main__":
    sys.exit(main())
