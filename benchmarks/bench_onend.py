"""What ``configure()`` adds to the application thread's code: its BatchSpanProcessor
subclass (which counts spans a full queue pushes out) against the SDK's own, called on the
same finished span, in alternating blocks; the queue never fills and the worker never runs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from opentelemetry.sdk.trace.export import BatchSpanProcessor

from benchmarks.bench_common import part_main, sdk_spans
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor

BLOCK = 20_000


def run(config: dict[str, Any]) -> dict[str, Any]:
    span = sdk_spans(1)[0]
    exporter = PostgresSpanExporter("postgresql://bench.invalid/bench", enabled=True)
    processors: dict[str, BatchSpanProcessor] = {
        name: kind(
            exporter,
            max_queue_size=BLOCK + 1,
            max_export_batch_size=BLOCK + 1,
            schedule_delay_millis=3_600_000,
        )
        for name, kind in (("sdk", BatchSpanProcessor), ("configure", CountingBatchSpanProcessor))
    }
    per_call: dict[str, list[float]] = {name: [] for name in processors}
    for _ in range(config["blocks"]):
        for name, processor in processors.items():
            queue = processor._batch_processor._queue
            on_end = processor.on_end
            before = time.thread_time()
            for _ in range(BLOCK):
                on_end(span)
            per_call[name].append((time.thread_time() - before) / BLOCK * 1e6)
            queue.clear()
    for processor in processors.values():
        processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
    extra = [c - s for c, s in zip(per_call["configure"], per_call["sdk"], strict=True)]
    return {
        "us_per_call": {name: statistics.median(values) for name, values in per_call.items()},
        "extra_us_per_span": statistics.median(extra),
        "extra_runs": extra,
    }


if __name__ == "__main__":
    part_main(run)
