"""SpanMapper.to_row on real SDK spans, without a database: columns, JSON documents, sanitising."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, StaticSampler
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TraceState
from opentelemetry.util.types import AttributeValue
from spans import (
    REPLACEMENT,
    SERVICE,
    T0_NS,
    NonRandomIdGenerator,
    SpanFactory,
    assert_storable_json,
    attribute_dicts,
    extended_attribute_dicts,
    link_to,
    otel_flags,
    parse_json,
    remote_parent,
    sanitised,
    sanitised_attributes,
    texts,
    typed,
)

from otel_pg_exporter.export import mapping
from otel_pg_exporter.export.mapping import SpanMapper, iso_time
from otel_pg_exporter.export.scrubbing import REDACTED, Scrubber
from otel_pg_exporter.schema.table import STAGE_COLUMNS
from otel_pg_exporter.settings import DEFAULT_MAX_SPAN_CHARS, DEFAULT_MAX_VALUE_CHARS

COLUMNS = [name for name, _ in STAGE_COLUMNS]
JSON_COLUMNS = ("metadata", "events", "links", "resource", "otel")
TEXT_COLUMNS = (
    *("trace_id", "span_id", "parent_span_id", "service", "operation", "kind"),
    *("status", "status_message", "scope"),
)
HUGE = 10_000_000  # characters: a 10 MB attribute value


def mapped(span: ReadableSpan, mapper: SpanMapper | None = None) -> dict[str, Any]:
    """The row of ``span`` by column name, once every text and JSON column is storable."""
    row: dict[str, Any] = dict(zip(COLUMNS, (mapper or SpanMapper()).to_row(span), strict=True))
    for name in JSON_COLUMNS:
        assert_storable_json(row[name])
    for name in TEXT_COLUMNS:
        text = row[name]
        if text is not None:
            assert isinstance(text, str)
            assert "\x00" not in text
            text.encode("utf-8")  # raises on a lone surrogate
    return row


def document(row: dict[str, Any], column: str) -> Any:
    """The parsed JSON of one jsonb column, None when the column is null."""
    text = row[column]
    return None if text is None else parse_json(text)


def marker(dropped: int) -> str:
    """The documented suffix of a value cut by a size cap."""
    return f"…[truncated {dropped} chars]"


# --- ids, kind, status, times ------------------------------------------------------------------


def test_root_span_has_lowercase_hex_ids_and_no_parent() -> None:
    """A root span maps to a 32-hex trace id, a 16-hex span id and a null parent."""
    span = SpanFactory().span()

    row = mapped(span)

    assert f"{span.context.trace_id:032x}" == row["trace_id"]
    assert f"{span.context.span_id:016x}" == row["span_id"]
    assert re.fullmatch("[0-9a-f]{32}", row["trace_id"])
    assert re.fullmatch("[0-9a-f]{16}", row["span_id"])
    assert None is row["parent_span_id"]


def test_child_span_points_at_its_parents_span_id() -> None:
    """A child span shares the trace id of its parent and stores the parent's span id."""
    factory = SpanFactory()
    tracer = factory.tracer()
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child"):
        pass
    child, parent = factory.finished()

    child_row, parent_row = mapped(child), mapped(parent)

    assert parent_row["span_id"] == child_row["parent_span_id"]
    assert parent_row["trace_id"] == child_row["trace_id"]
    assert None is parent_row["parent_span_id"]


def test_small_ids_keep_their_leading_zeros() -> None:
    """Ids are zero-padded to their full width, never shortened."""
    span = SpanFactory().span(parent=remote_parent(trace_id=0x1, span_id=0x2))

    row = mapped(span)

    assert "00000000000000000000000000000001" == row["trace_id"]
    assert "0000000000000002" == row["parent_span_id"]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (SpanKind.INTERNAL, "internal"),
        (SpanKind.SERVER, "server"),
        (SpanKind.CLIENT, "client"),
        (SpanKind.PRODUCER, "producer"),
        (SpanKind.CONSUMER, "consumer"),
    ],
)
def test_kind_is_stored_by_lowercase_name(kind: SpanKind, name: str) -> None:
    """Each span kind maps to its lowercase name."""
    assert name == mapped(SpanFactory().span(kind=kind))["kind"]


@pytest.mark.parametrize(
    ("status", "name", "message"),
    [
        (None, "unset", None),
        (Status(StatusCode.OK), "ok", None),
        (Status(StatusCode.ERROR), "error", None),
        (Status(StatusCode.ERROR, "card declined"), "error", "card declined"),
    ],
)
def test_status_and_description(status: Status | None, name: str, message: str | None) -> None:
    """The status code maps to unset/ok/error and the description to status_message."""
    row = mapped(SpanFactory().span(status=status))

    assert (name, message) == (row["status"], row["status_message"])


def test_start_and_end_nanoseconds_are_carried_exactly() -> None:
    """Start and end times reach the row as the exact integer nanoseconds of the span."""
    end = T0_NS + 1_234_567_891
    span = SpanFactory().span(start_time=T0_NS, end_time=end)

    row = mapped(span)

    assert (T0_NS, end) == (row["start_ns"], row["end_ns"])


def test_operation_is_the_span_name() -> None:
    """The span name becomes the operation."""
    assert "GET /orders/{id}" == mapped(SpanFactory().span("GET /orders/{id}"))["operation"]


# --- resource, scope and the otel document -------------------------------------------------------


def test_service_and_resource_come_from_the_resource() -> None:
    """service is the resource's service.name; resource holds every attribute, types kept."""
    attributes: dict[str, AttributeValue] = {
        "service.name": "billing",
        "service.version": "2.0.1",
        "process.pid": 4242,
        "host.cpu.ratio": 0.5,
        "feature.on": True,
    }
    span = SpanFactory(resource=Resource(attributes)).span()

    row = mapped(span)

    assert "billing" == row["service"]
    assert typed(attributes) == typed(document(row, "resource"))


@pytest.mark.parametrize(
    "attributes",
    [{}, {"service.name": ""}, {"service.name": 42}, {"host.name": "box"}],
    ids=["empty", "empty-name", "not-text", "no-name"],
)
def test_service_falls_back_to_unknown_service(attributes: dict[str, Any]) -> None:
    """Without a usable service.name, service is unknown_service."""
    row = mapped(SpanFactory(resource=Resource(attributes)).span())

    assert "unknown_service" == row["service"]


def test_scope_name_and_version() -> None:
    """scope is the instrumentation scope name; its version goes into the otel document."""
    factory = SpanFactory()
    span = factory.span(tracer=factory.tracer("billing.client", "4.2.0"))

    row = mapped(span)

    assert "billing.client" == row["scope"]
    assert {**otel_flags(span), "scope_version": "4.2.0"} == document(row, "otel")


def test_scope_schema_url_and_attributes_go_into_otel() -> None:
    """Scope and resource schema URLs and scope attributes are kept in the otel document."""
    factory = SpanFactory(
        resource=Resource({"service.name": SERVICE}, schema_url="https://example.test/r")
    )
    tracer = factory.tracer(
        "billing.client", schema_url="https://example.test/s", attributes={"team": "pay", "n": 3}
    )

    span = factory.span(tracer=tracer)

    row = mapped(span)

    expected = {
        **otel_flags(span),
        "resource_schema_url": "https://example.test/r",
        "scope_schema_url": "https://example.test/s",
        "scope_attributes": {"team": "pay", "n": 3},
    }
    assert typed(expected) == typed(document(row, "otel"))


def test_trace_flags_of_one_leave_no_otel_document() -> None:
    """A local root span with trace flags 1 and nothing else to record has a null otel."""
    span = SpanFactory(id_generator=NonRandomIdGenerator()).span()

    assert 1 == span.context.trace_flags
    assert None is mapped(span)["otel"]


@pytest.mark.parametrize(
    ("sampler", "id_generator", "flags"),
    [
        (None, None, 3),
        (StaticSampler(Decision.RECORD_ONLY), None, 2),
        (StaticSampler(Decision.RECORD_ONLY), NonRandomIdGenerator(), 0),
    ],
    ids=["sampled-random", "unsampled-random", "unsampled"],
)
def test_trace_flags_other_than_one_are_kept(
    sampler: Sampler | None, id_generator: IdGenerator | None, flags: int
) -> None:
    """Trace flags other than 1 (sampled, random bit, or unsampled) are kept in otel."""
    factory = SpanFactory(sampler=sampler, id_generator=id_generator, keep_unsampled=True)
    span = factory.span()
    # The random bit (0x02) is set only by SDKs that implement W3C Trace Context level 2.
    actual = int(span.context.trace_flags)
    assert actual in {flags, flags & ~2}

    row = mapped(span)

    assert (None if actual == 1 else {"trace_flags": actual}) == document(row, "otel")


def test_remote_parent_and_trace_state_are_kept() -> None:
    """A span under a remote parent records parent_is_remote and the inherited trace state."""
    state = TraceState([("vendor", "abc"), ("other", "1")])
    span = SpanFactory().span(parent=remote_parent(trace_state=state))

    row = mapped(span)

    expected = {"parent_is_remote": True, "trace_state": "vendor=abc,other=1"}
    assert expected == document(row, "otel")


def test_local_parent_is_not_marked_remote() -> None:
    """A child of a local span has no parent_is_remote entry."""
    factory = SpanFactory()
    tracer = factory.tracer()
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child"):
        pass
    child = factory.finished()[0]

    assert otel_flags(child) == (document(mapped(child), "otel") or {})


def test_dropped_counts_are_recorded() -> None:
    """Attributes, events and links dropped by SpanLimits are counted in otel.dropped."""
    factory = SpanFactory(limits=SpanLimits(max_span_attributes=2, max_events=1, max_links=1))
    links = [link_to(0xA, 0x1), link_to(0xB, 0x2)]

    def three_events(span: Span) -> None:
        for number in range(3):
            span.add_event(f"event {number}")

    span = factory.span(attributes={"a": 1, "b": 2, "c": 3}, links=links, build=three_events)

    row = mapped(span)

    expected = {"attributes": 1, "events": 2, "links": 1}
    assert {**otel_flags(span), "dropped": expected} == document(row, "otel")
    assert dict(span.attributes or {}) == document(row, "metadata")


# --- attributes, events, links -------------------------------------------------------------------

EVERY_TYPE: dict[str, Any] = {
    "http.method": "POST",
    "cache.hit": True,
    "http.status_code": 201,
    "db.ratio": 0.25,
    "big.negative": -(2**63),
    "whole.float": 3.0,
    "tags": ("a", "b"),
    "flags": (True, False),
    "sizes": (1, 2, 3),
    "weights": (0.5, 1.5),
    "empty": (),
}
EVERY_TYPE_JSON: dict[str, Any] = {
    "http.method": "POST",
    "cache.hit": True,
    "http.status_code": 201,
    "db.ratio": 0.25,
    "big.negative": -(2**63),
    "whole.float": 3.0,
    "tags": ["a", "b"],
    "flags": [True, False],
    "sizes": [1, 2, 3],
    "weights": [0.5, 1.5],
    "empty": [],
}


def test_attributes_of_every_type_keep_their_types() -> None:
    """str, bool, int, float and sequences of each land in metadata with their JSON types."""
    row = mapped(SpanFactory().span(attributes=EVERY_TYPE))

    assert typed(EVERY_TYPE_JSON) == typed(document(row, "metadata"))


def test_lists_become_json_arrays() -> None:
    """A list attribute, stored by the API as a tuple, becomes a JSON array."""
    row = mapped(SpanFactory().span(attributes={"ids": [3, 1, 2]}))

    assert {"ids": [3, 1, 2]} == document(row, "metadata")


def test_span_without_attributes_events_or_links() -> None:
    """No attributes gives an empty metadata object; no events or links gives nulls."""
    row = mapped(SpanFactory().span())

    assert ({}, None, None) == (document(row, "metadata"), row["events"], row["links"])


def test_events_carry_name_nanosecond_time_and_attributes() -> None:
    """Events become [{name, time, attributes}] with RFC 3339 times to the nanosecond."""

    def add_events(span: Span) -> None:
        span.add_event("cache.miss", {"cache.key": "user:1", "attempt": 2}, timestamp=T0_NS + 5)
        span.add_event("retry", timestamp=1_700_000_000_000_000_000)

    row = mapped(SpanFactory().span(build=add_events))

    expected = [
        {
            "name": "cache.miss",
            "time": "2023-11-14T22:13:20.123456794Z",
            "attributes": {"cache.key": "user:1", "attempt": 2},
        },
        {"name": "retry", "time": "2023-11-14T22:13:20.000000000Z", "attributes": {}},
    ]
    assert typed(expected) == typed(document(row, "events"))


def test_recorded_exception_becomes_an_exception_event() -> None:
    """span.record_exception stores an exception event with type, message and stacktrace."""

    def fail(span: Span) -> None:
        try:
            raise ValueError("bad input")
        except ValueError as exc:
            span.record_exception(exc, timestamp=T0_NS)

    span = SpanFactory().span(build=fail)

    (event,) = document(mapped(span), "events")

    assert ("exception", "2023-11-14T22:13:20.123456789Z") == (event["name"], event["time"])
    assert "ValueError" == event["attributes"]["exception.type"]
    assert "bad input" == event["attributes"]["exception.message"]
    assert "ValueError: bad input" in event["attributes"]["exception.stacktrace"]
    assert dict(span.events[0].attributes or {}) == event["attributes"]


def test_links_carry_ids_and_attributes() -> None:
    """Links become [{trace_id, span_id, attributes}] with zero-padded hex ids."""
    attributes: dict[str, AttributeValue] = {
        "link.reason": "retry",
        "link.n": 2,
        "link.weight": 0.5,
        "link.ok": False,
    }
    span = SpanFactory().span(links=[link_to(0xAB, 0xCD, attributes)])

    row = mapped(span)

    expected = [
        {
            "trace_id": "000000000000000000000000000000ab",
            "span_id": "00000000000000cd",
            "attributes": attributes,
        }
    ]
    assert typed(expected) == typed(document(row, "links"))


# --- execution_id --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (98765, 98765),
        (0, 0),
        (-7, -7),
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        ("123", 123),
        ("0042", 42),
        ("9223372036854775807", 2**63 - 1),
        ("12a", None),
        ("-5", None),
        ("", None),
        (" 7", None),
        ("1.5", None),
        ("٣", None),  # an Arabic-Indic digit: isdigit() but not a plain integer
        ("9223372036854775808", None),
        (2**63, None),
        (-(2**63) - 1, None),
        (1.0, None),
        (True, None),
        (False, None),
        ((1, 2), None),
    ],
)
def test_execution_id(value: Any, expected: int | None) -> None:
    """execution_id is the execution.id attribute when it is an integer fitting a bigint."""
    row = mapped(SpanFactory().span(attributes={"execution.id": value}))

    assert expected == row["execution_id"]
    assert typed({"execution.id": sanitised(value)}) == typed(document(row, "metadata"))


def test_execution_id_attribute_name_is_configurable() -> None:
    """SpanMapper(execution_id_attribute=...) reads that attribute instead of execution.id."""
    span = SpanFactory().span(attributes={"job.run": "7", "execution.id": 9})

    row = mapped(span, SpanMapper(execution_id_attribute="job.run"))

    assert 7 == row["execution_id"]


def test_missing_execution_id_is_null() -> None:
    """A span without the attribute has a null execution_id."""
    assert None is mapped(SpanFactory().span(attributes={"other": 1}))["execution_id"]


# --- poison --------------------------------------------------------------------------------------


def test_nul_is_replaced_everywhere() -> None:
    """NUL in names, keys, values, status, events, links, resource and scope becomes U+FFFD."""
    factory = SpanFactory(resource=Resource({"service.name": "svc\x00", "host\x00": "h\x00"}))
    tracer = factory.tracer("scope\x00", "1\x00")

    def add_event(span: Span) -> None:
        span.add_event("ev\x00", {"a\x00": "b\x00"}, timestamp=T0_NS)

    span = factory.span(
        "na\x00me",
        attributes={"k\x00ey": "v\x00al", "list": ("a\x00", "b"), "\x00": "\x00\x00"},
        status=Status(StatusCode.ERROR, "fail\x00ed"),
        links=[link_to(0xA, 0xB, {"l\x00": "\x00"})],
        tracer=tracer,
        build=add_event,
    )

    row = mapped(span)

    r = REPLACEMENT
    expected_metadata = {f"k{r}ey": f"v{r}al", "list": [f"a{r}", "b"], r: r + r}
    assert expected_metadata == document(row, "metadata")
    assert (f"na{r}me", f"fail{r}ed") == (row["operation"], row["status_message"])
    assert (f"svc{r}", f"scope{r}") == (row["service"], row["scope"])
    assert {"service.name": f"svc{r}", f"host{r}": f"h{r}"} == document(row, "resource")
    assert {**otel_flags(span), "scope_version": f"1{r}"} == document(row, "otel")
    (event,) = document(row, "events")
    assert (f"ev{r}", {f"a{r}": f"b{r}"}) == (event["name"], event["attributes"])
    (link,) = document(row, "links")
    assert {f"l{r}": r} == link["attributes"]


def test_lone_surrogates_are_replaced_and_pairs_joined() -> None:
    """Lone surrogates become U+FFFD; a valid surrogate pair becomes its one character."""
    span = SpanFactory().span(
        "op \ud800",
        attributes={"pair": "\ud83d\ude00", "lone": "a\ud800b\udfffc", "\udc00key": "k"},
        status=Status(StatusCode.ERROR, "\ude00 failed"),
    )

    row = mapped(span)

    r = REPLACEMENT
    expected = {"pair": "\U0001f600", "lone": f"a{r}b{r}c", f"{r}key": "k"}
    assert expected == document(row, "metadata")
    assert 1 == len(document(row, "metadata")["pair"])
    assert (f"op {r}", f"{r} failed") == (row["operation"], row["status_message"])


def test_non_finite_floats_become_strings() -> None:
    """NaN, Infinity and -Infinity are stored as those strings, alone or inside sequences."""
    nan, inf = math.nan, math.inf

    def add_event(span: Span) -> None:
        span.add_event("measure", {"value": nan}, timestamp=T0_NS)

    span = SpanFactory().span(
        attributes={"nan": nan, "inf": inf, "ninf": -inf, "floats": (1.5, nan, inf, -inf)},
        links=[link_to(0xA, 0xB, {"w": -inf})],
        build=add_event,
    )

    row = mapped(span)

    expected = {
        "nan": "NaN",
        "inf": "Infinity",
        "ninf": "-Infinity",
        "floats": [1.5, "NaN", "Infinity", "-Infinity"],
    }
    assert typed(expected) == typed(document(row, "metadata"))
    assert {"value": "NaN"} == document(row, "events")[0]["attributes"]
    assert {"w": "-Infinity"} == document(row, "links")[0]["attributes"]


def test_ten_megabyte_value_is_cut_with_a_marker() -> None:
    """A 10 MB string is cut to max_value_chars followed by the truncation marker."""
    span = SpanFactory().span(attributes={"blob": "x" * HUGE, "small": "kept"})

    metadata = document(mapped(span), "metadata")

    cut = HUGE - DEFAULT_MAX_VALUE_CHARS
    assert "x" * DEFAULT_MAX_VALUE_CHARS + marker(cut) == metadata["blob"]
    assert "kept" == metadata["small"]


def test_ten_megabyte_name_and_status_are_cut_with_a_marker() -> None:
    """A 10 MB span name or status description is cut like an attribute value."""
    span = SpanFactory().span("n" * HUGE, status=Status(StatusCode.ERROR, "s" * HUGE))

    row = mapped(span)

    cut = HUGE - DEFAULT_MAX_VALUE_CHARS
    assert "n" * DEFAULT_MAX_VALUE_CHARS + marker(cut) == row["operation"]
    assert "s" * DEFAULT_MAX_VALUE_CHARS + marker(cut) == row["status_message"]


def test_smaller_value_cap_applies_to_events_and_links() -> None:
    """max_value_chars also cuts event and link attribute values."""

    def add_event(span: Span) -> None:
        span.add_event("e", {"text": "e" * 50}, timestamp=T0_NS)

    span = SpanFactory().span(links=[link_to(1, 2, {"text": "l" * 50})], build=add_event)

    row = mapped(span, SpanMapper(max_value_chars=10))

    assert "e" * 10 + marker(40) == document(row, "events")[0]["attributes"]["text"]
    assert "l" * 10 + marker(40) == document(row, "links")[0]["attributes"]["text"]


def test_span_cap_bounds_many_medium_values() -> None:
    """Many 20 000-char values (128, the SDK's default count) stay within about one span cap."""
    attributes = {f"attr.{number:03d}": "v" * 20_000 for number in range(128)}
    span = SpanFactory().span(attributes=attributes)

    row = mapped(span)

    metadata = document(row, "metadata")
    assert "v" * 20_000 == metadata["attr.000"]
    assert any(value.endswith(" chars]") for value in metadata.values())
    assert len(row["metadata"]) <= 2 * DEFAULT_MAX_SPAN_CHARS


def test_span_cap_cuts_values_and_keeps_keys() -> None:
    """Once the span budget is spent, values are cut to the marker but keys stay readable."""
    attributes = {f"attr.{number:02d}": "v" * 500 for number in range(40)}
    span = SpanFactory().span(attributes=attributes)

    metadata = document(
        mapped(span, SpanMapper(max_value_chars=1000, max_span_chars=10_000)), "metadata"
    )

    assert sorted(attributes) == sorted(metadata)
    assert "v" * 500 == metadata["attr.00"]
    assert marker(500) == metadata["attr.39"]


def test_span_cap_bounds_the_document_for_many_attributes() -> None:
    """With a raised attribute count, the metadata size stays linear in the attribute count."""
    count = 1000
    factory = SpanFactory(limits=SpanLimits(max_span_attributes=count))
    span = factory.span(attributes={f"attr.{number:05d}": "v" * 500 for number in range(count)})
    mapper = SpanMapper(max_value_chars=1000, max_span_chars=10_000)

    row = mapped(span, mapper)

    per_attribute_overhead = 100  # key, marker, quotes, separators
    assert count == len(document(row, "metadata"))
    assert len(row["metadata"]) <= 10_000 + count * per_attribute_overhead


def test_keys_that_sanitise_alike_are_both_kept() -> None:
    """Of two keys that sanitise to the same text, the second gets a ' appended."""
    span = SpanFactory().span(attributes={"a\x00": 1, "a\ufffd": 2})

    assert {"a\ufffd": 1, "a\ufffd'": 2} == document(mapped(span), "metadata")


def test_three_keys_that_sanitise_alike_all_survive() -> None:
    """However many keys sanitise to one text, none overwrites another."""
    lone_surrogate = chr(0xD800)  # ruff's F601 wrongly sees "a\ud800" as "a\ufffd"
    span = SpanFactory().span(attributes={"a\x00": 1, "a\ufffd": 2, "a" + lone_surrogate: 3})

    metadata = document(mapped(span), "metadata")

    assert [1, 2, 3] == sorted(metadata.values())


def test_values_beyond_the_api_basics_are_stored() -> None:
    """None, bytes, mappings and mixed sequences, which the API now accepts, map cleanly."""
    attributes = {
        "none": None,
        "bytes": b"ok\x00\xff",
        "mapping": {"inner": 1, "nan": math.nan, "k\x00": "v"},
        "mixed": [1, "a", None, 2.5, True],
    }
    span = SpanFactory().span(attributes=attributes)
    if span.attributes is None or "mapping" not in span.attributes:
        pytest.skip("this opentelemetry-sdk drops such values before an exporter sees them")

    metadata = document(mapped(span), "metadata")

    r = REPLACEMENT
    expected = {
        "none": None,
        "bytes": f"ok{r}\\xff",
        "mapping": {"inner": 1, "nan": "NaN", f"k{r}": "v"},
        "mixed": [1, "a", None, 2.5, True],
    }
    assert typed(expected) == typed(metadata)


def test_integer_too_long_for_json_does_not_break_the_row() -> None:
    """An int attribute with more digits than Python will print (4300) still maps to a row."""
    span = SpanFactory().span(attributes={"big": 10**5000, "ok": 1})

    row = mapped(span)

    metadata = document(row, "metadata")
    assert 1 == metadata["ok"]
    assert "big" in metadata


# --- properties ----------------------------------------------------------------------------------

PROPERTY_FACTORY = SpanFactory()


@settings(max_examples=200, deadline=None, database=None)
@given(attributes=attribute_dicts)
def test_any_api_attributes_map_to_the_sanitised_values(attributes: dict[str, Any]) -> None:
    """Any attributes the API accepts map without error to their sanitised, typed values."""
    span = PROPERTY_FACTORY.span(attributes=attributes)

    row = mapped(span)

    expected = sanitised_attributes(dict(span.attributes or {}))
    assert typed(expected) == typed(document(row, "metadata"))


@settings(max_examples=100, deadline=None, database=None)
@given(
    attributes=extended_attribute_dicts,
    event_attributes=extended_attribute_dicts,
    link_attributes=extended_attribute_dicts,
    name=texts,
    description=texts,
    event_name=texts,
)
def test_any_span_content_maps_to_storable_json(
    attributes: dict[str, Any],
    event_attributes: dict[str, Any],
    link_attributes: dict[str, Any],
    name: str,
    description: str,
    event_name: str,
) -> None:
    """Any text and attributes in names, status, events and links give storable columns."""

    def add_event(span: Span) -> None:
        span.add_event(event_name, event_attributes, timestamp=T0_NS)

    span = PROPERTY_FACTORY.span(
        name,
        attributes=attributes,
        status=Status(StatusCode.ERROR, description),
        links=[link_to(1, 2, link_attributes)],
        build=add_event,
    )

    row = mapped(span)

    assert typed(sanitised_attributes(dict(span.attributes or {}))) == typed(
        document(row, "metadata")
    )
    (event,) = document(row, "events")
    expected_event_attributes = sanitised_attributes(dict(span.events[0].attributes or {}))
    assert typed(expected_event_attributes) == typed(event["attributes"])
    assert sanitised(name) == row["operation"]


@settings(max_examples=50, deadline=None, database=None)
@given(
    value=st.one_of(
        st.integers(min_value=-(10**100), max_value=10**100), st.text(), st.floats(), st.booleans()
    )
)
def test_execution_id_never_raises(value: Any) -> None:
    """Any execution.id value gives an int within bigint range or None."""
    row = mapped(SpanFactory().span(attributes={"execution.id": value}))

    execution_id = row["execution_id"]
    assert execution_id is None or -(2**63) <= execution_id <= 2**63 - 1


# --- the scrubbing gate ------------------------------------------------------------------------


class CountingScrubber(Scrubber):
    """The default scrubber, counting how often the slow path rewrites a span's attribute
    dict (the resource's, scrubbed once per mapper, is not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrites = 0

    def scrub_mapping(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """Count, then scrub as usual."""
        self.rewrites += "service.name" not in mapping
        return super().scrub_mapping(mapping)


class SlowPathScrubber(Scrubber):
    """Sends every span down the slow path, as the gate did for any key holding ``key``."""

    def keys_need_scrubbing(self, keys: Collection[str]) -> bool:
        """Always suspect the keys."""
        return True


HARMLESS_KEY_ATTRIBUTES: dict[str, AttributeValue] = {
    "cache.key": "user:1",
    "messaging.kafka.message.key": "order-17",
    "db.redis.key": "session-cache:42",
    "idempotency_key": "4f0c2d7e-0017",
    "gen_ai.usage.input_tokens": 120,
    "keys": ("a", "b"),
}


def scrub_gate_spans() -> list[ReadableSpan]:
    """Spans whose keys (of attributes, events and links) hold trigger words, not secrets."""

    def add_event(span: Span) -> None:
        span.add_event("cache.miss", {"cache.key": "user:1", "token_count": 3}, timestamp=T0_NS)

    factory = SpanFactory()
    return [
        factory.span(attributes=HARMLESS_KEY_ATTRIBUTES),
        factory.span("GET", attributes={"cache.key": "k", "http.method": "GET"}, build=add_event),
        factory.span(links=[link_to(3, 4, {"messaging.kafka.message.key": "m-1"})]),
    ]


def test_harmless_key_spans_skip_the_slow_path_with_identical_rows() -> None:
    """Spans whose keys merely contain ``key`` map to the rows the slow path gives them,
    without the slow path rewriting anything."""
    spans = scrub_gate_spans()
    counting = CountingScrubber()

    actual = [SpanMapper(scrubber=counting).to_row(span) for span in spans]

    expected = [SpanMapper(scrubber=SlowPathScrubber()).to_row(span) for span in spans]
    assert (expected, 0) == (actual, counting.rewrites)


def test_secrets_under_harmless_keys_are_still_scrubbed() -> None:
    """A secret under a ``*.key`` key is redacted by the value rules, and a key the key rule
    names (``api.key``, ``private.key``) still hides its whole value."""
    secret_attributes: dict[str, AttributeValue] = {
        "cache.key": "Bearer abc.def",
        "messaging.kafka.message.key": "postgres://app:hunter2@db/shop",
        "db.redis.key": "login password=hunter2",
        "idempotency_key": ("ok", "token: s3cr3t"),
        "api.key": "k-123",
        "private.key": "pem",
    }

    def add_event(span: Span) -> None:
        span.add_event("retry", {"cache.key": "Bearer abc.def"}, timestamp=T0_NS)

    span = SpanFactory().span(
        attributes=secret_attributes,
        links=[link_to(3, 4, {"cache.key": "password=hunter2"})],
        build=add_event,
    )

    row = mapped(span, SpanMapper(scrubber=Scrubber()))

    expected = {
        "cache.key": f"Bearer {redacted('token')}",
        "messaging.kafka.message.key": f"postgres://app:{redacted('url-password')}@db/shop",
        "db.redis.key": f"login password={redacted('password')}",
        "idempotency_key": ["ok", f"token: {redacted('token')}"],
        "api.key": redacted("api-key"),
        "private.key": redacted("private-key"),
    }
    assert (
        expected,
        {"cache.key": f"Bearer {redacted('token')}"},
        {"cache.key": f"password={redacted('password')}"},
    ) == (
        document(row, "metadata"),
        document(row, "events")[0]["attributes"],
        document(row, "links")[0]["attributes"],
    )
    assert mapped(span, SpanMapper(scrubber=SlowPathScrubber())) == row


GATE_KEYS = (
    *("cache.key", "db.redis.key", "idempotency_key", "keys", "token_count", "passenger"),
    *("http.url", "api.key", "x.password", "session.id", "note"),
)
GATE_TEXTS = st.lists(
    st.sampled_from(
        [
            *(
                "key",
                "token",
                "pass",
                "Bearer ",
                "Basic dXNlcjpwYXNz",
                "eyJhbGciOiJIUzI1NiJ9.e30.x",
            ),
            *("://", "u:p@h", "password=", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE"),
            *("-----BEGIN PRIVATE KEY-----", " ", "=", ":", "\n", '"', "\\", "é", "\x00"),
        ]
    ),
    max_size=5,
).map("".join)
GATE_VALUES = st.one_of(
    GATE_TEXTS,
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(GATE_TEXTS, max_size=3),
)
GATE_ATTRIBUTES = st.dictionaries(st.sampled_from(GATE_KEYS), GATE_VALUES, max_size=5)


@settings(max_examples=300, deadline=None, database=None)
@given(attributes=GATE_ATTRIBUTES, event_attributes=GATE_ATTRIBUTES, event_name=GATE_TEXTS)
def test_the_gate_never_changes_a_row(
    attributes: dict[str, Any], event_attributes: dict[str, Any], event_name: str
) -> None:
    """Whatever the keys and values, a span maps to the row the always-slow path gives it."""

    def add_event(span: Span) -> None:
        span.add_event(event_name, event_attributes, timestamp=T0_NS)

    span = PROPERTY_FACTORY.span(
        attributes=attributes, links=[link_to(1, 2, event_attributes)], build=add_event
    )

    actual = SpanMapper(scrubber=Scrubber()).to_row(span)

    assert SpanMapper(scrubber=SlowPathScrubber()).to_row(span) == actual


def redacted(rule: str) -> str:
    """The marker a secret of ``rule`` becomes."""
    return REDACTED.format(rule=rule)


# --- event times -------------------------------------------------------------------------------


def strftime_time(time_ns: Any) -> str:
    """Event times as the mapper formatted them through ``strftime``: the reference."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def outcome(format_time: Callable[[Any], str], time_ns: Any) -> str:
    """The text ``format_time`` gives, or the name of the exception it raises."""
    try:
        return format_time(time_ns)
    except Exception as exc:
        return type(exc).__name__


NS = 1_000_000_000
EDGE_TIMES = (
    *(0, 1, -1, NS - 1, NS, -NS, -NS - 1, 59 * NS + NS - 1, 60 * NS, -60 * NS, -60 * NS - 1),
    *(-(2**63), -(2**63) + 1, 2**63 - 1, 2**63 - 2, T0_NS),
    951_782_400 * NS - 1,  # 2000-02-28T23:59:59.999999999Z, before a leap day
    951_782_400 * NS,  # 2000-02-29
    951_868_800 * NS,  # 2000-03-01
    4_107_456_000 * NS,  # 2100-02-28: no leap day in 2100
    4_107_542_400 * NS,  # 2100-03-01
    -2_208_988_800 * NS,  # 1900-01-01
    7_258_118_400 * NS - 1,  # 2199-12-31T23:59:59.999999999Z
    *(2**63, -(2**63) - 1),  # past int64: strftime's own result
    253_402_300_799 * NS + NS - 1,  # 9999-12-31T23:59:59.999999999Z
    253_402_300_800 * NS,  # year 10000: strftime's error
    10**30,
    *(True, 1.5, 1.7e18),
)


@pytest.mark.parametrize("time_ns", EDGE_TIMES)
def test_event_times_match_strftime_at_the_edges(time_ns: Any) -> None:
    """Around the epoch, leap days, minute ends, int64 and year 9999, event times read (or
    fail) exactly as ``strftime`` made them."""
    assert outcome(strftime_time, time_ns) == outcome(iso_time, time_ns)


@settings(max_examples=2000, database=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_event_times_match_strftime_for_every_int64(time_ns: int) -> None:
    """Any int64 of nanoseconds reads exactly as ``strftime`` made it."""
    assert strftime_time(time_ns) == iso_time(time_ns)


def test_event_times_of_many_minutes_stay_right() -> None:
    """Times spread over more minutes than are remembered still read as ``strftime`` made
    them."""
    times = [T0_NS + minute * 61 * NS + minute for minute in range(3000)]

    assert [strftime_time(time_ns) for time_ns in times] == [iso_time(time_ns) for time_ns in times]


# --- reading SDK fields ------------------------------------------------------------------------


def test_sdk_private_fields_are_where_the_fast_reads_expect() -> None:
    """Every private SDK field the mapper reads directly holds what the public API returns; an
    SDK upgrade renaming one fails here, by name, instead of slowing every span."""
    span = rich_span()
    missing = [name for name in mapping._SPAN_FIELD_NAMES if name not in vars(span)]

    assert ((), [], True) == (mapping._sdk_field_problems(), missing, mapping._FAST_SDK_READS)


class PublicOnlySpan:
    """A span that offers only the public ReadableSpan API, no private fields."""

    __slots__ = ("_span",)

    def __init__(self, span: ReadableSpan) -> None:
        self._span = span

    def __getattr__(self, name: str) -> Any:
        """The wrapped span's public attributes only."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._span, name)


def rich_span() -> ReadableSpan:
    """A span with events, links, an error status, a remote parent and a trace state."""

    def add_events(span: Span) -> None:
        span.add_event("cache.miss", {"cache.key": "user:1", "attempt": 2}, timestamp=T0_NS + 5)
        span.record_exception(ValueError("bad input"), timestamp=T0_NS + 7)

    return SpanFactory().span(
        "GET /orders",
        attributes={"http.method": "GET", "execution.id": 7, "note": "password=hunter2"},
        kind=SpanKind.SERVER,
        parent=remote_parent(trace_state=TraceState([("vendor", "x")])),
        links=[link_to(0xAB, 0xCD, {"link.reason": "retry"})],
        status=Status(StatusCode.ERROR, "ValueError: bad input"),
        build=add_events,
    )


@pytest.mark.parametrize("scrubber", [None, Scrubber()], ids=["plain", "scrubbed"])
def test_public_api_fallback_gives_the_same_row(
    monkeypatch: pytest.MonkeyPatch, scrubber: Scrubber | None
) -> None:
    """A span read only through the public API, events, links and status included, maps to
    the row the fast reads of the SDK's fields give."""
    span = rich_span()
    fast = SpanMapper(scrubber=scrubber).to_row(span)
    monkeypatch.setattr(mapping, "_FAST_SDK_READS", False)

    public = SpanMapper(scrubber=scrubber).to_row(cast(ReadableSpan, PublicOnlySpan(span)))

    assert fast == public
