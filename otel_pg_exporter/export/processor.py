"""A BatchSpanProcessor that counts the spans it drops because its queue is full and lets
the PostgreSQL exporter store batches on a sender thread of its own."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.environment_variables import OTEL_BSP_MAX_QUEUE_SIZE
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from otel_pg_exporter.settings import DEFAULT_MAX_QUEUE_SIZE

logger = logging.getLogger("otel_pg_exporter")

_warned_no_queue = False
_getpid = os.getpid


def find_span_queue(processor: object) -> deque[Any] | None:
    """The bounded deque a ``BatchSpanProcessor`` keeps its waiting spans in, or None.

    An SDK internal, read only to count the spans a full queue pushes out: from
    opentelemetry-sdk 1.34 it is ``_batch_processor._queue`` (the shared ``BatchProcessor``),
    before that ``queue`` on the processor itself. On an SDK where neither is a bounded deque
    the count is skipped (one warning per process), and the spans flow through the SDK's public
    API exactly as before."""
    global _warned_no_queue  # noqa: PLW0603 - one warning per process, not per processor
    candidates = (
        getattr(getattr(processor, "_batch_processor", None), "_queue", None),
        getattr(processor, "queue", None),
    )
    for queue in candidates:
        if isinstance(queue, deque) and queue.maxlen is not None:
            return queue
    if not _warned_no_queue:
        _warned_no_queue = True
        logger.warning(
            "otel_pg_exporter does not know this opentelemetry-sdk's BatchSpanProcessor "
            "internals: spans_dropped_queue_full will not be counted (spans are exported as usual)"
        )
    return None


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's processor, with two additions for ``PostgresSpanExporter``.

    Its ``force_flush`` also flushes the exporter, so it turns on the exporter's sender
    thread (``use_sender_thread``): the export thread maps the next batch while PostgreSQL
    stores the last one, and a flush still returns only once the spans are stored.

    A span arriving at a full queue pushes the oldest one out, and that loss is counted in
    the exporter's ``spans_dropped_queue_full``.

    The check is one ``len()`` on the application's thread, and only a full queue pays more.
    A span dropped costs well under a microsecond: on the SDKs whose inner processor this
    class knows (opentelemetry-sdk 1.34 and later), the span is queued here exactly as the
    SDK would (the oldest leaves the bounded deque), without the SDK's per-span "Queue full"
    log record (about 4 µs each), and counted with one atomic ``next()``; the exporter then
    says how many were dropped in one rate-limited warning. The count is taken just before
    the span enters the queue, so when the export thread takes a batch at that very moment a
    span is counted that was not lost: the count is an upper bound, exceeding the loss by at
    most one batch.
    """

    def __init__(self, span_exporter: SpanExporter, **options: Any) -> None:
        if options.get("max_queue_size") is None and not os.environ.get(OTEL_BSP_MAX_QUEUE_SIZE):
            options["max_queue_size"] = DEFAULT_MAX_QUEUE_SIZE
        super().__init__(span_exporter, **options)
        self._exporter = span_exporter
        use_sender_thread = getattr(span_exporter, "use_sender_thread", None)
        if callable(use_sender_thread):
            use_sender_thread()
        self._queue = find_span_queue(self)
        metrics = getattr(span_exporter, "metrics", None)
        drop_counter = getattr(metrics, "drop_counter", None)
        self._count_drop: Callable[[], object] | None = (
            drop_counter("queue_full") if callable(drop_counter) else None
        )
        self._inner = _known_inner_processor(self, self._queue)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if queue is not None and len(queue) == queue.maxlen:
            context = span.context
            # SpanContext is a tuple; its flags (index 3) are an int: bit 0 is "sampled".
            if context is None or not context[3] & 1:
                return  # what the SDK's on_end does with an unsampled span
            count_drop = self._count_drop
            inner = self._inner
            if inner is not None and not inner._shutdown and inner._pid == _getpid():
                # The SDK's emit() without its per-span warning: the oldest span leaves the
                # right of the bounded deque, and the export thread is woken.
                queue.appendleft(span)
                if count_drop is not None:
                    count_drop()
                awaken = inner._worker_awaken
                if not awaken._flag:
                    awaken.set()
                return
            if count_drop is not None:
                count_drop()
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


_shut_down: weakref.WeakSet[BatchSpanProcessor] = weakref.WeakSet()
_shut_down_lock = threading.Lock()


def shutdown_within(processor: BatchSpanProcessor, timeout_millis: int | None) -> None:
    """Shut a batch processor down within ``timeout_millis`` in all; idempotent.

    The SDK's ``BatchSpanProcessor.shutdown()`` takes no timeout and waits up to 30 s (before
    opentelemetry-sdk 1.34, for as long as the exporter's retries take); from 1.36 its inner
    processor (``_batch_processor``, an internal) takes one and passes what is left to the
    exporter. Earlier SDKs, or one whose internals moved, get the public-API path
    (``_shutdown_by_public_api``). A later call, such as the provider's at exit after the
    Handle's, returns at once."""
    with _shut_down_lock:
        if processor in _shut_down:
            return
        _shut_down.add(processor)
    inner = getattr(processor, "_batch_processor", None)
    if timeout_millis is None:
        BatchSpanProcessor.shutdown(processor)  # type: ignore[no-untyped-call]  # SDK untyped
    elif _takes_timeout(getattr(inner, "shutdown", None)):
        inner.shutdown(timeout_millis=timeout_millis)  # type: ignore[union-attr]
    else:
        _shutdown_by_public_api(processor, timeout_millis)


def _shutdown_by_public_api(processor: BatchSpanProcessor, timeout_millis: int) -> None:
    """A flush within the timeout, the exporter's shutdown with what is left when it takes a
    timeout (``PostgresSpanExporter`` spools what it could not store), then the SDK's plain
    shutdown, waited for until the deadline only: an exporter still retrying (the OTLP
    exporter sleeps up to a minute between attempts before opentelemetry-sdk 1.34) finishes
    on a daemon thread instead of holding up the application's exit."""
    deadline = time.monotonic() + timeout_millis / 1000

    def left_ms() -> int:
        return max(0, int((deadline - time.monotonic()) * 1000))

    BatchSpanProcessor.force_flush(processor, timeout_millis)
    exporter = getattr(processor, "span_exporter", None)
    exporter_shutdown: Any = getattr(exporter, "shutdown", None)
    if _takes_timeout(exporter_shutdown):
        exporter_shutdown(timeout_millis=left_ms())
    stopper = threading.Thread(
        target=BatchSpanProcessor.shutdown,
        args=(processor,),
        name="otel_pg_exporter-shutdown",
        daemon=True,
    )
    stopper.start()
    stopper.join(left_ms() / 1000)
    if stopper.is_alive():
        logger.warning(
            "The span processor of %s did not stop within %d ms; it finishes in the background",
            type(exporter).__name__,
            timeout_millis,
        )


def _known_inner_processor(processor: object, queue: deque[Any] | None) -> Any:
    """The SDK's inner ``BatchProcessor`` (opentelemetry-sdk 1.34 and later) when it has every
    field ``on_end``'s drop path uses, else None (that path then calls the SDK's own)."""
    inner = getattr(processor, "_batch_processor", None)
    if inner is None or queue is None or getattr(inner, "_queue", None) is not queue:
        return None
    if not isinstance(getattr(inner, "_shutdown", None), bool):
        return None
    if not isinstance(getattr(inner, "_pid", None), int):
        return None
    awaken = getattr(inner, "_worker_awaken", None)
    if not isinstance(awaken, threading.Event) or not isinstance(
        getattr(awaken, "_flag", None), bool
    ):
        return None
    return inner


def _takes_timeout(method: Any) -> bool:
    if not callable(method):
        return False
    try:
        return "timeout_millis" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
