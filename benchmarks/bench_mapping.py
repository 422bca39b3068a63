"""CPU per span of ``SpanMapper.to_row`` alone, on real SDK spans, with the default scrubber.

Two batches, both made by a real ``TracerProvider``:

* ``app``: the spans of an ASGI service traced by ``OpenTelemetryMiddleware`` (server span with
  ``http.*`` attributes, its ``http receive``/``http send`` internal spans), with inside each
  request internal spans, HTTP client spans, a database span with ``db.statement``, cache and
  messaging spans whose keys end in ``.key`` (``cache.key``, ``messaging.kafka.message.key``,
  ``db.redis.key``, ``idempotency_key``), and every eighth request failing with an exception
  event;
* ``plain``: spans with the five attributes of the other benchmarks and nothing else.

The mapper is built once and warmed, as the exporter keeps one (its caches are part of what
is measured). Each run maps the whole batch and counts this thread's CPU time
(``time.thread_time_ns``: what mapping takes from the application, and steady on a loaded
machine where wall time is not); the median and the fastest run are printed in µs per span::

    python -m benchmarks.bench_mapping [--runs 15] [--profile app|plain]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from benchmarks.bench_common import span_attributes
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.scrubbing import Scrubber

REQUESTS = 128  # about 1,400 spans in the app batch
PLAIN_SPANS = 1024
FAILING_EVERY = 8


class Keep(SpanProcessor):
    """Keeps every ended span."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def provider_with(keep: Keep) -> TracerProvider:
    """A provider with a typical resource whose ended spans go to ``keep``."""
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
    return provider


class OrderNotFoundError(LookupError):
    """What a failing request raises."""


async def handle(tracer: Tracer, number: int) -> None:
    """The work of one request: the spans an instrumented service makes inside it."""
    with tracer.start_as_current_span("orders.load", attributes={"execution.id": number}):
        with tracer.start_as_current_span(
            "GET", kind=SpanKind.CLIENT, attributes={"cache.key": f"order:{number}"}
        ) as span:
            span.set_attributes(
                {
                    "db.system": "redis",
                    "db.operation": "GET",
                    "db.redis.key": f"order:{number}",
                    "db.redis.database_index": 0,
                    "net.peer.name": "cache.internal",
                    "net.peer.port": 6379,
                    "cache.hit": number % 3 != 0,
                }
            )
        with tracer.start_as_current_span(
            "SELECT shop",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": "postgresql",
                "db.name": "shop",
                "db.user": "app",
                "db.statement": "SELECT o.id, o.total, o.status, c.email FROM orders o "
                "JOIN customers c ON c.id = o.customer_id WHERE o.id = %s",
                "net.peer.name": "db.internal",
                "net.peer.port": 5432,
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
                "network.protocol.version": "1.1",
            },
        ):
            pass
    with tracer.start_as_current_span(
        "orders publish",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": "orders",
            "messaging.operation": "publish",
            "messaging.kafka.message.key": f"order-{number}",
            "messaging.kafka.destination.partition": number % 12,
            "idempotency_key": f"4f0c2d7e-{number:04d}",
        },
    ):
        pass
    if number % FAILING_EVERY == FAILING_EVERY - 1:
        with tracer.start_as_current_span("orders.validate") as span:
            error = OrderNotFoundError(f"order {number} not found")
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"OrderNotFoundError: order {number}"))


def asgi_app(tracer: Tracer) -> Callable[..., Any]:
    """A bare ASGI app that answers every request after ``handle``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        number = int(scope["path"].rsplit("/", 1)[1])
        failed = number % FAILING_EVERY == FAILING_EVERY - 1
        await handle(tracer, number)
        status = 404 if failed else 200
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    return app


async def serve(app: Any, number: int) -> None:
    """One GET request through the instrumented app."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/orders/{number}",
        "raw_path": f"/orders/{number}".encode(),
        "query_string": b"expand=items",
        "root_path": "",
        "headers": [
            (b"host", b"orders.internal:8000"),
            (b"user-agent", b"python-httpx/0.27.0"),
            (b"accept", b"application/json"),
        ],
        "client": ("10.0.3.17", 52114),
        "server": ("10.0.1.5", 8000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


def app_batch() -> list[ReadableSpan]:
    """The spans of ``REQUESTS`` requests to the instrumented ASGI service."""
    keep = Keep()
    provider = provider_with(keep)
    tracer = provider.get_tracer("orders.app", "2.14.1")
    app = OpenTelemetryMiddleware(asgi_app(tracer), tracer_provider=provider)

    async def all_requests() -> None:
        for number in range(REQUESTS):
            await serve(app, number)

    asyncio.run(all_requests())
    return keep.spans


def plain_batch() -> list[ReadableSpan]:
    """``PLAIN_SPANS`` internal spans with the five benchmark attributes."""
    keep = Keep()
    tracer = provider_with(keep).get_tracer("bench.plain")
    for number in range(PLAIN_SPANS):
        with tracer.start_as_current_span("bench.op", attributes=span_attributes(number)):
            pass
    return keep.spans


def new_mapper() -> SpanMapper:
    """The mapper as the exporter builds it by default: scrubbing on."""
    return SpanMapper(scrubber=Scrubber())


def map_all(mapper: SpanMapper, spans: Sequence[ReadableSpan]) -> None:
    """The measured work: one row per span."""
    to_row = mapper.to_row
    for span in spans:
        to_row(span)


def us_per_span(spans: Sequence[ReadableSpan], runs: int) -> tuple[float, float]:
    """Median and fastest µs per span over ``runs`` runs of one warmed mapper."""
    mapper = new_mapper()
    map_all(mapper, spans)
    timings: list[float] = []
    for _ in range(runs):
        started = time.thread_time_ns()
        map_all(mapper, spans)
        timings.append((time.thread_time_ns() - started) / 1000 / len(spans))
    return statistics.median(timings), min(timings)


def profile(spans: Sequence[ReadableSpan], runs: int) -> None:
    """Print the functions that take the most time when mapping ``spans``."""
    mapper = new_mapper()
    map_all(mapper, spans)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        map_all(mapper, spans)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the median and fastest µs per span of each batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--profile", choices=("app", "plain"))
    args = parser.parse_args(argv)
    batches = {"app": app_batch(), "plain": plain_batch()}
    if args.profile:
        profile(batches[args.profile], args.runs)
        return
    for name, spans in batches.items():
        median, fastest = us_per_span(spans, args.runs)
        print(f"{name:5} {len(spans):5} spans  median {median:6.2f} µs/span  min {fastest:6.2f}")


if __name__ == "__main__":
    main()
