"""What the benchmark's parts share: the subprocess protocol, statistics and the test spans.

Every part of ``make bench`` runs in its own process (``python -m benchmarks.bench_x CONFIG``)
so that global state (a configured tracer provider, pools, caches, garbage) never carries over
from one measurement to the next. A part prints one ``BENCH-RESULT {json}`` line at the end.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanContext, Tracer

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH-RESULT "
BATCH_SIZE = 512
SERVICE = "bench"
SPANS_PER_TRACE = 5
# Switches the exporter's compiled fast path off when "false" (parts 4 and 6 run both ways).
FAST_PATH_ENV = "OTEL_EXPORTER_POSTGRES_FAST_PATH"

# Variables that would steer a child away from what the benchmark sets up for it.
_INHERITED_PREFIXES = ("OTEL_", "SENTRY_", "PG")
_INHERITED_NAMES = ("ENABLE_DB_TRACING", "DATABASE_URL", "EXAMPLE_CONFIGURE", "DOWNSTREAM_URL")


# -- the subprocess protocol ------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without tracing, Sentry and libpq variables, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_INHERITED_PREFIXES) and key not in _INHERITED_NAMES
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run_part(
    module: str, config: dict[str, Any], *, env: dict[str, str], timeout_s: float = 600.0
) -> dict[str, Any]:
    """Run ``benchmarks.<module>`` with ``config``; its result, or RuntimeError with its output."""
    command = [sys.executable, "-m", f"benchmarks.{module}", json.dumps(config)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX) and done.returncode == 0:
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
    raise RuntimeError(f"benchmarks.{module} failed (exit {done.returncode}):\n{tail}")


def part_main(body: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The ``__main__`` of a part: config from argv[1] as JSON, result line on stdout."""
    config: dict[str, Any] = json.loads(sys.argv[1])
    result = body(config)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# -- numbers ------------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of several runs, and the runs themselves."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Pairwise ratios, run by run: run i of one measurement over run i of the other."""
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def profile_report(profiler: Any, lines: int = 25) -> str:
    """A cProfile's top functions by own time, then by cumulative time (pstats text)."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


def own_times(profiler: Any, per: int) -> dict[str, float]:
    """Each function's own time in µs per ``per`` (e.g. per span), keyed ``file:line(name)``."""
    import pstats

    stats = pstats.Stats(profiler).strip_dirs()
    table: dict[str, float] = {}
    for (filename, line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        key = re.sub(r" at 0x[0-9a-f]+", "", f"{filename}:{line}({name})")  # same in every run
        table[key] = table.get(key, 0.0) + entry[2] / per * 1e6
    return table


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def batches(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the spans ----------------------------------------------------------------------------------


def span_attributes(number: int) -> dict[str, Any]:
    """The five attributes every benchmark span carries (one is the execution id)."""
    return {
        "http.method": "GET",
        "http.route": "/jobs/{execution_id}",
        "http.status_code": 200,
        "execution.id": number,
        "job.step": "transform",
    }


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def sdk_spans(count: int) -> list[ReadableSpan]:
    """``count`` finished spans from a real SDK pipeline: traces of one root and four
    children, five attributes each, as an instrumented job would produce them."""
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(keep)
    tracer: Tracer = provider.get_tracer("benchmarks.bench", "1.0")
    number = 0
    while number < count:
        with tracer.start_as_current_span("job.run", attributes=span_attributes(number)):
            number += 1
            for _ in range(SPANS_PER_TRACE - 1):
                if number >= count:
                    break
                with tracer.start_as_current_span("job.step", attributes=span_attributes(number)):
                    number += 1
    provider.shutdown()
    return keep.spans


def with_new_ids(spans: Sequence[ReadableSpan], rng: random.Random) -> list[ReadableSpan]:
    """Copies of ``spans`` with fresh trace and span ids and current timestamps, sharing the
    attribute containers: a new batch that ON CONFLICT will not skip, at no SDK cost."""
    traces: dict[int, int] = {}
    span_ids: dict[int, int] = {}
    copies: list[ReadableSpan] = []
    now_ns = time.time_ns()
    for number, span in enumerate(spans):
        context = span.context
        assert context is not None
        trace_id = traces.setdefault(context.trace_id, rng.getrandbits(128) or 1)
        span_id = span_ids.setdefault(context.span_id, rng.getrandbits(64) or 1)
        parent = span.parent
        new_parent = None
        if parent is not None:
            parent_id = span_ids.setdefault(parent.span_id, rng.getrandbits(64) or 1)
            new_parent = SpanContext(
                trace_id, parent_id, parent.is_remote, parent.trace_flags, parent.trace_state
            )
        start = now_ns + number * 1000
        duration = (span.end_time or 0) - (span.start_time or 0)
        copies.append(
            ReadableSpan(
                name=span.name,
                context=SpanContext(
                    trace_id, span_id, False, context.trace_flags, context.trace_state
                ),
                parent=new_parent,
                resource=span.resource,
                attributes=getattr(span, "_attributes", None),
                events=getattr(span, "_events", ()),
                links=getattr(span, "_links", ()),
                kind=span.kind,
                status=span.status,
                start_time=start,
                end_time=start + max(duration, 0),
                instrumentation_scope=span.instrumentation_scope,
            )
        )
    return copies
