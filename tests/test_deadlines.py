"""One deadline per call: a timeout given to Handle.force_flush or Handle.shutdown is turned
into one absolute deadline shared by the Sentry bridge, the processor and the exporter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from tcp_proxy import TcpProxy

from otel_pg_exporter import CountingBatchSpanProcessor, Handle, PostgresSpanExporter


class RecordingProcessor(SpanProcessor):
    """Remembers the timeouts it was given."""

    def __init__(self) -> None:
        self.flush_timeouts: list[int] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.flush_timeouts.append(timeout_millis)
        return True


class SlowSentryBridge:
    """Stands in for the Sentry bridge: each call takes ``seconds`` of the caller's time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.timeouts: list[float] = []

    def force_flush(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        time.sleep(self.seconds)

    def shutdown(self, timeout: float = 30.0) -> None:
        self.timeouts.append(timeout)
        time.sleep(self.seconds)


def test_force_flush_gives_the_processor_only_what_sentry_left() -> None:
    """The processor's timeout is the caller's minus the time the Sentry flush took, not the
    whole timeout again."""
    processor = RecordingProcessor()
    handle = Handle(enabled=True, processor=processor)
    bridge = SlowSentryBridge(0.3)
    handle.sentry = bridge  # type: ignore[assignment]  # only its two methods are called

    assert handle.force_flush(timeout=1.0)

    assert [1.0] == [round(timeout, 2) for timeout in bridge.timeouts]
    (given,) = processor.flush_timeouts
    assert given <= 700, f"the processor got {given} ms of a 1,000 ms timeout"


def test_force_flush_after_shutdown_is_false() -> None:
    """After shutdown nothing more can be stored: force_flush says False, as the exporter does."""
    handle = Handle(enabled=True, processor=RecordingProcessor())
    handle.shutdown(timeout=1.0)

    assert False is handle.force_flush(timeout=1.0)


def test_shutdown_honours_its_timeout_when_the_database_goes_silent(
    migrated_dsn: str, proxied: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    """Handle.shutdown(timeout=0.5) with spans held by a sender stuck on a silent network
    passes the exporter at most what is left of 0.5 s, returns about then (not after the
    exporter's own 3 s shutdown wait), and spools the spans it could not store."""
    proxy, dsn = proxied
    exporter = PostgresSpanExporter(dsn, enabled=True, timeout=30, spool_dir=str(tmp_path))
    given: list[Any] = []
    real_shutdown = exporter.shutdown

    def recording_shutdown(timeout_millis: float | None = None) -> None:
        given.append(timeout_millis)
        real_shutdown(timeout_millis)

    exporter.shutdown = recording_shutdown  # type: ignore[method-assign]
    provider = TracerProvider(resource=Resource.create({"service.name": "deadline-tests"}))
    processor = CountingBatchSpanProcessor(exporter, schedule_delay_millis=50)
    provider.add_span_processor(processor)
    handle = Handle(
        enabled=True, exporter=exporter, processor=processor, provider=provider, owns_provider=True
    )
    tracer = provider.get_tracer("tests.test_deadlines")
    with tracer.start_as_current_span("before the stall"):
        pass
    assert handle.force_flush(timeout=10.0)
    proxy.stall()
    for index in range(50):
        with tracer.start_as_current_span("work", attributes={"index": index}):
            pass
    time.sleep(0.2)  # the export thread hands the batch to the sender, which gets stuck

    started = time.monotonic()
    handle.shutdown(timeout=0.5)
    took = time.monotonic() - started
    proxy.resume()

    # The first call passes what is left; opentelemetry-sdk < 1.34 calls it once more from its
    # own shutdown (no timeout there), which finds the exporter already shut down.
    assert 1 == len(given) or given[1:] == [None]
    assert given[0] is not None and given[0] <= 500
    # Generous: what matters is that it is not the 3 s the exporter waits by itself.
    assert took < 2.5, f"shutdown(timeout=0.5) took {took:.2f} s"
    stats = exporter.stats()
    assert 50 == stats["spans_spooled"] + stats["spans_exported"] - 1
    with psycopg.connect(migrated_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trace_spans").fetchone()
    assert row is not None and row[0] >= 1
