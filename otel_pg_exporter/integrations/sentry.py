"""The Sentry bridge: the only module that imports ``sentry_sdk``.

Error events carry the trace_id and span_id of the OpenTelemetry span active when they were
captured (sentry-sdk's OTLP integration registers that propagation context), and the span gets
a ``sentry.event_id`` attribute, so a ``trace_spans`` row and its Sentry issue point at each
other. Sentry's own tracing stays off (its trace ids would win over OpenTelemetry's); instead a
per-trace ratio of the spans goes to Sentry's OTLP endpoint, while PostgreSQL gets them all.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from otel_pg_exporter.export.late_attributes import LATE_ATTRIBUTES
from otel_pg_exporter.export.processor import shutdown_within
from otel_pg_exporter.export.scrubbing import Scrubber

INSTALL_HINT = "pip install 'otel_pg_exporter[sentry]'"

try:
    import sentry_sdk
    from sentry_sdk.consts import VERSION as SENTRY_VERSION
    from sentry_sdk.consts import EndpointType
    from sentry_sdk.integrations import DidNotEnable
    from sentry_sdk.scope import register_external_propagation_context
    from sentry_sdk.utils import Dsn

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from sentry_sdk.integrations.otlp import OTLPIntegration, otel_propagation_context
    except (ImportError, DidNotEnable) as exc:
        raise ImportError(str(exc)) from exc
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise ImportError(
        f"The Sentry bridge needs sentry-sdk and the OTLP HTTP exporter: {INSTALL_HINT}"
    ) from exc

logger = logging.getLogger("otel_pg_exporter")

EVENT_ID_ATTRIBUTE = "sentry.event_id"
PRODUCTION_SAMPLE_RATE = 0.1
DEFAULT_SAMPLE_RATE = 1.0
_TRACE_ID_LOW_BITS = (1 << 64) - 1

BeforeSend = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None]


def default_sample_rate(environment: str | None) -> float:
    """1.0 everywhere but production, where 0.1 keeps Sentry within its quota."""
    return (
        PRODUCTION_SAMPLE_RATE
        if (environment or "").lower() in {"production", "prod"}
        else (DEFAULT_SAMPLE_RATE)
    )


def trace_is_sampled(trace_id: int, rate: float) -> bool:
    """The same decision for every span of a trace, in every service: as TraceIdRatioBased."""
    return (trace_id & _TRACE_ID_LOW_BITS) < round(rate * (1 << 64))


class _TraceRatioProcessor(SpanProcessor):
    """Hands a span to ``inner`` only when its trace falls within ``rate``."""

    def __init__(self, inner: BatchSpanProcessor, rate: float) -> None:
        self._inner = inner
        self._bound = round(rate * (1 << 64))

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and (context.trace_id & _TRACE_ID_LOW_BITS) < self._bound:
            self._inner.on_end(span)

    def shutdown(self, timeout_millis: int | None = None) -> None:
        shutdown_within(self._inner, timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _ScrubbingExporter(SpanExporter):
    """Scrubs credentials from span attributes before they leave for Sentry."""

    def __init__(self, inner: SpanExporter, scrubber: Scrubber | None) -> None:
        self._inner = inner
        self._scrubber = scrubber

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._scrubber is not None:
            spans = [self._scrub(span) for span in spans]
        return self._inner.export(spans)

    def _scrub(self, span: ReadableSpan) -> ReadableSpan:
        # Everything a trace_spans row scrubs: name, status, attributes, events (names too),
        # links and resource attributes. Runs on the Sentry exporter's own thread.
        scrubber = self._scrubber
        assert scrubber is not None
        status = span.status
        if status.description:
            status = Status(status.status_code, scrubber.scrub_text(status.description))
        resource = span.resource
        return ReadableSpan(
            name=scrubber.scrub_text(span.name),
            context=span.context,
            parent=span.parent,
            resource=Resource(scrubber.scrub_mapping(resource.attributes), resource.schema_url),
            attributes=scrubber.scrub_mapping(span.attributes or {}),
            events=tuple(
                Event(
                    scrubber.scrub_text(event.name),
                    scrubber.scrub_mapping(event.attributes or {}),
                    event.timestamp,
                )
                for event in span.events
            ),
            links=tuple(
                trace.Link(link.context, scrubber.scrub_mapping(link.attributes or {}))
                for link in span.links
            ),
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class EventFilter:
    """Sentry ``before_send``: drops noisy errors, runs the user's hooks, scrubs, links the span."""

    def __init__(
        self,
        *,
        ignore_errors: Sequence[str | type[BaseException]] = (),
        ignore_messages: Sequence[str] = (),
        user_before_send: BeforeSend | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        self._ignored_names = {
            item if isinstance(item, str) else item.__name__ for item in ignore_errors
        }
        self._ignored_types = tuple(item for item in ignore_errors if isinstance(item, type))
        self._ignored_messages = [re.compile(pattern) for pattern in ignore_messages]
        self.user_hooks: list[BeforeSend] = [user_before_send] if user_before_send else []
        self._scrubber = scrubber

    def __call__(self, event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        if self._is_ignored(event, hint):
            return None
        for hook in self.user_hooks:
            result = hook(event, hint)
            if result is None:
                return None
            event = result
        if self._scrubber is not None:
            event = self._scrubber.scrub_mapping(event)
        event_id = event.get("event_id")
        if isinstance(event_id, str):
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute(EVENT_ID_ATTRIBUTE, event_id)
            else:
                # Captured just after its span ended (an ASGI server span ends with the
                # response, before the framework reports the error): the row gets it at export.
                context = span.get_span_context()
                if context.is_valid:
                    LATE_ATTRIBUTES.add(
                        context.trace_id, context.span_id, EVENT_ID_ATTRIBUTE, event_id
                    )
        return event

    def _is_ignored(self, event: Mapping[str, Any], hint: Mapping[str, Any]) -> bool:
        exc_info = hint.get("exc_info")
        exception = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
        names: set[str] = set()
        if isinstance(exception, BaseException):
            if self._ignored_types and isinstance(exception, self._ignored_types):
                return True
            for cls in type(exception).__mro__:
                names.update((cls.__name__, f"{cls.__module__}.{cls.__qualname__}"))
        messages = [str(exception)] if exception is not None else []
        for value in (event.get("exception") or {}).get("values") or []:
            names.add(str(value.get("type", "")))
            messages.append(str(value.get("value", "")))
        logentry = event.get("logentry") or {}
        messages.append(str(event.get("message") or logentry.get("message") or ""))
        if names & self._ignored_names:
            return True
        return any(pattern.search(text) for pattern in self._ignored_messages for text in messages)


class SentryBridge:
    """What ``attach`` set up, for the handle to flush and shut down."""

    def __init__(self, processor: _TraceRatioProcessor | None, event_filter: EventFilter) -> None:
        self.processor = processor
        self.event_filter = event_filter

    def force_flush(self, timeout: float) -> None:
        """Send what Sentry has queued, spans then events, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if self.processor is not None:
            self.processor.force_flush(int(timeout * 1000))
        sentry_sdk.flush(timeout=max(0.0, deadline - time.monotonic()))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the span processor within ``timeout`` seconds (sentry-sdk sends its queued
        events at exit itself)."""
        if self.processor is not None:
            self.processor.shutdown(int(timeout * 1000))


def attach(
    provider: TracerProvider | None,
    *,
    dsn: str | None,
    environment: str | None = None,
    release: str | None = None,
    traces_sample_rate: float | None = None,
    ignore_errors: Sequence[str | type[BaseException]] = (),
    ignore_messages: Sequence[str] = (),
    before_send: BeforeSend | None = None,
    scrubber: Scrubber | None = None,
    transport: Any = None,
) -> SentryBridge:
    """Start sentry-sdk (or join the client already started) and link it to ``provider``."""
    event_filter = EventFilter(
        ignore_errors=ignore_errors,
        ignore_messages=ignore_messages,
        user_before_send=before_send,
        scrubber=scrubber,
    )
    client = sentry_sdk.get_client()
    if client.is_active():
        # Joining the application's own sentry_sdk.init: keep its options, chain its hook
        # before configure()'s own.
        existing = client.options.get("before_send")
        if callable(existing) and not isinstance(existing, EventFilter):
            event_filter.user_hooks.insert(0, existing)
        client.options["before_send"] = event_filter
        register_external_propagation_context(otel_propagation_context)
        dsn = client.options.get("dsn")
        environment = client.options.get("environment")
    else:
        options: dict[str, Any] = {
            "dsn": dsn,
            "environment": environment,
            "release": release,
            "before_send": event_filter,
            # Sentry's own tracing stays off: OpenTelemetry's ids must be the ones Sentry shows.
            "traces_sample_rate": None,
            "integrations": [
                OTLPIntegration(setup_otlp_traces_exporter=False, setup_propagator=False)
            ],
        }
        if transport is not None:
            options["transport"] = transport
        sentry_sdk.init(**options)
        environment = sentry_sdk.get_client().options.get("environment")
    rate = default_sample_rate(environment) if traces_sample_rate is None else traces_sample_rate
    processor = None
    if provider is not None and dsn and rate > 0:
        processor = _TraceRatioProcessor(
            BatchSpanProcessor(_ScrubbingExporter(_sentry_otlp_exporter(dsn), scrubber)), rate
        )
        provider.add_span_processor(processor)
    return SentryBridge(processor, event_filter)


def check_dsn(dsn: str) -> str | None:
    """Why sentry-sdk would refuse ``dsn``, or None when it is usable."""
    try:
        Dsn(dsn)
    except Exception as exc:  # sentry-sdk raises BadDsn, and ValueError for some inputs
        return f"{type(exc).__name__}: {exc}"
    return None


def _sentry_otlp_exporter(dsn: str) -> OTLPSpanExporter:
    auth = Dsn(dsn).to_auth(f"sentry.python/{SENTRY_VERSION}")
    return OTLPSpanExporter(
        endpoint=auth.get_api_url(EndpointType.OTLP_TRACES),
        headers={"X-Sentry-Auth": auth.to_header()},
        timeout=5,
    )
