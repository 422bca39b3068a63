"""A BatchSpanProcessor that counts the spans it drops because its queue is full and lets
the PostgreSQL exporter store batches on a sender thread of its own."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from opentelemetry.sdk.environment_variables import OTEL_BSP_MAX_QUEUE_SIZE
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from otel_pg_exporter.settings import DEFAULT_MAX_QUEUE_SIZE


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's processor, with two additions for ``PostgresSpanExporter``.

    Its ``force_flush`` also flushes the exporter, so it turns on the exporter's sender
    thread (``use_sender_thread``): the export thread maps the next batch while PostgreSQL
    stores the last one, and a flush still returns only once the spans are stored.

    A span arriving at a full queue pushes the oldest one out, and that loss is counted in
    the exporter's ``spans_dropped_queue_full``.

    The check is one ``len()`` on the application's thread, and only a full queue pays more.
    It runs just before the span enters the queue, so when the export thread takes a batch at
    that very moment a span is counted that was not lost: the count is an upper bound.
    """

    def __init__(self, span_exporter: SpanExporter, **options: Any) -> None:
        if options.get("max_queue_size") is None and not os.environ.get(OTEL_BSP_MAX_QUEUE_SIZE):
            options["max_queue_size"] = DEFAULT_MAX_QUEUE_SIZE
        super().__init__(span_exporter, **options)
        self._exporter = span_exporter
        use_sender_thread = getattr(span_exporter, "use_sender_thread", None)
        if callable(use_sender_thread):
            use_sender_thread()
        queue = getattr(self._batch_processor, "_queue", None)
        self._queue: deque[Any] | None = queue if isinstance(queue, deque) else None
        metrics = getattr(span_exporter, "metrics", None)
        self._count_drop = getattr(metrics, "dropped", None)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if (
            queue is not None
            and self._count_drop is not None
            and len(queue) == queue.maxlen
            and span.context is not None
            and span.context.trace_flags.sampled
        ):
            self._count_drop(1, "queue_full")
        super().on_end(span)

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        """Export every queued span, then wait (within the timeout) until the exporter has
        stored them: True when all are in the table."""
        timeout_millis = 30_000 if timeout_millis is None else timeout_millis
        started = time.monotonic()
        queued_out = super().force_flush(timeout_millis)
        left_ms = max(0, timeout_millis - int((time.monotonic() - started) * 1000))
        return self._exporter.force_flush(left_ms) and queued_out

    def shutdown(self, timeout_millis: int | None = None) -> None:
        """Export what is queued and shut the exporter down, within ``timeout_millis``
        (30 s when not given) in all: the exporter gets what is left of it."""
        shutdown_within(self, timeout_millis)


def shutdown_within(processor: BatchSpanProcessor, timeout_millis: int | None) -> None:
    """Shut a batch processor down within ``timeout_millis`` in all.

    The SDK's ``BatchSpanProcessor.shutdown()`` takes no timeout and waits up to 30 s; from
    opentelemetry-sdk 1.34 its inner processor takes one and passes what is left to the
    exporter. Earlier SDKs get the plain shutdown."""
    inner = getattr(processor, "_batch_processor", None)
    if timeout_millis is not None and callable(getattr(inner, "shutdown", None)):
        inner.shutdown(timeout_millis=timeout_millis)  # type: ignore[union-attr]
    else:
        BatchSpanProcessor.shutdown(processor)  # type: ignore[no-untyped-call]  # SDK untyped
