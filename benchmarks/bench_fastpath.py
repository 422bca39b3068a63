"""µs per span of the reference mapper (``SpanMapper.to_row``) and of the compiled fast path
(``fastpath.fast_to_row``), on the two batches of ``bench_mapping`` (real SDK spans: an
instrumented ASGI service's requests, with cache and messaging keys, DB statements and every
eighth request failing; and plain five-attribute spans), with the default scrubber.

Each run maps the whole batch with one warmed mapper (caches included) and counts this
thread's CPU time; the median of the runs is printed, with the fastest run, the ratio and how
many spans took the reference path::

    python -m benchmarks.bench_fastpath [--runs 15] [--no-scrub]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan

from benchmarks.bench_mapping import app_batch, plain_batch
from otel_pg_exporter.export import fastpath
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.scrubbing import Scrubber
from otel_pg_exporter.schema.table import Row


def us_per_span(
    to_row: Callable[[ReadableSpan], Row], spans: Sequence[ReadableSpan], runs: int
) -> tuple[float, float]:
    """Median and fastest µs per span over ``runs`` runs (after one warming run)."""
    for span in spans:
        to_row(span)
    timings: list[float] = []
    for _ in range(runs):
        started = time.thread_time_ns()
        for span in spans:
            to_row(span)
        timings.append((time.thread_time_ns() - started) / 1000 / len(spans))
    return statistics.median(timings), min(timings)


def main(argv: Sequence[str] | None = None) -> None:
    """Print µs per span of both mappers on both batches, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-scrub", action="store_true", help="map without the scrubber")
    args = parser.parse_args(argv)
    print(fastpath.fast_path_status())
    for name, spans in (("plain", plain_batch()), ("app", app_batch())):
        mapper = SpanMapper(scrubber=None if args.no_scrub else Scrubber())
        reference, reference_min = us_per_span(mapper.to_row, spans, args.runs)
        line = (
            f"{name:5} {len(spans):5} spans  "
            f"reference {reference:5.2f} µs/span (min {reference_min:5.2f})"
        )
        fast = fastpath.fast_to_row(mapper)
        if fast is None:
            print(line + "  fast path unavailable")
            continue
        fast_median, fast_min = us_per_span(fast, spans, args.runs)
        counted: dict[str, int] = getattr(fast, "fallback_counts", dict)()
        fell_back = sum(counted.values()) / (args.runs + 1)
        print(
            f"{line}  fast {fast_median:5.2f} µs/span (min {fast_min:5.2f})  "
            f"{reference / fast_median:4.1f}x  reference path: {fell_back:.0f}/{len(spans)} "
            f"spans {counted and sorted(counted)}"
        )


if __name__ == "__main__":
    main()
