"""Where the exporting thread's time goes: cProfile of ``PostgresSpanExporter.export()`` over
N pre-built spans in batches of 512, with the database up (``dsn``) or down (a closed port:
the disk-spool path). Printed when a target of parts 1-5 is missed, or with ``--profile``.
"""

from __future__ import annotations

import cProfile
import random
import time
from typing import Any

from benchmarks.bench_common import batches, part_main, profile_report, sdk_spans, with_new_ids
from otel_pg_exporter import PostgresSpanExporter


def run(config: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(7)
    template = sdk_spans(config["spans"])
    exporter = PostgresSpanExporter(config["dsn"], enabled=True)
    for batch in batches(with_new_ids(template[:1024], rng)):  # warm up
        exporter.export(batch)
    spans = with_new_ids(template, rng)
    profiler = cProfile.Profile()
    cpu_before, wall_before = time.thread_time(), time.perf_counter()
    profiler.enable()
    for batch in batches(spans):
        exporter.export(batch)
    profiler.disable()
    cpu, wall = time.thread_time() - cpu_before, time.perf_counter() - wall_before
    stats = exporter.stats()
    exporter.shutdown()
    return {
        "spans": len(spans),
        "cpu_us_per_span_profiled": cpu / len(spans) * 1e6,
        "wall_us_per_span_profiled": wall / len(spans) * 1e6,
        "exporter_stats": {key: value for key, value in stats.items() if isinstance(value, int)},
        "profile": profile_report(profiler, config.get("lines", 25)),
    }


if __name__ == "__main__":
    part_main(run)
