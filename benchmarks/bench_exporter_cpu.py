"""Part 2: CPU per span in the exporting thread, PostgresSpanExporter against the OTLP/HTTP
protobuf exporter sending the same spans to a local sink process.

Each run takes fresh copies of the same SDK spans and hands them to both exporters in batches
of 512, summing ``time.thread_time`` across each ``export()`` call; the mapping alone
(``SpanMapper.to_row`` with the exporter's settings) is timed on the same spans, for the split.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks.bench_common import ROOT, batches, part_main, sdk_spans, with_new_ids
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export.mapping import SpanMapper


def export_cpu(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> float:
    """CPU seconds this thread spent inside ``exporter.export()`` over ``spans``."""
    gc.collect()
    cpu = 0.0
    for batch in batches(spans):
        before = time.thread_time()
        result = exporter.export(batch)
        cpu += time.thread_time() - before
        if result is not SpanExportResult.SUCCESS:
            raise RuntimeError(f"{type(exporter).__name__}.export() returned {result}")
    return cpu


def mapping_cpu(mapper: SpanMapper, spans: Sequence[ReadableSpan]) -> float:
    gc.collect()
    before = time.thread_time()
    for span in spans:
        mapper.to_row(span)
    return time.thread_time() - before


def run(config: dict[str, Any]) -> dict[str, Any]:
    sink = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_sink"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        return measure(config, port)
    finally:
        sink.kill()
        sink.wait()


def measure(config: dict[str, Any], sink_port: int) -> dict[str, Any]:
    rng = random.Random(2)
    template = sdk_spans(config["spans"])
    postgres = PostgresSpanExporter(config["dsn"], enabled=True)
    otlp = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{sink_port}/v1/traces", timeout=10)
    settings = postgres.settings
    mapper = SpanMapper(
        scrubber=postgres.scrubber,
        execution_id_attribute=settings.execution_id_attribute,
        max_value_chars=settings.max_value_chars,
        max_span_chars=settings.max_span_chars,
    )
    # Warm up: connections, prepared statements, caches.
    warmup = with_new_ids(template[:1024], rng)
    export_cpu(postgres, warmup)
    export_cpu(otlp, warmup)
    mapping_cpu(mapper, warmup)

    spans_n = len(template)
    results: dict[str, list[float]] = {"postgres": [], "otlp": [], "mapping": []}
    for run_number in range(config["runs"]):
        spans = with_new_ids(template, rng)
        order: list[tuple[str, SpanExporter]] = [("postgres", postgres), ("otlp", otlp)]
        if run_number % 2:
            order.reverse()
        for name, exporter in order:
            results[name].append(export_cpu(exporter, spans) / spans_n * 1e6)
        results["mapping"].append(mapping_cpu(mapper, spans) / spans_n * 1e6)
    stats = postgres.stats()
    postgres.shutdown()
    otlp.shutdown()  # type: ignore[no-untyped-call]  # the OTLP exporter is not annotated
    return {
        "spans_per_run": spans_n,
        "us_per_span": results,
        "postgres_stats": {key: value for key, value in stats.items() if isinstance(value, int)},
    }


if __name__ == "__main__":
    part_main(run)
