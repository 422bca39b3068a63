"""The Sentry bridge: the only module that imports ``sentry_sdk``.

Error events carry the trace_id and span_id of the OpenTelemetry span active when they were
captured (sentry-sdk's OTLP integration registers that propagation context), and the span gets
a ``sentry.event_id`` attribute, so a ``trace_spans`` row and its Sentry issue point at each
other. Sentry's own tracing stays off, also in a client the application started itself (a
Sentry transaction's trace id wins over OpenTelemetry's on every event captured inside it, and
the request would reach Sentry as a second trace); instead a per-trace share of the spans goes
to Sentry's OTLP endpoint, at the sampling the application had asked of Sentry, while
PostgreSQL gets them all.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import OrderedDict
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
    from sentry_sdk.scope import add_global_event_processor, register_external_propagation_context
    from sentry_sdk.tracing_utils import has_tracing_enabled
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
# sentry-sdk options that turn its own tracing on (has_tracing_enabled), named in the warning.
_SENTRY_TRACING_OPTIONS = ("traces_sample_rate", "traces_sampler", "enable_tracing")
# Where an exception remembers the last OpenTelemetry span that recorded it.
_RECORDED_BY = "_otel_pg_exporter_recorded_by"
# Per-trace decisions kept when the application's traces_sampler/before_send_transaction decide.
_MAX_DECISIONS = 10_000

BeforeSend = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None]
TracesSampler = Callable[[dict[str, Any]], Any]


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


# How often a span start looks for a Sentry client started after configure().
CLIENT_CHECK_INTERVAL_S = 0.1
_monotonic = time.monotonic


class _TraceRatioProcessor(SpanProcessor):
    """Hands a span to ``inner`` only when its trace falls within ``rate``.

    With the application's ``traces_sampler`` or ``before_send_transaction`` (taken over from
    its Sentry client), each trace is decided once, when its first span in this process starts:
    the sampler gets a Sentry-shaped sampling context and the hook a transaction-shaped event
    made from that span."""

    def __init__(
        self,
        inner: BatchSpanProcessor,
        rate: float,
        *,
        sampler: TracesSampler | None = None,
        before_send_transaction: BeforeSend | None = None,
    ) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._decided: OrderedDict[int, bool] = OrderedDict()
        self.follow(rate, sampler, before_send_transaction)

    def follow(
        self,
        rate: float,
        sampler: TracesSampler | None,
        before_send_transaction: BeforeSend | None,
    ) -> None:
        self._rate = rate
        self._bound = round(rate * (1 << 64))
        self._sampler = sampler
        self._before_send_transaction = before_send_transaction

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self._sampler is None and self._before_send_transaction is None:
            return
        parent = span.parent
        context = span.context
        if context is None or (parent is not None and not parent.is_remote):
            return  # decided by the trace's first span in this process
        keep = self._decide(span)
        with self._lock:
            self._decided[context.trace_id] = keep
            while len(self._decided) > _MAX_DECISIONS:
                self._decided.popitem(last=False)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        with self._lock:
            keep = self._decided.get(context.trace_id)
        if keep is None:
            keep = (context.trace_id & _TRACE_ID_LOW_BITS) < self._bound
        if keep:
            self._inner.on_end(span)

    def _decide(self, span: Span) -> bool:
        trace_id = span.context.trace_id
        rate: Any = self._rate
        try:
            if self._sampler is not None:
                rate = self._sampler(_sampling_context(span))
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                rate = 1.0 if rate is True else 0.0
            if not trace_is_sampled(trace_id, float(rate)):
                return False
            hook = self._before_send_transaction
            return hook is None or hook(_transaction_view(span), {}) is not None
        except Exception:  # the application's callback: as sentry-sdk, unsample the trace
            logger.warning("traces_sampler or before_send_transaction raised", exc_info=True)
            return False

    def shutdown(self, timeout_millis: int | None = None) -> None:
        shutdown_within(self._inner, timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _sampling_context(span: Span) -> dict[str, Any]:
    """What sentry-sdk's traces_sampler would get for a transaction begun at ``span``."""
    parent = span.parent
    return {
        "transaction_context": _transaction_view(span)["contexts"]["trace"]
        | {"name": span.name, "source": "custom"},
        "parent_sampled": None,  # OpenTelemetry's sampled flag is not a Sentry decision
        "otel_span": span,
        "remote_parent": parent is not None and parent.is_remote,
    }


def _transaction_view(span: Span) -> dict[str, Any]:
    """A transaction-shaped event for ``span``, for the application's before_send_transaction."""
    context = span.context
    parent = span.parent
    return {
        "type": "transaction",
        "transaction": span.name,
        "transaction_info": {"source": "custom"},
        "contexts": {
            "trace": {
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
                "op": "http.server" if span.kind is trace.SpanKind.SERVER else "default",
                "origin": "auto.otel",
                "data": dict(span.attributes or {}),
            }
        },
        "tags": {},
        "spans": [],
    }


_record_exception_patched = False


def _remember_recording_spans() -> None:
    """Let an exception remember the last span that recorded it: a framework (Sentry's ASGI
    middleware outside OpenTelemetry's) may report it after that span's context is gone."""
    global _record_exception_patched  # noqa: PLW0603
    if _record_exception_patched:
        return
    original = Span.record_exception

    def record_exception(self: Span, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        context = self.get_span_context()
        if context.is_valid:
            # An exception type refusing attributes simply is not remembered.
            with contextlib.suppress(Exception):
                setattr(exception, _RECORDED_BY, (context.trace_id, context.span_id))
        original(self, exception, *args, **kwargs)

    Span.record_exception = record_exception  # type: ignore[method-assign]
    _record_exception_patched = True


def _linked_ids(hint: Mapping[str, Any]) -> tuple[int, int, bool] | None:
    """(trace_id, span_id, is the current span) of the span an event belongs to, if any."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return context.trace_id, context.span_id, True
    exc_info = hint.get("exc_info")
    exception = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
    recorded = getattr(exception, _RECORDED_BY, None)
    if isinstance(recorded, tuple) and len(recorded) == 2:
        return recorded[0], recorded[1], False
    return None


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
        self.app_hook: BeforeSend | None = None  # the joined client's own before_send
        self._scrubber = scrubber

    def __call__(self, event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        if self._is_ignored(event, hint):
            return None
        linked = _linked_ids(hint)
        if linked is not None:
            # sentry-sdk puts the OpenTelemetry ids there unless a Sentry span is on the scope
            # or the span's context is gone: the event names the span either way.
            trace_id, span_id = f"{linked[0]:032x}", f"{linked[1]:016x}"
            contexts = event.setdefault("contexts", {})
            current = contexts.get("trace") or {}
            if (current.get("trace_id"), current.get("span_id")) != (trace_id, span_id):
                contexts["trace"] = {"trace_id": trace_id, "span_id": span_id}
        hooks = [self.app_hook, *self.user_hooks] if self.app_hook else self.user_hooks
        for hook in hooks:
            result = hook(event, hint)
            if result is None:
                return None
            event = result
        if self._scrubber is not None:
            event = self._scrubber.scrub_mapping(event)
        event_id = event.get("event_id")
        if isinstance(event_id, str) and linked is not None:
            span = trace.get_current_span()
            if linked[2] and span.is_recording():
                span.set_attribute(EVENT_ID_ATTRIBUTE, event_id)
            else:
                # Captured after its span ended (an ASGI server span ends with the response,
                # before the framework reports the error): the row gets it at export.
                LATE_ATTRIBUTES.add(linked[0], linked[1], EVENT_ID_ATTRIBUTE, event_id)
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
    """What ``attach`` set up, for the handle to flush and shut down; joins each client the
    application starts (before or after ``configure()``), and owns the forwarding of
    OpenTelemetry spans to the Sentry project of the client it joined."""

    def __init__(
        self,
        event_filter: EventFilter,
        *,
        provider: TracerProvider | None,
        scrubber: Scrubber | None,
        configured_rate: float | None = None,
    ) -> None:
        self.processor: _TraceRatioProcessor | None = None
        self.event_filter = event_filter
        self.configured_rate = configured_rate
        self.client: Any = None
        self.rate = 0.0
        self._provider = provider
        self._scrubber = scrubber
        self._lock = threading.Lock()

    def join(self, client: Any) -> None:
        """Link ``client`` (the application's or attach's own) to OpenTelemetry: its events
        name the current span, its own tracing gives way to the OpenTelemetry spans, which
        go to its project at the sampling it had been given."""
        with self._lock:
            if client is self.client:
                return
            self._join(client)
            self.client = client

    def _join(self, client: Any) -> None:
        options = client.options
        existing = options.get("before_send")
        if existing is not self.event_filter:
            app_hook = callable(existing) and not isinstance(existing, EventFilter)
            self.event_filter.app_hook = existing if app_hook else None
            options["before_send"] = self.event_filter
        register_external_propagation_context(otel_propagation_context)
        taken = _take_over_tracing(options)
        before_send_transaction = options.get("before_send_transaction")
        sampler = None
        if self.configured_rate is not None:
            self.rate = self.configured_rate
        elif taken is not None and taken[1] is not None:
            sampler = taken[1]
        elif taken is not None and taken[0] is not None:
            self.rate = taken[0]
        else:
            self.rate = default_sample_rate(options.get("environment"))
        dsn = options.get("dsn")
        if self.processor is None and self._provider is not None and dsn:
            self.processor = _TraceRatioProcessor(
                BatchSpanProcessor(_ScrubbingExporter(_sentry_otlp_exporter(dsn), self._scrubber)),
                0.0,
            )
            self._provider.add_span_processor(self.processor)
        if self.processor is not None:
            self.processor.follow(
                1.0 if sampler else self.rate,
                sampler,
                before_send_transaction if callable(before_send_transaction) else None,
            )

    def process_event(self, event: Any, hint: Any) -> Any:
        """A global Sentry event processor (it outlives ``sentry_sdk.init`` calls): joins a
        client started since, and drops the transactions Sentry's own tracing made before
        the join, so a request never reaches Sentry under a trace id of its own."""
        client = sentry_sdk.get_client()
        if client is not self.client and client.is_active():
            self.join(client)
        if event.get("type") == "transaction":
            return None
        return event

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


class _ClientWatch(SpanProcessor):
    """Joins a client the application starts after configure(), at a span start at most
    ``CLIENT_CHECK_INTERVAL_S`` later (a clock read per span, one lookup of the current
    client per interval). Transactions such a client began before the join are dropped by
    ``SentryBridge.process_event``, and an event joins it at once."""

    def __init__(self, bridge: SentryBridge) -> None:
        self._bridge = bridge
        self._next_check = 0.0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        now = _monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CLIENT_CHECK_INTERVAL_S
        client = sentry_sdk.get_client()
        if client is not self._bridge.client and client.is_active():
            self._bridge.join(client)


def _take_over_tracing(options: dict[str, Any]) -> tuple[float | None, TracesSampler | None] | None:
    """Switch the client's own tracing off, with one warning; what it had been asked to sample."""
    if not has_tracing_enabled(options):
        return None
    named = ", ".join(
        f"{name}={getattr(value, '__name__', None) or repr(value)}"
        for name in _SENTRY_TRACING_OPTIONS
        if (value := options.get(name)) is not None
    )
    sampler = options.get("traces_sampler")
    taken = (options.get("traces_sample_rate"), sampler if callable(sampler) else None)
    options["traces_sample_rate"] = None
    options["traces_sampler"] = None
    logger.warning(
        "sentry_sdk.init(%s): otel_pg_exporter turns Sentry's own tracing off, as its "
        "transactions would give errors and requests trace ids other than OpenTelemetry's; "
        "the OpenTelemetry spans of the traces this sampling keeps go to Sentry instead "
        "(sentry_traces_sample_rate / SENTRY_TRACES_SAMPLE_RATE sets another share)",
        named,
    )
    return taken


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
    """Start sentry-sdk with ``dsn`` (or join the client already started, or the one the
    application starts later) and link it to ``provider``."""
    event_filter = EventFilter(
        ignore_errors=ignore_errors,
        ignore_messages=ignore_messages,
        user_before_send=before_send,
        scrubber=scrubber,
    )
    _remember_recording_spans()
    client = sentry_sdk.get_client()
    if not client.is_active() and dsn:
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
        client = sentry_sdk.get_client()
    bridge = SentryBridge(
        event_filter, provider=provider, scrubber=scrubber, configured_rate=traces_sample_rate
    )
    if client.is_active():
        # The application's own sentry_sdk.init, or ours: keep its options but its tracing,
        # and chain its hook before configure()'s own.
        bridge.join(client)
    # Without a client yet, the application may start one later: join it then.
    add_global_event_processor(bridge.process_event)
    if provider is not None:
        provider.add_span_processor(_ClientWatch(bridge))
    return bridge


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
