"""Part 2: CPU per span in the exporting thread, PostgresSpanExporter against the OTLP/HTTP
protobuf exporter sending the same spans to a local sink process.

Each run takes fresh copies of the same SDK spans and hands them to both exporters in batches
of 512, summing ``time.thread_time`` across each ``export()`` call; the mapping alone
(``SpanMapper.to_row`` with the exporter's settings) is timed on the same spans, for the split.
Each run also times the scrubbing fast path, part of the mapping: what a span's attributes
document with nothing to scrub pays to be let through, next to ``json.dumps`` of it for scale.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks.bench_common import ROOT, batches, part_main, sdk_spans, with_new_ids
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.scrubbing import Scrubber


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


# A typical HTTP server span's attributes: nothing in them is a secret.
TYPICAL_ATTRIBUTES: dict[str, Any] = {
    "http.method": "GET",
    "http.url": "https://api.example.com/v1/orders/12345?expand=items",
    "http.status_code": 200,
    "net.peer.ip": "10.0.0.12",
    "user_agent.original": "curl/8.4.0",
}
FAST_PATH_CALLS = 20_000


def encoded(document: Any) -> str:
    """``document`` as the exporter encodes a jsonb column: compact, non-ASCII kept."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def per_call_ns(call: Callable[[], object]) -> float:
    """Nanoseconds per call of ``call``: the best of five rounds."""
    best = min(timeit.repeat(call, number=FAST_PATH_CALLS, repeat=5))
    return best / FAST_PATH_CALLS * 1e9


def scrubbing_fast_path_ns(scrubber: Scrubber) -> dict[str, float]:
    """What the scrubbing fast path costs on a typical attributes document with nothing to
    scrub: the whole-document test, the key + value tests the mapping runs, and (for scale)
    encoding the document."""
    document = encoded(TYPICAL_ATTRIBUTES)
    return {
        "might_contain_secret": per_call_ns(lambda: scrubber.might_contain_secret(document)),
        "keys_and_values": per_call_ns(
            lambda: (
                scrubber.keys_need_scrubbing(TYPICAL_ATTRIBUTES)
                or scrubber.values_might_contain_secret(document)
            )
        ),
        "json_dumps": per_call_ns(lambda: encoded(TYPICAL_ATTRIBUTES)),
    }


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
    fast_path: dict[str, list[float]] = {}
    for run_number in range(config["runs"]):
        spans = with_new_ids(template, rng)
        order: list[tuple[str, SpanExporter]] = [("postgres", postgres), ("otlp", otlp)]
        if run_number % 2:
            order.reverse()
        for name, exporter in order:
            results[name].append(export_cpu(exporter, spans) / spans_n * 1e6)
        results["mapping"].append(mapping_cpu(mapper, spans) / spans_n * 1e6)
        for name, ns in scrubbing_fast_path_ns(Scrubber()).items():
            fast_path.setdefault(name, []).append(ns)
    stats = postgres.stats()
    postgres.shutdown()
    otlp.shutdown()  # type: ignore[no-untyped-call]  # the OTLP exporter is not annotated
    return {
        "spans_per_run": spans_n,
        "us_per_span": results,
        "scrubbing_fast_path_ns": fast_path,
        "scrubbing_document_chars": len(encoded(TYPICAL_ATTRIBUTES)),
        "postgres_stats": {key: value for key, value in stats.items() if isinstance(value, int)},
    }


if __name__ == "__main__":
    part_main(run)
