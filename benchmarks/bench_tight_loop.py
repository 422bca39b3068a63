"""Part 6, one process: a CPU-bound application thread making spans flat out, or the
exporter's CPU per span against the SDK's own cost of a span.

``kind: "loop"``: one tracer, ``spans`` spans of five attributes each made as fast as the
thread can (no sleeps), timed by wall clock and by the thread's CPU clock. Modes:
``baseline`` (SDK TracerProvider + BatchSpanProcessor with its default queue + an exporter
that only counts), ``configure`` (``otel_pg_exporter.configure(dsn=..., enabled=True)``, the
database up; the parent sets ``OTEL_EXPORTER_POSTGRES_FAST_PATH`` for the fast path on or
off). After the loop the pipeline is shut down and the spans exported and dropped are read:
``stats()`` of the exporter for ``configure`` (its rows of the loop are counted in the
table too); for the baseline, the count of the do-nothing exporter, and as dropped the spans
made that it never saw (the SDK logs "Queue full" once only, behind a duplicate filter, so its
warnings cannot count them).

``kind: "cpu"``: in one process, alternately, (a) the SDK's own CPU per span (same span,
same attributes, a TracerProvider whose only processor does nothing) and (b) the exporter's
CPU per span as ``configure()`` runs it (``PostgresSpanExporter`` + ``use_sender_thread()``):
batches of 512 exported from this thread (its CPU clock around each ``export()``) plus the
CPU of every other thread of the process while the batches are exported and flushed
(process CPU clock minus this thread's CPU clock over the same window), of which the sender
thread ``otel_pg_exporter-send`` is read from its own CPU clock
(``pthread_getcpuclockid``). PostgreSQL's own CPU (another process) is not counted.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import random
import threading
import time
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from benchmarks.bench_common import (
    FAST_PATH_ENV,
    batches,
    part_main,
    sdk_spans,
    span_attributes,
    with_new_ids,
)
from benchmarks.bench_hotpath import CountWarnings, DropExporter

LOOP_SPAN = "bench.tight"
WARMUP_SPAN = "bench.warmup"
SENDER_THREAD = "otel_pg_exporter-send"


def make_spans(tracer: trace.Tracer, name: str, count: int) -> None:
    """The application's work: start a span with five attributes, end it; nothing else."""
    for number in range(count):
        with tracer.start_as_current_span(name, attributes=span_attributes(number)):
            pass


def fast_path_status() -> str:
    """What the exporter says of its compiled fast path in this process (by name: the module
    is new, and absent from older trees)."""
    try:
        fastpath = importlib.import_module("otel_pg_exporter.export.fastpath")
    except ImportError:
        return "no otel_pg_exporter.export.fastpath module"
    return str(fastpath.fast_path_status())


def count_rows(dsn: str, service: str, operation: str) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM trace_spans WHERE service = %s AND operation = %s",
            (service, operation),
        ).fetchone()
        return int(found[0]) if found else 0


def int_stats(stats: dict[str, Any]) -> dict[str, int]:
    return {
        key: value
        for key, value in stats.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


def queue_full_warnings(warnings: CountWarnings) -> int:
    return sum(n for text, n in warnings.messages.items() if text.startswith("Queue full"))


# -- kind "loop" --------------------------------------------------------------------------------


def run_loop(config: dict[str, Any]) -> dict[str, Any]:
    mode, spans, service = config["mode"], config["spans"], config["service"]
    warnings = CountWarnings()
    logging.getLogger("opentelemetry").addHandler(warnings)
    drop = DropExporter()
    provider: TracerProvider | None = None
    handle = None
    if mode == "baseline":
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(drop))  # the SDK's default queue
        trace.set_tracer_provider(provider)
    else:
        import otel_pg_exporter

        handle = otel_pg_exporter.configure(dsn=config["dsn"], enabled=True, service_name=service)
        assert handle.enabled and handle.exporter is not None
    tracer = trace.get_tracer("benchmarks.tight_loop", "1.0")

    # Warm up (imports, caches, the pool's first connection), then start from a flushed state.
    make_spans(tracer, WARMUP_SPAN, config["warmup_spans"])
    if handle is not None:
        handle.force_flush()
        before = int_stats(handle.stats())
    else:
        assert provider is not None
        provider.force_flush()
        before = {"spans_exported": drop.spans}
    warnings.messages.clear()
    gc.collect()

    wall_started = time.perf_counter()
    cpu_started = time.thread_time()
    make_spans(tracer, LOOP_SPAN, spans)
    cpu = time.thread_time() - cpu_started
    loop_ended = time.perf_counter()
    wall = loop_ended - wall_started

    if handle is not None:
        handle.shutdown()
        after = int_stats(handle.stats())
    else:
        assert provider is not None
        provider.shutdown()
        after = {"spans_exported": drop.spans}
    drain = time.perf_counter() - loop_ended
    counts = delta(after, before)
    exported = counts.get("spans_exported", 0) + counts.get("spans_duplicate", 0)
    if handle is None:
        # A full queue is the only way the baseline loses a span.
        counts["spans_dropped_queue_full"] = spans - exported
    dropped = {key: n for key, n in counts.items() if key.startswith("spans_dropped_") and n}
    return {
        "mode": mode,
        "fast_path_env": os.environ.get(FAST_PATH_ENV),
        "fast_path_status": fast_path_status(),
        "spans": spans,
        "wall_s": wall,
        "cpu_s": cpu,
        "wall_us_per_span": wall / spans * 1e6,
        "cpu_us_per_span": cpu / spans * 1e6,
        "drain_s": drain,
        "exported": exported,
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "spooled": counts.get("spans_spooled", 0),
        "sdk_queue_full_warnings": queue_full_warnings(warnings),  # logged once per process
        "rows_stored": None if handle is None else count_rows(config["dsn"], service, LOOP_SPAN),
        "exporter_stats": counts,
    }


# -- kind "cpu" ---------------------------------------------------------------------------------


def sdk_cost(tracer: trace.Tracer, count: int) -> float:
    """CPU seconds of this thread to make ``count`` spans with a do-nothing processor."""
    gc.collect()
    started = time.thread_time()
    make_spans(tracer, LOOP_SPAN, count)
    return time.thread_time() - started


def sender_thread() -> threading.Thread:
    for thread in threading.enumerate():
        if thread.name == SENDER_THREAD:
            return thread
    raise RuntimeError(f"no {SENDER_THREAD} thread: is the sender thread on?")


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds of another thread of this process so far (its POSIX CPU clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def exporter_cost(exporter: Any, spans: list[Any], sender: threading.Thread) -> dict[str, float]:
    """Export ``spans`` in batches of 512 from this thread and flush: CPU seconds of this
    thread inside ``export()``, of the sender thread and of all other threads (sender
    included) over the whole window, from the first ``export()`` to the flush's return."""
    gc.collect()
    process_before = time.process_time()
    own_before = time.thread_time()
    sender_before = thread_cpu(sender)
    in_export = 0.0
    for batch in batches(spans):
        before = time.thread_time()
        result = exporter.export(batch)
        in_export += time.thread_time() - before
        if result is not SpanExportResult.SUCCESS:
            raise RuntimeError(f"export() returned {result}")
    if not exporter.force_flush(60_000):
        raise RuntimeError("force_flush() did not store every span")
    sender_cpu = thread_cpu(sender) - sender_before
    own = time.thread_time() - own_before
    process = time.process_time() - process_before
    if not sender.is_alive() or sender is not sender_thread():
        raise RuntimeError("the sender thread changed during the measurement")
    return {
        "export_thread": in_export,
        "sender_thread": sender_cpu,
        "other_threads": process - own,  # every thread but this one: sender, replay, ...
        "this_thread_outside_export": own - in_export,
    }


def run_cpu(config: dict[str, Any]) -> dict[str, Any]:
    from otel_pg_exporter import PostgresSpanExporter

    count, rng = config["spans"], random.Random(6)
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-cpu"}))
    provider.add_span_processor(SpanProcessor())  # the base class: every hook does nothing
    tracer = provider.get_tracer("benchmarks.tight_loop", "1.0")
    template = sdk_spans(count)
    exporter = PostgresSpanExporter(config["dsn"], enabled=True)
    exporter.use_sender_thread()  # as configure()'s CountingBatchSpanProcessor does

    sdk_cost(tracer, 2_000)  # warm up both sides; the first export starts the sender thread
    exporter_cost(exporter, with_new_ids(template[:1024], rng), _first_sender(exporter, rng))
    sender = sender_thread()

    per_span: dict[str, list[float]] = {
        "sdk": [],
        "export_thread": [],
        "sender_thread": [],
        "other_threads": [],
        "this_thread_outside_export": [],
    }
    for run_number in range(config["runs"]):
        spans = with_new_ids(template, rng)
        steps = ["sdk", "exporter"] if run_number % 2 == 0 else ["exporter", "sdk"]
        for step in steps:
            if step == "sdk":
                per_span["sdk"].append(sdk_cost(tracer, count) / count * 1e6)
            else:
                for key, seconds in exporter_cost(exporter, spans, sender).items():
                    per_span[key].append(seconds / count * 1e6)
    stats = int_stats(exporter.stats())
    exporter.shutdown()
    provider.shutdown()
    return {
        "fast_path_env": os.environ.get(FAST_PATH_ENV),
        "fast_path_status": fast_path_status(),
        "spans_per_run": count,
        "us_per_span": per_span,
        "exporter_stats": stats,
    }


def _first_sender(exporter: Any, rng: random.Random) -> threading.Thread:
    """Start the sender thread with one small batch (it starts at the first hand-over)."""
    spans = with_new_ids(sdk_spans(8), rng)
    if exporter.export(spans) is not SpanExportResult.SUCCESS or not exporter.force_flush():
        raise RuntimeError("the first export did not store its spans")
    return sender_thread()


def run(config: dict[str, Any]) -> dict[str, Any]:
    return run_cpu(config) if config["kind"] == "cpu" else run_loop(config)


if __name__ == "__main__":
    part_main(run)
