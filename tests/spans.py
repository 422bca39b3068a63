"""Real OpenTelemetry SDK spans for tests, hypothesis strategies for attribute data, and an
independent statement of the documented sanitising that stored values are compared against.

Spans come from a real ``TracerProvider``: attributes go through the API, which filters and
converts them (sequences become tuples, invalid keys are dropped), so tests compare rows with
what a finished span actually holds, never with what was passed in.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    TraceFlags,
    Tracer,
    TraceState,
)
from opentelemetry.util.types import AttributeValue

SERVICE = "checkout"
SCOPE = "tests.spans"
REPLACEMENT = "\ufffd"

# 2023-11-14T22:13:20.123456789Z: odd nanoseconds show any rounding or float conversion.
T0_NS = 1_700_000_000_123_456_789


class KeepEveryEndedSpan(SpanProcessor):
    """Keeps every ended span, sampled or not (SimpleSpanProcessor skips unsampled ones)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


class SecretsIdGenerator(RandomIdGenerator):
    """Random ids from ``secrets``: hypothesis seeds the ``random`` module for every example,
    which would give each example's spans the same ids as the last one's."""

    def generate_span_id(self) -> int:
        return secrets.randbits(64) or 1

    def generate_trace_id(self) -> int:
        return secrets.randbits(128) or 1


class NonRandomIdGenerator(SecretsIdGenerator):
    """Random ids that do not claim W3C randomness, so spans get trace flags 1, not 3."""

    def is_trace_id_random(self) -> bool:
        return False


def otel_flags(span: ReadableSpan) -> dict[str, int]:
    """The otel document's trace_flags entry for ``span``: present when the flags are not 1.

    Since opentelemetry-sdk 1.3x a span of a new local trace has flags 3 (sampled and random
    trace id), so the entry is on most rows.
    """
    flags = int(span.context.trace_flags)
    return {} if flags == 1 else {"trace_flags": flags}


class SpanFactory:
    """A real TracerProvider whose finished spans are kept in memory, in the order they end."""

    def __init__(
        self,
        *,
        resource: Resource | None = None,
        limits: SpanLimits | None = None,
        sampler: Sampler | None = None,
        keep_unsampled: bool = False,
        id_generator: IdGenerator | None = None,
    ) -> None:
        self.provider = TracerProvider(
            resource=Resource({"service.name": SERVICE}) if resource is None else resource,
            span_limits=limits,
            sampler=sampler,
            id_generator=SecretsIdGenerator() if id_generator is None else id_generator,
            shutdown_on_exit=False,
        )
        self._memory = InMemorySpanExporter()
        self._every = KeepEveryEndedSpan()
        if keep_unsampled:
            self.provider.add_span_processor(self._every)
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(self._memory))
        self._keep_unsampled = keep_unsampled

    def tracer(
        self,
        name: str = SCOPE,
        version: str | None = None,
        *,
        schema_url: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Tracer:
        """A tracer of this provider for the instrumentation scope ``name``."""
        return self.provider.get_tracer(name, version, schema_url, attributes)

    def finished(self) -> tuple[ReadableSpan, ...]:
        """Every span finished so far, in the order they ended."""
        if self._keep_unsampled:
            return tuple(self._every.spans)
        return tuple(self._memory.get_finished_spans())

    def span(
        self,
        name: str = "operation",
        *,
        attributes: Mapping[str, Any] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        links: Sequence[Link] = (),
        status: Status | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        tracer: Tracer | None = None,
        build: Callable[[Span], None] | None = None,
    ) -> ReadableSpan:
        """One finished span; ``attributes`` are set through ``span.set_attributes``."""
        live = (tracer or self.tracer()).start_span(
            name, context=parent, kind=kind, links=links, start_time=start_time
        )
        if attributes:
            live.set_attributes(attributes)
        if build is not None:
            build(live)
        if status is not None:
            live.set_status(status)
        live.end(end_time=end_time)
        return self.finished()[-1]


def remote_parent(
    *,
    trace_id: int = 0x0AF7651916CD43DD8448EB211C80319C,
    span_id: int = 0x00F067AA0BA902B7,
    trace_state: TraceState | None = None,
) -> Context:
    """A context whose current span is a sampled span of another process."""
    context = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=trace_state,
    )
    return trace.set_span_in_context(NonRecordingSpan(context))


def link_to(
    trace_id: int, span_id: int, attributes: Mapping[str, AttributeValue] | None = None
) -> Link:
    """A link to a sampled span of another trace."""
    context = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return Link(context, attributes)


def parse_json(document: str) -> Any:
    """``json.loads`` that refuses the NaN/Infinity literals PostgreSQL's jsonb rejects."""

    def refuse(literal: str) -> Any:
        raise ValueError(f"non-standard JSON literal {literal}")

    return json.loads(document, parse_constant=refuse)


def strings_in(value: Any) -> Iterator[str]:
    """Every string, keys included, inside a parsed JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


# A \u0000 escape preceded by an even number of backslashes (an escaped backslash followed by
# the text "u0000" is harmless).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def assert_storable_json(document: str | None) -> None:
    """``document`` is standard JSON that PostgreSQL jsonb accepts: UTF-8, no NUL anywhere."""
    if document is None:
        return
    parsed = parse_json(document)
    encoded = document.encode("utf-8")  # raises on a lone surrogate
    assert b"\x00" not in encoded
    assert _NUL_ESCAPE.search(document) is None
    for text in strings_in(parsed):
        assert "\x00" not in text
        assert not any(0xD800 <= ord(char) <= 0xDFFF for char in text)


# --- the documented sanitising, written independently of otel_pg_exporter.export.mapping ----------


def cleaned_text(text: str) -> str:
    """NUL and lone surrogates become U+FFFD; a high+low surrogate pair becomes its character."""
    out: list[str] = []
    index = 0
    while index < len(text):
        code = ord(text[index])
        following = ord(text[index + 1]) if index + 1 < len(text) else 0
        if 0xD800 <= code <= 0xDBFF and 0xDC00 <= following <= 0xDFFF:
            out.append(chr(0x10000 + ((code - 0xD800) << 10) + (following - 0xDC00)))
            index += 2
            continue
        if code == 0 or 0xD800 <= code <= 0xDFFF:
            out.append(REPLACEMENT)
        else:
            out.append(text[index])
        index += 1
    return "".join(out)


def sanitised(value: Any) -> Any:
    """What a stored attribute value should read back as (values below the size caps)."""
    if isinstance(value, str):
        return cleaned_text(value)
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, bytes):
        return cleaned_text(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, Mapping):
        return sanitised_attributes(value)
    if isinstance(value, Sequence):
        return [sanitised(item) for item in value]
    raise AssertionError(f"not an attribute value: {value!r}")


def sanitised_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as stored: keys cleaned (a key that cleans to an earlier one gets a ')."""
    result: dict[str, Any] = {}
    for key, value in attributes.items():
        name = cleaned_text(key)
        while name in result:
            name += "'"
        result[name] = sanitised(value)
    return result


def with_expected_number_types(expected: Any, actual: Any) -> Any:
    """``actual`` with an int turned into a float wherever ``expected`` holds an equal float.

    jsonb stores numbers as numeric and prints 1e+16 as 10000000000000000, which reads back
    as an int; every other difference in type or value is left for the comparison to show.
    """
    if isinstance(expected, float) and type(actual) is int and float(actual) == expected:
        return float(actual)
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {
            key: with_expected_number_types(expected[key], item) if key in expected else item
            for key, item in actual.items()
        }
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            with_expected_number_types(want, got)
            for want, got in zip(expected, actual, strict=True)
        ]
    return actual


# --- hypothesis strategies: what the OpenTelemetry API accepts as attributes -----------------

# Chunks, not characters, so that NUL, lone surrogates, surrogate pairs and a literal
# backslash-u0000 come up often next to ordinary text.
_POISON_CHUNKS = ["\x00", "\ud800", "\udfff", "\ud83d", "\ude00", "\ud83d\ude00", "\\u0000"]
texts = st.lists(
    st.one_of(st.characters(exclude_categories=()), st.sampled_from(_POISON_CHUNKS)),
    max_size=12,
).map("".join)
keys = texts.filter(bool)
bools = st.booleans()
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e16, 1e300, 5e-324, -0.0]),
)


def _homogeneous_lists(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Tuples as well as lists: the API turns both into tuples.
    return st.one_of(st.lists(elements, max_size=5), st.tuples(elements, elements))


scalar_values: st.SearchStrategy[Any] = st.one_of(texts, bools, ints, floats)
attribute_values: st.SearchStrategy[Any] = st.one_of(
    scalar_values,
    _homogeneous_lists(texts),
    _homogeneous_lists(bools),
    _homogeneous_lists(ints),
    _homogeneous_lists(floats),
)
# Since opentelemetry-api 1.3x attributes may also be None, bytes, mappings and mixed sequences.
extended_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(scalar_values, st.none(), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=8,
)
attribute_dicts: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    keys, attribute_values, max_size=8
)
extended_attribute_dicts: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    keys, st.one_of(attribute_values, extended_values), max_size=8
)


def typed(value: Any) -> Any:
    """``value`` with every leaf paired with its type name, so True != 1 and 1.0 != 1."""
    if isinstance(value, Mapping):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    return (type(value).__name__, value)
