"""The processor configure() installs counts the spans a full queue pushes out."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export import processor as processor_module
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor, find_span_queue


class _BlockedExporter(PostgresSpanExporter):
    """Holds every export until released, as a database slower than the application would."""

    def __init__(self) -> None:
        super().__init__("postgresql://nobody@127.0.0.1:1/none", enabled=True, spool_dir="")
        self.release = threading.Event()
        self.received = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.received += len(spans)
        return SpanExportResult.SUCCESS


def test_spans_pushed_out_of_a_full_queue_are_counted() -> None:
    """Every span is exported or counted in spans_dropped_queue_full: none is lost unseen."""
    exporter = _BlockedExporter()
    processor = CountingBatchSpanProcessor(
        exporter, max_queue_size=10, max_export_batch_size=10, schedule_delay_millis=60_000
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for number in range(100):
        with tracer.start_as_current_span(f"span {number}"):
            pass
    exporter.release.set()
    provider.shutdown()

    dropped = exporter.stats().get("spans_dropped_queue_full", 0)
    assert dropped > 0
    # The count is taken just before the span enters the queue: when the export thread
    # empties a full queue at that very moment, a span is counted that was not lost, so the
    # count may exceed the loss by at most one batch.
    assert 100 <= exporter.received + dropped <= 100 + 10


@pytest.mark.parametrize(
    "shape",
    [
        SimpleNamespace(),
        SimpleNamespace(_batch_processor=SimpleNamespace()),
        SimpleNamespace(_batch_processor=SimpleNamespace(_queue=[1, 2])),
        SimpleNamespace(queue=deque()),  # unbounded: a full queue cannot be told apart
    ],
    ids=["neither", "inner-without-queue", "inner-queue-not-a-deque", "unbounded"],
)
def test_an_sdk_without_the_known_queue_skips_the_count_with_one_warning(
    shape: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Internals moved or missing: no queue, one warning per process, no exception."""
    monkeypatch.setattr(processor_module, "_warned_no_queue", False)
    with caplog.at_level(logging.WARNING, logger="otel_pg_exporter"):
        assert None is find_span_queue(shape)
        assert None is find_span_queue(shape)

    assert 1 == sum("spans_dropped_queue_full" in record.getMessage() for record in caplog.records)


def test_both_known_sdk_shapes_give_the_queue() -> None:
    """opentelemetry-sdk >= 1.34 keeps it in _batch_processor._queue, earlier ones in queue."""
    newer: deque[int] = deque(maxlen=5)
    older: deque[int] = deque(maxlen=5)

    assert newer is find_span_queue(SimpleNamespace(_batch_processor=SimpleNamespace(_queue=newer)))
    assert older is find_span_queue(SimpleNamespace(queue=older))


def test_without_the_queue_the_processor_exports_everything_and_counts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The public-API path: spans still reach the exporter; only the drop count is skipped."""
    monkeypatch.setattr(processor_module, "find_span_queue", lambda _: None)
    exporter = _BlockedExporter()
    exporter.release.set()
    processor = CountingBatchSpanProcessor(exporter, schedule_delay_millis=10)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for number in range(20):
        with tracer.start_as_current_span(f"span {number}"):
            pass

    assert processor.force_flush(5_000)
    provider.shutdown()

    assert 20 == exporter.received
    assert 0 == exporter.stats().get("spans_dropped_queue_full", 0)
    assert isinstance(processor, BatchSpanProcessor)


class _RecordingExporter(PostgresSpanExporter):
    """Records the timeout each shutdown call passes."""

    def __init__(self) -> None:
        super().__init__("postgresql://nobody@127.0.0.1:1/none", enabled=False, spool_dir="")
        self.shutdowns: list[float | None] = []

    def shutdown(self, timeout_millis: float | None = None) -> None:
        self.shutdowns.append(timeout_millis)
        super().shutdown(timeout_millis)


def test_an_inner_shutdown_without_a_timeout_takes_the_public_path() -> None:
    """As on opentelemetry-sdk 1.34 and 1.35, whose inner processor's shutdown() takes no
    timeout: no TypeError, the exporter gets what is left of the timeout, and a second
    shutdown (the provider's at exit) does nothing."""
    exporter = _RecordingExporter()
    processor = CountingBatchSpanProcessor(exporter, schedule_delay_millis=10)
    inner = getattr(processor, "_batch_processor", None)
    if inner is not None:
        real_shutdown = inner.shutdown

        def shutdown_without_timeout() -> None:  # the 1.34/1.35 signature
            real_shutdown()

        inner.shutdown = shutdown_without_timeout

    processor.shutdown(timeout_millis=2_000)
    calls = len(exporter.shutdowns)
    processor.shutdown()

    assert exporter.shutdowns[0] is not None and exporter.shutdowns[0] <= 2_000
    assert calls == len(exporter.shutdowns)


class _MapBlockedExporter(PostgresSpanExporter):
    """A real exporter whose export thread stops in its first mapping until released."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, enabled=True, spool_dir="")
        self.entered = threading.Event()
        self.release = threading.Event()

    def _map(self, spans: Sequence[ReadableSpan]) -> list[Any]:
        self.entered.set()
        self.release.wait(10)
        return super()._map(spans)


def test_a_full_queue_drops_quietly_and_counts_exactly_while_the_export_thread_is_busy(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the export thread held in one batch, every span past the queue's size is counted
    once, the SDK logs no per-span "Queue full" line, and the exporter says the count once."""
    exporter = _MapBlockedExporter(migrated_dsn)
    processor = CountingBatchSpanProcessor(
        exporter, max_queue_size=10, max_export_batch_size=10, schedule_delay_millis=60_000
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    caplog.set_level(logging.WARNING)
    for number in range(10):
        tracer.start_span(f"first {number}").end()
    assert exporter.entered.wait(10)
    for number in range(90):  # 10 fill the queue again, 80 push older ones out
        tracer.start_span(f"then {number}").end()
    exporter.release.set()
    assert processor.force_flush(10_000)

    assert 80 == exporter.stats()["spans_dropped_queue_full"]
    assert 20 == exporter.stats()["spans_exported"]
    assert [] == [r.getMessage() for r in caplog.records if "Queue full" in r.getMessage()]
    said = [r.getMessage() for r in caplog.records if r.name == "otel_pg_exporter"]
    assert 1 == len(said)
    assert said[0].startswith("Dropped 80 spans: the span queue was full")
    provider.shutdown()
