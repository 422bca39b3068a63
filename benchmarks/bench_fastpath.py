"""µs per span of the reference mapper (``SpanMapper.to_row``) and of the compiled fast path
(``fastpath.fast_to_row``), on two batches of real SDK spans, with the default scrubber:

* ``plain``: internal spans with the five attributes of the other benchmarks;
* ``asgi``: what an instrumented web service makes per request: a server span with ``http.*``
  attributes, its ``http receive``/``http send`` spans, a database client span, an HTTP client
  span, and every eighth request failing with an exception event and an error status.

Each run maps the whole batch with one warmed mapper (caches included); the median of the
runs is printed, with the fastest run, the ratio and how many spans took the reference path::

    python -m benchmarks.bench_fastpath [--runs 15] [--no-scrub]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from benchmarks.bench_common import span_attributes
from otel_pg_exporter.export import fastpath
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.scrubbing import Scrubber
from otel_pg_exporter.schema.table import Row

PLAIN_SPANS = 1024
REQUESTS = 200
FAILING_EVERY = 8


class Keep(SpanProcessor):
    """Keeps every ended span."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def tracer_keeping(keep: Keep, name: str) -> Tracer:
    """A tracer of a provider with a typical resource whose ended spans go to ``keep``."""
    resource = Resource.create(
        {
            "service.name": "orders",
            "service.version": "2.14.1",
            "deployment.environment": "production",
            "host.name": "orders-7f9c5d-x2k4p",
        }
    )
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(keep)
    return provider.get_tracer(name, "2.14.1")


def plain_batch() -> list[ReadableSpan]:
    """``PLAIN_SPANS`` internal spans with the five benchmark attributes."""
    keep = Keep()
    tracer = tracer_keeping(keep, "bench.plain")
    for number in range(PLAIN_SPANS):
        with tracer.start_as_current_span("bench.op", attributes=span_attributes(number)):
            pass
    return keep.spans


class OrderNotFoundError(LookupError):
    """What a failing request raises."""


def request(tracer: Tracer, number: int) -> None:
    """The spans of one request, as ASGI, database and HTTP client instrumentation make them."""
    failed = number % FAILING_EVERY == FAILING_EVERY - 1
    server_attributes: dict[str, AttributeValue] = {
        "http.scheme": "http",
        "http.host": "10.0.1.5:8000",
        "net.host.port": 8000,
        "http.flavor": "1.1",
        "http.target": f"/orders/{number}",
        "http.url": f"http://10.0.1.5:8000/orders/{number}",
        "http.method": "GET",
        "http.server_name": "orders.internal:8000",
        "http.user_agent": "python-httpx/0.27.0",
        "net.peer.ip": "10.0.3.17",
        "net.peer.port": 52114,
        "http.route": "/orders/{order_id}",
    }
    with tracer.start_as_current_span(
        "GET /orders/{order_id}", kind=SpanKind.SERVER, attributes=server_attributes
    ) as server:
        with tracer.start_as_current_span("GET /orders/{order_id} http receive") as receive:
            receive.set_attribute("asgi.event.type", "http.request")
        with tracer.start_as_current_span(
            "SELECT shop",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": "postgresql",
                "db.name": "shop",
                "db.user": "app",
                "db.statement": "SELECT o.id, o.total, o.status FROM orders o WHERE o.id = %s",
                "net.peer.name": "db.internal",
                "net.peer.port": 5432,
                "execution.id": number,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "GET",
                "url.full": f"https://inventory.internal/v1/items?order={number}",
                "server.address": "inventory.internal",
                "server.port": 443,
                "http.response.status_code": 200,
            },
        ):
            pass
        if failed:
            with tracer.start_as_current_span("orders.validate") as span:
                try:
                    raise OrderNotFoundError(f"order {number} not found")
                except OrderNotFoundError as error:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, f"OrderNotFoundError: {number}"))
        with tracer.start_as_current_span("GET /orders/{order_id} http send") as send:
            send.set_attributes(
                {
                    "asgi.event.type": "http.response.start",
                    "http.status_code": 404 if failed else 200,
                }
            )
        server.set_attribute("http.status_code", 404 if failed else 200)


def asgi_batch() -> list[ReadableSpan]:
    """The spans of ``REQUESTS`` requests."""
    keep = Keep()
    tracer = tracer_keeping(keep, "orders.app")
    for number in range(REQUESTS):
        request(tracer, number)
    return keep.spans


def us_per_span(
    to_row: Callable[[ReadableSpan], Row], spans: Sequence[ReadableSpan], runs: int
) -> tuple[float, float]:
    """Median and fastest µs per span over ``runs`` runs (after one warming run)."""
    for span in spans:
        to_row(span)
    timings: list[float] = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        for span in spans:
            to_row(span)
        timings.append((time.perf_counter_ns() - started) / 1000 / len(spans))
    return statistics.median(timings), min(timings)


def main(argv: Sequence[str] | None = None) -> None:
    """Print µs per span of both mappers on both batches, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-scrub", action="store_true", help="map without the scrubber")
    args = parser.parse_args(argv)
    print(fastpath.fast_path_status())
    for name, spans in (("plain", plain_batch()), ("asgi", asgi_batch())):
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
