"""The compiled fast path (fastpath.fast_to_row) gives exactly the rows of SpanMapper.to_row."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TraceState
from spans import (
    T0_NS,
    SpanFactory,
    attribute_dicts,
    extended_attribute_dicts,
    keys,
    link_to,
    remote_parent,
    texts,
)

from otel_pg_exporter.export import fastpath
from otel_pg_exporter.export.late_attributes import LateAttributes
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.scrubbing import Scrubber
from otel_pg_exporter.schema.table import STAGE_COLUMNS, Row

_fastrow: ModuleType | None
try:
    from otel_pg_exporter.export import _fastrow
except ImportError:
    _fastrow = None

compiled = pytest.mark.skipif(
    _fastrow is None,
    reason="otel_pg_exporter.export._fastrow is not built (no C compiler or Cython at install "
    "time); only the pure-Python mapper can be tested here",
)

EXPECT_VARIABLE = "OTEL_PG_EXPECT_FAST_PATH"
# Credential-looking text, so that scrubbing comes up in generated spans.
SECRETS = [
    "password=hunter2",
    "Authorization: Bearer abc.def.ghi",
    "postgres://app:s3cret@db/shop",
    "4111 1111 1111 1111",
    "api_key",
    "session",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
]

# Keys with and without a credential word; "cache.key" makes the document-wide check say "might".
SECRET_KEYS = ["api_key", "cache.key", "db.password", "token_count", "http.cookie", "job.step"]


class CarefulScrubber(Scrubber):
    """A Scrubber subclass: the fast path cannot know what it rewrites."""


class Fast:
    """The compiled FastRow of a mapper, with its fallback counters."""

    def __init__(self, mapper: SpanMapper) -> None:
        assert _fastrow is not None
        self.row: Any = _fastrow.FastRow(mapper)

    def __call__(self, span: ReadableSpan) -> Row:
        result: Row = self.row(span)
        return result

    @property
    def fallbacks(self) -> dict[str, int]:
        """Spans handed to the reference, by reason."""
        counts: dict[str, int] = self.row.fallback_counts()
        return counts


def typed_row(row: Row) -> list[tuple[str, Any]]:
    """Each element of ``row`` with its type name, so that 1 != True and None != ""."""
    return [(type(value).__name__, value) for value in row]


def both_rows(mapper: SpanMapper, span: ReadableSpan) -> tuple[Fast, Row, Row]:
    """The fast path, and the rows of the reference and of the fast path for ``span``."""
    fast = Fast(mapper)
    actual = fast(span)
    expected = mapper.to_row(span)
    return fast, expected, actual


class OtherSpan(ReadableSpan):
    """A ReadableSpan subclass: not a span the SDK makes."""


def copy_of(
    span: ReadableSpan, cls: type[ReadableSpan] = ReadableSpan, **changes: Any
) -> ReadableSpan:
    """A ``cls`` with the fields of ``span`` except ``changes``."""
    fields: dict[str, Any] = {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "resource": span.resource,
        "attributes": span.attributes,
        "events": span.events,
        "links": span.links,
        "kind": span.kind,
        "status": span.status,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "instrumentation_scope": span.instrumentation_scope,
    }
    fields.update(changes)
    return cls(**fields)


# --- the differential property test ----------------------------------------------------------

clean_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
clean_scalars = st.one_of(
    clean_text,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
clean_values = st.one_of(
    clean_scalars,
    st.lists(clean_text, max_size=4).map(tuple),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4).map(tuple),
)
clean_dicts = st.dictionaries(clean_text.filter(bool), clean_values, max_size=6)
secret_texts = st.one_of(texts, st.sampled_from(SECRETS), clean_text)
event_specs = st.lists(
    st.tuples(
        secret_texts,
        st.one_of(clean_dicts, attribute_dicts, extended_attribute_dicts),
        st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    ),
    max_size=3,
)
link_specs = st.sampled_from([0, 0, 0, 1]).flatmap(
    lambda most: st.lists(
        st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), attribute_dicts),
        min_size=most,
        max_size=2 * most,
    )
)


@st.composite
def span_cases(draw: st.DrawFn) -> tuple[SpanMapper, ReadableSpan]:
    """A mapper (scrubbing on or off, default or small size caps) and a span of anything the
    SDK lets through: every attribute type incl. poison, events, links, status, kind, parents,
    trace state, resources and scopes, dropped attributes and events."""
    resource_attributes = draw(st.one_of(st.just({"service.name": "checkout"}), attribute_dicts))
    limits = draw(
        st.sampled_from(
            [None, None, None, SpanLimits(max_span_attributes=3, max_events=2, max_links=1)]
        )
    )
    factory = SpanFactory(resource=Resource(resource_attributes), limits=limits)
    tracer = factory.tracer(
        draw(st.sampled_from(["tests.fastpath", "scope\x00", "\ud800"])),
        draw(st.one_of(st.none(), st.just("1.2.3"))),
    )
    attributes = draw(
        st.one_of(
            clean_dicts,
            st.dictionaries(st.one_of(keys, st.sampled_from(SECRET_KEYS)), secret_texts),
            attribute_dicts,
            extended_attribute_dicts,
        )
    )
    events = draw(event_specs)
    links = [link_to(*spec) for spec in draw(link_specs)]
    status = draw(
        st.one_of(
            st.none(),
            st.builds(
                Status, st.sampled_from(list(StatusCode)), st.one_of(st.none(), secret_texts)
            ),
        )
    )
    parent = draw(
        st.sampled_from(
            [
                None,
                None,
                remote_parent(),
                remote_parent(trace_state=TraceState([("vendor", "x")])),
            ]
        )
    )

    def build(live: Span) -> None:
        for name, event_attributes, timestamp in events:
            live.add_event(name, event_attributes, timestamp)

    span = factory.span(
        draw(st.one_of(st.sampled_from(["GET /orders/{id}", "x" * 40]), secret_texts)),
        attributes=attributes,
        kind=draw(st.sampled_from(list(SpanKind))),
        parent=parent,
        links=links,
        status=status,
        start_time=T0_NS,
        end_time=T0_NS + draw(st.integers(0, 10**12)),
        tracer=tracer,
        build=build,
    )
    mapper = SpanMapper(
        scrubber=draw(st.sampled_from([None, Scrubber()])),
        max_value_chars=draw(st.sampled_from([65_536, 24])),
        max_span_chars=draw(st.sampled_from([1_048_576, 60])),
    )
    return mapper, span


@compiled
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(span_cases())
def test_fast_row_equals_reference_row_for_any_span(case: tuple[SpanMapper, ReadableSpan]) -> None:
    """For any span the SDK makes, the fast path's row is the reference row, element by
    element and type by type."""
    mapper, span = case

    fast, expected, actual = both_rows(mapper, span)

    assert typed_row(expected) == typed_row(actual)
    event(f"path: {fast.row.last_fallback or 'fast'}")  # --hypothesis-show-statistics


@compiled
@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(clean_text.filter(bool), clean_values, max_size=6),
    clean_text.filter(lambda text: "\\u0000" not in text),
    st.integers(min_value=-(2**62), max_value=2**62),
)
def test_clean_values_take_the_fast_path_and_match_json(
    attributes: dict[str, Any], event_name: str, event_time: int
) -> None:
    """Any str (control characters, quotes, non-BMP), int64, finite float or bool, in a span or
    an event, is written as json writes it, on the fast path."""
    attributes = {key: value for key, value in attributes.items() if "\\u0000" not in str(value)}
    attributes = {key: value for key, value in attributes.items() if "\\u0000" not in key}
    span = SpanFactory().span(
        "operation",
        attributes=attributes,
        build=lambda live: live.add_event(event_name, attributes, event_time),
        start_time=T0_NS,
        end_time=T0_NS + 1,
    )
    # Dates before year 1000 take the reference path: the SDK's int64 ns never reach them.
    mapper = SpanMapper()

    fast, expected, actual = both_rows(mapper, span)

    assert typed_row(expected) == typed_row(actual)
    assert {} == fast.fallbacks


credential_texts = st.lists(
    st.one_of(
        st.sampled_from([*SECRETS, "key", "pass", "to", "ken", "=", ":", " ", "Bearer ", "1234"]),
        clean_text,
    ),
    max_size=4,
).map("".join)
credential_dicts = st.dictionaries(
    st.one_of(st.sampled_from(SECRET_KEYS), clean_text.filter(bool)),
    st.one_of(credential_texts, st.lists(credential_texts, max_size=3).map(tuple), st.integers()),
    max_size=5,
)
scrubbers = st.sampled_from(
    [
        Scrubber(),
        Scrubber(allowed_keys=["api_key", "cache.key"]),
        Scrubber(extra_patterns=[r"order:\d+"]),
        CarefulScrubber(),
    ]
)


@compiled
@settings(max_examples=300, deadline=None)
@given(
    credential_texts,
    credential_dicts,
    st.lists(st.tuples(credential_texts, credential_dicts), max_size=2),
    st.one_of(st.none(), credential_texts),
    scrubbers,
)
def test_fast_row_equals_reference_row_when_scrubbing(
    name: str,
    attributes: dict[str, Any],
    events: list[tuple[str, dict[str, Any]]],
    message: str | None,
    scrubber: Scrubber,
) -> None:
    """With credential-looking names, keys, values, events and status messages, and any
    scrubber settings, the fast path's row is the reference row."""

    def build(live: Span) -> None:
        for event_name, event_attributes in events:
            live.add_event(event_name, event_attributes, T0_NS)
        if message is not None:
            live.set_status(Status(StatusCode.ERROR, message))

    span = SpanFactory().span(name or "x", attributes=attributes, build=build)

    fast, expected, actual = both_rows(SpanMapper(scrubber=scrubber), span)

    assert typed_row(expected) == typed_row(actual)
    event(f"path: {fast.row.last_fallback or 'fast'}")


# --- typical spans take the fast path --------------------------------------------------------


def _http_server(live: Span) -> None:
    live.set_attributes(
        {
            "http.method": "GET",
            "http.route": "/orders/{order_id}",
            "http.target": "/orders/17?expand=items",
            "http.status_code": 200,
            "net.peer.ip": "10.0.3.17",
            "http.user_agent": 'Mozilla/5.0 (X11; Linux x86_64) "quoted" \\ back',
        }
    )


def _exception(live: Span) -> None:
    live.add_event(
        "exception",
        {
            "exception.type": "OrderNotFoundError",
            "exception.message": "order 17 not found — ünïcode ✓",
            "exception.stacktrace": 'Traceback (most recent call last):\n  File "app.py", '
            "line 3, in handle\n\traise OrderNotFoundError(17)\nOrderNotFoundError: 17\n",
            "exception.escaped": "False",
        },
        timestamp=T0_NS + 500,
    )
    live.set_status(Status(StatusCode.ERROR, "OrderNotFoundError: order 17 not found"))


TYPICAL: dict[str, dict[str, Any]] = {
    "http server": {"kind": SpanKind.SERVER, "name": "GET /orders/{id}", "build": _http_server},
    "http client": {
        "kind": SpanKind.CLIENT,
        "name": "GET",
        "attributes": {
            "http.request.method": "GET",
            "url.full": "https://inventory.internal/v1/items?order=17",
            "server.port": 443,
            "http.response.status_code": 200,
            "http.resend_count": 0,
        },
    },
    "db": {
        "kind": SpanKind.CLIENT,
        "name": "SELECT shop",
        "attributes": {
            "db.system": "postgresql",
            "db.statement": "SELECT id, total FROM orders WHERE id = %s AND total > 1.5",
            "db.name": "shop",
            "net.peer.port": 5432,
            "db.rows": 1,
        },
        "parent": remote_parent(),
    },
    "job": {
        "name": "job.step",
        "attributes": {
            "execution.id": 421337,
            "job.step": "transform",
            "job.ratio": 0.25,
            "job.retry": False,
            "job.tags": ("nightly", "eu-west-1"),
            "job.weights": (1.0, 2.5e-7, 1e16),
            "job.ids": (1, -2, 4096),
        },
    },
    "error with exception event": {"name": "orders.validate", "build": _exception},
    "event without attributes": {
        "name": "cache.get",
        "build": lambda live: live.add_event("miss", timestamp=T0_NS + 1),
    },
    "cache with a key attribute": {
        "kind": SpanKind.CLIENT,
        "name": "GET",
        "attributes": {"cache.key": "order:17", "db.redis.key": "order:17", "cache.hit": True},
        "build": lambda live: live.add_event("lookup", {"idempotency_key": "4f0c2d7e-0017"}),
    },
    "execution id as text": {"name": "job.run", "attributes": {"execution.id": "0042"}},
    "no attributes": {"name": "noop"},
}


@compiled
@pytest.mark.parametrize("scrubber", [None, Scrubber()], ids=["no scrubber", "scrubber"])
@pytest.mark.parametrize("case", list(TYPICAL))
def test_typical_spans_take_the_fast_path(case: str, scrubber: Scrubber | None) -> None:
    """HTTP, database, job and error spans are mapped without the reference and equal it."""
    spec = TYPICAL[case]
    span = SpanFactory().span(
        spec["name"],
        attributes=spec.get("attributes"),
        kind=spec.get("kind", SpanKind.INTERNAL),
        parent=spec.get("parent"),
        start_time=T0_NS,
        end_time=T0_NS + 1_234_567,
        build=spec.get("build"),
    )

    fast, expected, actual = both_rows(SpanMapper(scrubber=scrubber), span)

    assert typed_row(expected) == typed_row(actual)
    assert {} == fast.fallbacks


def _event_at(time_ns: int) -> Callable[[Span], None]:
    def build(live: Span) -> None:
        live.add_event("e", timestamp=time_ns)

    return build


def _two_events(live: Span) -> None:
    live.add_event("a")
    live.add_event("b")


@compiled
def test_event_times_are_rfc3339_with_nine_digits_across_the_int64_range() -> None:
    """Event times from 1677 to 2262, before and after the epoch, read as iso_time gives them."""
    times = [T0_NS, 0, -1, 1, -(10**9), 951_782_400 * 10**9 + 7, -(2**63), 2**63 - 1]
    for time_ns in times:
        span = SpanFactory().span("t", build=_event_at(time_ns))

        fast, expected, actual = both_rows(SpanMapper(), span)

        assert typed_row(expected) == typed_row(actual)
        assert {} == fast.fallbacks


# --- what takes the reference path -------------------------------------------------------


def _scrubbed() -> SpanMapper:
    return SpanMapper(scrubber=Scrubber())


UNUSUAL: dict[str, tuple[str, Callable[[SpanFactory], ReadableSpan], Callable[[], SpanMapper]]] = {
    "NUL in a value": ("value", lambda f: f.span(attributes={"a": "x\x00y"}), SpanMapper),
    "lone surrogate": ("value", lambda f: f.span(attributes={"a": "x\ud800"}), SpanMapper),
    "NaN": ("value", lambda f: f.span(attributes={"a": math.nan}), SpanMapper),
    "infinity": ("value", lambda f: f.span(attributes={"a": (1.0, -math.inf)}), SpanMapper),
    "huge int": ("value", lambda f: f.span(attributes={"a": 2**64}), SpanMapper),
    "backslash-u0000 text": ("value", lambda f: f.span(attributes={"a": "\\u0000"}), SpanMapper),
    "bytes": ("value", lambda f: copy_of(f.span(), attributes={"a": b"\x00\xff"}), SpanMapper),
    "None value": ("value", lambda f: copy_of(f.span(), attributes={"a": None}), SpanMapper),
    "nested mapping": (
        "value",
        lambda f: copy_of(f.span(), attributes={"a": {"b": 1}}),
        SpanMapper,
    ),
    "nested sequence": (
        "value",
        lambda f: copy_of(f.span(), attributes={"a": ((1,),)}),
        SpanMapper,
    ),
    "non-str key": ("value", lambda f: copy_of(f.span(), attributes={1: "x"}), SpanMapper),
    "str subclass": (
        "value",
        lambda f: copy_of(f.span(), attributes={"a": type("S", (str,), {})("x")}),
        SpanMapper,
    ),
    "value past the value cap": (
        "size",
        lambda f: f.span(attributes={"a": "x" * 100}),
        lambda: SpanMapper(max_value_chars=64),
    ),
    "document past the span cap": (
        "size",
        lambda f: f.span(attributes={"a": "x" * 40, "b": "y" * 40}),
        lambda: SpanMapper(max_span_chars=64),
    ),
    "name past the value cap": (
        "name",
        lambda f: f.span("n" * 100),
        lambda: SpanMapper(max_value_chars=64),
    ),
    "NUL in the name": ("name", lambda f: f.span("a\x00b"), SpanMapper),
    "NUL in the status message": (
        "status",
        lambda f: f.span(status=Status(StatusCode.ERROR, "bad\x00")),
        SpanMapper,
    ),
    "links": ("links", lambda f: f.span(links=[link_to(1, 2, {"a": 1})]), SpanMapper),
    "trace state": (
        "trace_state",
        lambda f: f.span(parent=remote_parent(trace_state=TraceState([("k", "v")]))),
        SpanMapper,
    ),
    "dropped attributes": (
        "dropped",
        lambda f: SpanFactory(limits=SpanLimits(max_span_attributes=1)).span(
            attributes={"a": 1, "b": 2}
        ),
        SpanMapper,
    ),
    "dropped events": (
        "dropped",
        lambda f: SpanFactory(limits=SpanLimits(max_events=1)).span(build=_two_events),
        SpanMapper,
    ),
    "event before year 1000": (
        "times",
        lambda f: copy_of(f.span(), attributes={}, events=(Event("e", {}, -(4 * 10**19) // 2),)),
        SpanMapper,
    ),
    "not an SDK span": ("span_type", lambda f: copy_of(f.span(), OtherSpan), SpanMapper),
    "attributes a plain span copy holds": (
        "",
        lambda f: copy_of(f.span(attributes={"a": 1, "b": "x"})),
        SpanMapper,
    ),
    "credential key": ("scrub", lambda f: f.span(attributes={"db.password": "x"}), _scrubbed),
    "credential value": (
        "scrub",
        lambda f: f.span(attributes={"http.header": "Bearer abc123"}),
        _scrubbed,
    ),
    "credential in the name": ("scrub", lambda f: f.span("login password=hunter2"), _scrubbed),
    "credential in the status message": (
        "scrub",
        lambda f: f.span(status=Status(StatusCode.ERROR, "token=abc")),
        _scrubbed,
    ),
    "credential in an event": (
        "scrub",
        lambda f: f.span(build=lambda live: live.add_event("e", {"q": "secret=1"})),
        _scrubbed,
    ),
}


@compiled
@pytest.mark.parametrize("case", list(UNUSUAL))
def test_unusual_spans_take_the_reference_path(case: str) -> None:
    """Each unusual span is handed to mapper.to_row (for the stated reason) and so equals it."""
    reason, make_span, make_mapper = UNUSUAL[case]
    factory = SpanFactory()
    span = make_span(factory)

    fast, expected, actual = both_rows(make_mapper(), span)

    assert typed_row(expected) == typed_row(actual)
    assert ({reason: 1} if reason else {}) == fast.fallbacks


@compiled
def test_a_document_wide_hit_takes_the_reference_path_for_a_scrubber_subclass() -> None:
    """With another Scrubber class, a "key" anywhere in the document means the reference path."""
    span = SpanFactory().span(attributes={"cache.key": "order:17"})

    fast, expected, actual = both_rows(SpanMapper(scrubber=CarefulScrubber()), span)

    assert typed_row(expected) == typed_row(actual)
    assert {"scrub": 1} == fast.fallbacks


@compiled
def test_waiting_late_attributes_take_the_reference_path() -> None:
    """While late attributes wait, every span goes to the reference, which merges them."""
    late = LateAttributes()
    span = SpanFactory().span(attributes={"a": 1})
    late.add(span.context.trace_id, span.context.span_id, "sentry.event_id", "abc")
    mapper = SpanMapper(late_attributes=late)
    fast = Fast(mapper)

    actual = fast(span)

    assert {"late_attributes": 1} == fast.fallbacks
    assert '{"a":1,"sentry.event_id":"abc"}' == actual[11]


@compiled
def test_a_raising_reference_still_raises() -> None:
    """A span without a context raises ValueError from the reference, as to_row does."""
    span = copy_of(SpanFactory().span(), context=None)
    fast = Fast(SpanMapper())

    with pytest.raises(ValueError, match="no context"):
        fast(span)


# --- the switch and the status line ---------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "0", "off", "no", "FALSE", " Off "])
def test_environment_variable_turns_the_fast_path_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """OTEL_EXPORTER_POSTGRES_FAST_PATH=false (0, off, no, any case) gives no fast path."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", value)

    fast = fastpath.fast_to_row(SpanMapper())

    assert None is fast
    if fastpath.FAST_PATH_BUILT:
        assert (
            "compiled fast path: off (OTEL_EXPORTER_POSTGRES_FAST_PATH=false); spans are mapped "
            "in pure Python" == fastpath.fast_path_status()
        )


@pytest.mark.parametrize("value", [None, "true", "1", "on", ""])
def test_fast_path_is_on_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """Unset or any other value: the fast path is used when it is built."""
    if value is None:
        monkeypatch.delenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", value)

    fast = fastpath.fast_to_row(SpanMapper())

    assert fastpath.FAST_PATH_BUILT == (fast is not None)
    expected = "compiled fast path: on" if fastpath.FAST_PATH_BUILT else fastpath.FAST_PATH_STATUS
    assert expected == fastpath.fast_path_status()


def test_status_says_when_the_module_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the compiled module fast_to_row is None and the status says why."""
    monkeypatch.setattr(fastpath, "_MODULE", None)
    monkeypatch.setattr(fastpath, "_LOADED", "not built (no C compiler at install time)")
    monkeypatch.delenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", raising=False)

    fast = fastpath.fast_to_row(SpanMapper())

    assert None is fast
    assert (
        "compiled fast path: not built (no C compiler at install time); spans are mapped in "
        "pure Python" == fastpath.fast_path_status()
    )


def test_status_line_is_one_line() -> None:
    """FAST_PATH_STATUS is one line that names the compiled fast path."""
    status = fastpath.FAST_PATH_STATUS

    assert status.startswith("compiled fast path: ")
    assert "\n" not in status


def test_fast_path_is_built_where_it_is_expected() -> None:
    """With OTEL_PG_EXPECT_FAST_PATH=1 (make test) the compiled module must be importable."""
    if os.environ.get(EXPECT_VARIABLE) != "1":
        pytest.skip(f"{EXPECT_VARIABLE} is not 1: a missing compiled module is allowed here")

    built = fastpath.FAST_PATH_BUILT

    assert True is built, (
        f"{fastpath.FAST_PATH_STATUS}: rebuild with `pip install -e .` on a machine with a C "
        "compiler, or unset OTEL_PG_EXPECT_FAST_PATH"
    )


# --- the exporter ------------------------------------------------------------------------------


def _exported_by(dsn: str, **options: Any) -> dict[str, int]:
    """Export 20 typical spans through a real exporter; its stats afterwards."""
    from otel_pg_exporter import PostgresSpanExporter

    factory = SpanFactory()
    spans = [
        factory.span(f"GET /orders/{number}", attributes={"http.status_code": 200})
        for number in range(20)
    ]
    exporter = PostgresSpanExporter(dsn, enabled=True, spool_dir="", **options)
    try:
        assert exporter.export(spans).name == "SUCCESS"
        return exporter.stats()
    finally:
        exporter.shutdown()


def test_exporter_maps_with_the_fast_path_when_it_is_built_and_on(
    migrated_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unless turned off, the exporter's spans go through the compiled code where it exists."""
    monkeypatch.delenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", raising=False)

    stats = _exported_by(migrated_dsn)

    expected = (20, 0) if fastpath.FAST_PATH_BUILT else (0, 20)
    assert expected == (stats["spans_mapped_fast"], stats["spans_mapped_python"])
    assert 20 == stats["spans_exported"]


def test_the_fast_path_setting_turns_it_off_over_the_environment(
    migrated_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fast_path=False maps every span in pure Python; the explicit argument wins."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", "true")

    stats = _exported_by(migrated_dsn, fast_path=False)

    assert (0, 20) == (stats["spans_mapped_fast"], stats["spans_mapped_python"])
    assert 20 == stats["spans_exported"]


@compiled
def test_an_explicit_fast_path_wins_over_the_variable(
    migrated_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fast_path=True uses the compiled code even with the variable set to false."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_FAST_PATH", "false")

    stats = _exported_by(migrated_dsn, fast_path=True)

    assert (20, 0) == (stats["spans_mapped_fast"], stats["spans_mapped_python"])


# --- the binary COPY encoder -------------------------------------------------------------------

_TEXT_COLUMNS = tuple(pg_type == "text" for _, pg_type in STAGE_COLUMNS)
# Any code point, lone surrogates and NUL included: psycopg refuses or passes them.
_ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
_ANY_INT8 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70))


def _psycopg_stream(rows: list[tuple[Any, ...]]) -> bytes:
    """What psycopg's write_row sends for ``rows``: signature, rows, trailer."""
    from psycopg._copy_base import _binary_signature, _binary_trailer, format_row_binary
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    transformer = Transformer()
    transformer.set_dumper_types([25 if text else 20 for text in _TEXT_COLUMNS], Format.BINARY)
    buffer = bytearray(_binary_signature)
    for row in rows:
        format_row_binary(row, transformer, buffer)
    return bytes(buffer + _binary_trailer)


@st.composite
def _stage_rows(draw: st.DrawFn) -> tuple[Any, ...]:
    return tuple(
        draw(st.one_of(st.none(), _ANY_TEXT if text else _ANY_INT8)) for text in _TEXT_COLUMNS
    )


@compiled
@settings(max_examples=300, deadline=None)
@given(st.lists(_stage_rows(), max_size=6))
def test_copy_encoder_sends_what_psycopg_sends(rows: list[tuple[Any, ...]]) -> None:
    """For any text and int8 values the compiled stream equals psycopg's byte for byte, and
    where psycopg refuses a row (lone surrogate, int past int8) it raises the same error."""
    encode = fastpath.copy_encoder(enabled=True)
    assert encode is not None
    try:
        expected: bytes | type[BaseException] = _psycopg_stream(rows)
    except (UnicodeEncodeError, OverflowError) as exc:
        expected = type(exc)
    try:
        actual: bytes | type[BaseException] | None = encode(cast(list[Row], rows))
    except (UnicodeEncodeError, OverflowError) as exc:
        actual = type(exc)

    assert expected == actual


@compiled
@pytest.mark.parametrize(
    "value",
    [True, 1.5, b"bytes", type("Text", (str,), {})("text"), type("Number", (int,), {})(3)],
    ids=["bool", "float", "bytes", "str-subclass", "int-subclass"],
)
def test_copy_encoder_leaves_other_types_to_psycopg(value: object) -> None:
    """A value of another type (or a subclass) makes the encoder answer None."""
    encode = fastpath.copy_encoder(enabled=True)
    assert encode is not None
    column = 0 if isinstance(value, str | bytes) else 6  # a text column; an int8 column
    row: list[object] = [None] * len(STAGE_COLUMNS)
    row[column] = value

    assert None is encode([cast(Row, tuple(row))])


def test_copy_encoder_follows_the_fast_path_switch() -> None:
    """Off, or not built: no encoder, and the writer uses psycopg's write_row."""
    assert None is fastpath.copy_encoder(enabled=False)
    assert fastpath.FAST_PATH_BUILT == (fastpath.copy_encoder(enabled=True) is not None)
