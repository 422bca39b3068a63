"""Part 1, one run: the application thread's CPU per span in one mode, in a fresh process.

Modes: ``baseline`` (SDK TracerProvider + BatchSpanProcessor + an exporter that drops
everything), ``up`` (``otel_pg_exporter.configure()`` exporting to a live database) and
``down`` (``configure()`` with the DSN pointing at a closed port). Spans are made at a steady
rate; only the time spent making them is summed (``time.thread_time``), never the pacing sleep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.bench_common import own_times, part_main, profile_report, span_attributes

CHUNK = 50


class DropExporter(SpanExporter):
    """The baseline's exporter: counts spans and does nothing else."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class MapOnlyExporter(DropExporter):
    """Maps every span to its row, as PostgresSpanExporter does, and drops the rows: the
    exporting thread's Python work without any database."""

    def __init__(self) -> None:
        super().__init__()
        from otel_pg_exporter.export.mapping import SpanMapper
        from otel_pg_exporter.export.scrubbing import Scrubber

        self.mapper = SpanMapper(scrubber=Scrubber())

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        to_row = self.mapper.to_row
        for span in spans:
            to_row(span)
        return super().export(spans)


class CountWarnings(logging.Handler):
    """Counts the SDK's warnings, e.g. "Queue full, dropping span"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = str(record.msg)
        self.messages[text] = self.messages.get(text, 0) + 1


def make_spans(tracer: trace.Tracer, first: int, count: int) -> None:
    """The measured work: start a span with five attributes, end it."""
    for number in range(first, first + count):
        with tracer.start_as_current_span("bench.op", attributes=span_attributes(number)):
            pass


def app_thread_cpu(
    tracer: trace.Tracer, spans: int, rate: float, profiler: Any = None
) -> tuple[float, float]:
    """CPU seconds of this thread spent making ``spans`` spans at ``rate`` per second (0:
    flat out), and the wall seconds the whole run took. A profiler sees the spans only."""
    period = CHUNK / rate if rate > 0 else 0.0
    started = next_at = time.monotonic()
    cpu = 0.0
    for first in range(0, spans, CHUNK):
        count = min(CHUNK, spans - first)
        before = time.thread_time()
        if profiler is not None:
            profiler.enable()
        make_spans(tracer, first, count)
        if profiler is not None:
            profiler.disable()
        cpu += time.thread_time() - before
        if period:
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return cpu, time.monotonic() - started


def scheduler_counts() -> dict[str, int]:
    """This thread's switches and migrations so far (Linux /proc; empty elsewhere)."""
    counts: dict[str, int] = {}
    try:
        with open("/proc/thread-self/sched", encoding="ascii") as sched:
            for line in sched:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("se.nr_migrations", "nr_involuntary_switches"):
                    counts[name.removeprefix("se.")] = int(float(value))
    except OSError:
        pass
    return counts


def run(config: dict[str, Any]) -> dict[str, Any]:
    mode = config["mode"]
    warnings = CountWarnings()
    logging.getLogger("opentelemetry").addHandler(warnings)
    drop = MapOnlyExporter() if mode == "map" else DropExporter()
    handle = None
    if mode in ("baseline", "map"):
        provider = TracerProvider(resource=Resource.create({}))
        provider.add_span_processor(BatchSpanProcessor(drop))
        trace.set_tracer_provider(provider)
    else:
        import otel_pg_exporter

        handle = otel_pg_exporter.configure()
        assert handle.enabled, "ENABLE_DB_TRACING must be true for this mode"
    tracer = trace.get_tracer("benchmarks.hotpath", "1.0")

    # Warm up: imports, caches, the pool's first connection (or first refusal).
    app_thread_cpu(tracer, config["warmup_spans"], 0)
    time.sleep(0.3)
    if handle is not None:
        handle.force_flush()
    else:
        provider.force_flush()
    warnings.messages.clear()

    profiler = None
    if config.get("profile"):
        import cProfile

        # Thread CPU time as the clock: waits for the GIL or the CPU are not charged to
        # the function that happened to be running.
        profiler = cProfile.Profile(time.thread_time)
    sched_before = scheduler_counts()
    cpu, wall = app_thread_cpu(tracer, config["spans"], config["rate"], profiler)
    sched_after = scheduler_counts()
    profile_text = None
    own_us: dict[str, float] = {}
    if profiler is not None:
        profile_text = profile_report(profiler, config.get("profile_lines", 25))
        own_us = own_times(profiler, config["spans"])

    if handle is not None:
        handle.force_flush()
        stats = handle.stats()
        handle.shutdown()
    else:
        provider.force_flush()
        stats = {"spans_exported": drop.spans}
        provider.shutdown()
    return {
        "mode": mode,
        "spans": config["spans"],
        "cpu_us_per_span": cpu / config["spans"] * 1e6,
        "wall_s": wall,
        "achieved_rate": config["spans"] / wall,
        "sdk_warnings": warnings.messages,
        "scheduler": {name: sched_after[name] - sched_before.get(name, 0) for name in sched_after},
        "profile": profile_text,
        "own_us_per_span": own_us,
        "exporter_stats": {key: value for key, value in stats.items() if isinstance(value, int)},
    }


if __name__ == "__main__":
    part_main(run)
