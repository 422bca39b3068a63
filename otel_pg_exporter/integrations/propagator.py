"""The ``xtrace`` propagator: trace context in ``X-Trace-ID`` / ``X-Request-ID`` headers.

An existing Go job runner carries its trace over HTTP in these two headers, with 16-hex ids
(8 random bytes). With ``OTEL_PROPAGATORS=tracecontext,baggage,xtrace`` a Python service
continues such a trace, and passes it on in the same headers so that a downstream service
reading only them sees the very same id.

Ids follow the one format of the table: W3C lowercase hex. A 16-hex trace id is left-padded
with zeros to 32, as B3 does for 64-bit ids; on the way out a trace id whose high 64 bits are
zero goes back as 16 hex, so the Go runner gets back the string it sent.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

__all__ = ["REQUEST_ID_HEADER", "TRACE_ID_HEADER", "XTracePropagator"]

TRACE_ID_HEADER = "X-Trace-ID"
REQUEST_ID_HEADER = "X-Request-ID"

# ASCII only: str.isdigit() and int(..., 16) accept far more than hex ("0x", "_", "٣").
_HEX_ID = re.compile(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}")
_LOW_64_BITS = (1 << 64) - 1


class XTracePropagator(TextMapPropagator):
    """Reads and writes the Go runner's ``X-Trace-ID`` and ``X-Request-ID`` headers.

    Registered as the ``xtrace`` entry point of ``opentelemetry_propagator``. Placed after
    ``tracecontext`` it only fills in for requests without a valid ``traceparent``.
    """

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        """The context with the remote parent named by the headers, or ``context`` unchanged
        when it already holds a valid span context or the trace id is missing or invalid."""
        if context is None:
            context = Context()
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
        trace_id = parse_id(first_header(carrier, getter, TRACE_ID_HEADER))
        if trace_id is None:
            return context
        span_context = trace.SpanContext(
            trace_id=trace_id,
            span_id=parent_span_id(first_header(carrier, getter, REQUEST_ID_HEADER)),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Writes the current span's trace id (16 hex when it fits in 64 bits) and span id."""
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        setter.set(carrier, TRACE_ID_HEADER, format_trace_id(span_context.trace_id))
        setter.set(carrier, REQUEST_ID_HEADER, trace.format_span_id(span_context.span_id))

    @property
    def fields(self) -> set[str]:
        """The header names ``inject`` sets."""
        return {TRACE_ID_HEADER, REQUEST_ID_HEADER}


def first_header(carrier: CarrierT, getter: Getter[CarrierT], name: str) -> str:
    """The first value of header ``name``, stripped; ``""`` when absent or not text.

    Header names are case-insensitive but plain dict carriers are not, so the lowercase form
    (HTTP/2, ASGI) is tried before the canonical one.
    """
    for key in (name.lower(), name):
        values = getter.get(carrier, key)
        if values:
            value = values[0]
            return value.strip() if isinstance(value, str) else ""
    return ""


def parse_id(text: str) -> int | None:
    """The non-zero id written as 16 or 32 hex digits in any case; ``None`` otherwise.

    A 16-hex id becomes the low half of a 128-bit trace id: left-padded with zeros.
    """
    if not _HEX_ID.fullmatch(text):
        return None
    return int(text, 16) or None


def parent_span_id(request_id: str) -> int:
    """The remote parent's span id, never zero.

    The request id itself when it is a non-zero 16-hex id (the low 64 bits of a 32-hex one);
    else a stable id derived from its text, so every span of one request shares a parent;
    else, without a request id, a random one.
    """
    parsed = parse_id(request_id)
    if parsed is not None and parsed & _LOW_64_BITS:
        return parsed & _LOW_64_BITS
    if request_id:
        digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()
        for offset in range(0, len(digest), 8):
            derived = int.from_bytes(digest[offset : offset + 8], "big")
            if derived:
                return derived
    span_id = 0
    while not span_id:
        span_id = secrets.randbits(64)
    return span_id


def format_trace_id(trace_id: int) -> str:
    """16 hex for a trace id that fits in 64 bits (it came from a 16-hex id), else 32 hex."""
    if trace_id <= _LOW_64_BITS:
        return f"{trace_id:016x}"
    return trace.format_trace_id(trace_id)
