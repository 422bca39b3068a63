"""Real SDK spans exported by PostgresSpanExporter to a real PostgreSQL and read back."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TraceState
from opentelemetry.util.types import AttributeValue
from psycopg.rows import dict_row
from spans import (
    REPLACEMENT,
    T0_NS,
    SpanFactory,
    extended_attribute_dicts,
    link_to,
    otel_flags,
    remote_parent,
    sanitised,
    sanitised_attributes,
    typed,
    with_expected_number_types,
)

from otel_pg_exporter.export.exporter import PostgresSpanExporter
from otel_pg_exporter.settings import DEFAULT_MAX_VALUE_CHARS

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
HUGE = 10_000_000  # characters: a 10 MB attribute value


@pytest.fixture
def exporter(migrated_dsn: str) -> Iterator[PostgresSpanExporter]:
    """An enabled exporter to the migrated database, blind to the environment, shut down after."""
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True, environ={})
    yield exporter
    exporter.shutdown()


def ids(span: ReadableSpan) -> tuple[str, str]:
    """The (trace_id, span_id) key of ``span`` as the table stores it."""
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def stored_rows(dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every row of trace_spans by (trace_id, span_id)."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM trace_spans").fetchall()
    return {(row["trace_id"], row["span_id"]): row for row in rows}


def row_count(dsn: str) -> int:
    """How many rows trace_spans holds."""
    with psycopg.connect(dsn) as conn:
        record = conn.execute("SELECT count(*) FROM trace_spans").fetchone()
    assert record is not None
    count: int = record[0]
    return count


def timestamp(time_ns: int) -> datetime:
    """The timestamptz PostgreSQL holds for ``time_ns``: truncated to the microsecond."""
    return EPOCH + timedelta(microseconds=time_ns // 1000)


# --- every field ---------------------------------------------------------------------------------

RESOURCE: dict[str, AttributeValue] = {
    "service.name": "checkout",
    "service.version": "2.0.1",
    "host.name": "box-1",
    "process.pid": 4242,
    "host.cpu.ratio": 0.5,
    "container.privileged": False,
}
ATTRIBUTES: dict[str, AttributeValue] = {
    "http.method": "POST",
    "cache.hit": True,
    "http.status_code": 201,
    "db.ratio": 0.25,
    "whole.float": 3.0,
    "execution.id": 98765,
    "tags": ("a", "b"),
    "flags": (True, False),
    "sizes": (1, 2, 3),
    "weights": (0.5, 1.5),
    "nothing": (),
}
ATTRIBUTES_JSON: dict[str, Any] = {
    "http.method": "POST",
    "cache.hit": True,
    "http.status_code": 201,
    "db.ratio": 0.25,
    "whole.float": 3.0,
    "execution.id": 98765,
    "tags": ["a", "b"],
    "flags": [True, False],
    "sizes": [1, 2, 3],
    "weights": [0.5, 1.5],
    "nothing": [],
}
LINK_ATTRIBUTES: dict[str, AttributeValue] = {
    "link.reason": "retry",
    "link.n": 2,
    "link.weight": 0.75,
    "link.ok": False,
}


def every_field_span() -> ReadableSpan:
    """A span using every field the table stores."""
    factory = SpanFactory(resource=Resource(RESOURCE, schema_url="https://example.test/r"))
    tracer = factory.tracer("checkout.orders", "3.1.4", attributes={"team": "payments"})
    parent = remote_parent(trace_state=TraceState([("vendor", "abc"), ("other", "1")]))

    def add_events(span: Span) -> None:
        span.add_event("cache.miss", {"cache.key": "user:1", "attempt": 2}, timestamp=T0_NS + 5)
        try:
            raise ValueError("bad input")
        except ValueError as exc:
            span.record_exception(exc, timestamp=T0_NS + 1_000)

    return factory.span(
        "POST /orders",
        attributes=ATTRIBUTES,
        kind=SpanKind.SERVER,
        parent=parent,
        links=[link_to(0xAB, 0xCD, LINK_ATTRIBUTES)],
        status=Status(StatusCode.ERROR, "payment declined"),
        start_time=T0_NS,
        end_time=T0_NS + 1_234_567_891,
        tracer=tracer,
        build=add_events,
    )


def test_span_with_every_field_reads_back_column_for_column(
    exporter: PostgresSpanExporter, migrated_dsn: str
) -> None:
    """Every column of a stored span equals the span, jsonb value types included."""
    span = every_field_span()

    assert SpanExportResult.SUCCESS == exporter.export([span])

    row = stored_rows(migrated_dsn)[ids(span)]
    end_ns = T0_NS + 1_234_567_891
    stacktrace = (span.events[1].attributes or {})["exception.stacktrace"]
    expected = {
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": ids(span)[1],
        "parent_span_id": "00f067aa0ba902b7",
        "service": "checkout",
        "operation": "POST /orders",
        "kind": "server",
        "started_at": timestamp(T0_NS),
        "completed_at": timestamp(end_ns),
        "status": "error",
        "status_message": "payment declined",
        "execution_id": 98765,
        "scope": "checkout.orders",
    }
    assert expected == {column: row[column] for column in expected}
    assert datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc) == row["started_at"]
    assert math.isclose((end_ns - T0_NS) / 1e6, row["duration_ms"], rel_tol=1e-9)
    assert typed(ATTRIBUTES_JSON) == typed(row["metadata"])
    expected_events = [
        {
            "name": "cache.miss",
            "time": "2023-11-14T22:13:20.123456794Z",
            "attributes": {"cache.key": "user:1", "attempt": 2},
        },
        {
            "name": "exception",
            "time": "2023-11-14T22:13:20.123457789Z",
            "attributes": {
                "exception.type": "ValueError",
                "exception.message": "bad input",
                "exception.stacktrace": stacktrace,
                "exception.escaped": "False",
            },
        },
    ]
    assert typed(expected_events) == typed(row["events"])
    assert isinstance(stacktrace, str)
    assert "ValueError: bad input" in stacktrace
    expected_links = [
        {
            "trace_id": "000000000000000000000000000000ab",
            "span_id": "00000000000000cd",
            "attributes": LINK_ATTRIBUTES,
        }
    ]
    assert typed(expected_links) == typed(row["links"])
    assert typed(RESOURCE) == typed(row["resource"])
    expected_otel = {
        **otel_flags(span),
        "parent_is_remote": True,
        "trace_state": "vendor=abc,other=1",
        "scope_version": "3.1.4",
        "scope_attributes": {"team": "payments"},
        "resource_schema_url": "https://example.test/r",
    }
    assert typed(expected_otel) == typed(row["otel"])
    assert abs(datetime.now(timezone.utc) - row["created_at"]) < timedelta(minutes=5)


def test_root_span_without_extras_stores_nulls(
    exporter: PostgresSpanExporter, migrated_dsn: str
) -> None:
    """A bare root span has a null parent, status message, execution id, events and links."""
    span = SpanFactory().span()

    assert SpanExportResult.SUCCESS == exporter.export([span])

    row = stored_rows(migrated_dsn)[ids(span)]
    nullable = ("parent_span_id", "status_message", "execution_id", "events", "links")
    assert dict.fromkeys(nullable) == {column: row[column] for column in nullable}
    assert ({}, "unset", "internal") == (row["metadata"], row["status"], row["kind"])


# --- poison --------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf


def poison_batch() -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """Normal spans and spans carrying every poison value, interleaved: (normal, poisoned)."""
    factory = SpanFactory(limits=SpanLimits(max_span_attributes=200))
    poisoned_factory = SpanFactory(resource=Resource({"service.name": "svc\x00", "h\x00": "\x00"}))

    def poison_event(span: Span) -> None:
        span.add_event("ev\x00\ud800", {"a\x00": NAN, "s": "\udfff"}, timestamp=T0_NS)

    normal = [factory.span(f"normal {number}", attributes={"n": number}) for number in range(3)]
    poisoned = [
        factory.span(
            "na\x00me",
            attributes={"k\x00ey": "v\x00al", "list": ("a\x00", "b"), "\x00": "\x00"},
            status=Status(StatusCode.ERROR, "fail\x00ed"),
        ),
        factory.span(
            "surrogate \ud800",
            attributes={"pair": "\ud83d\ude00", "lone": "a\ud800b", "\udc00": "\ude00"},
            status=Status(StatusCode.ERROR, "\ud83d lone"),
        ),
        factory.span(
            "non-finite",
            attributes={"nan": NAN, "inf": INF, "ninf": -INF, "floats": (1.5, NAN, INF, -INF)},
        ),
        factory.span("huge", attributes={"blob": "x" * HUGE, "small": "kept"}),
        factory.span(
            "many medium values",
            attributes={f"attr.{number:03d}": "v" * 20_000 for number in range(200)},
        ),
        factory.span(
            "events and links",
            links=[link_to(0xA, 0xB, {"l\x00": -INF, "t": "\ud800"})],
            build=poison_event,
        ),
        factory.span(
            "beyond the basics",
            attributes={"none": None, "bytes": b"\x00\xff", "map": {"k\x00": NAN}},
        ),
        poisoned_factory.span("poisoned resource", tracer=poisoned_factory.tracer("sc\x00")),
    ]
    return normal, poisoned


# The poisoned spans of poison_batch(), in order, by what they carry.
POISONED = (
    "nul",
    "surrogates",
    "non-finite",
    "huge",
    "many",
    "events-links",
    "extended",
    "resource",
)
R = REPLACEMENT  # what a NUL or a lone surrogate becomes
NON_FINITE_JSON = {
    "nan": "NaN",
    "inf": "Infinity",
    "ninf": "-Infinity",
    "floats": [1.5, "NaN", "Infinity", "-Infinity"],
}
TRUNCATED_BLOB = (
    "x" * DEFAULT_MAX_VALUE_CHARS + f"…[truncated {HUGE - DEFAULT_MAX_VALUE_CHARS} chars]"
)


@dataclass(frozen=True)
class PoisonExport:
    """What exporting the mixed poison batch gave: the result, the spans and the stored rows."""

    result: SpanExportResult
    batch: list[ReadableSpan]
    normal: list[ReadableSpan]
    poisoned: dict[str, ReadableSpan]
    rows: dict[tuple[str, str], dict[str, Any]]

    def row(self, poisoned: str) -> dict[str, Any]:
        """The stored row of the poisoned span named ``poisoned`` (see POISONED)."""
        key = ids(self.poisoned[poisoned])
        assert key in self.rows, f"the {poisoned!r} span was not stored"
        return self.rows[key]


@pytest.fixture
def poison_export(exporter: PostgresSpanExporter, migrated_dsn: str) -> PoisonExport:
    """Normal spans and every poison value, interleaved in one batch, exported once."""
    normal, poisoned = poison_batch()
    batch = [normal[0], *poisoned[:4], normal[1], *poisoned[4:], normal[2]]
    result = exporter.export(batch)
    return PoisonExport(
        result,
        batch,
        normal,
        dict(zip(POISONED, poisoned, strict=True)),
        stored_rows(migrated_dsn),
    )


# Each check gives (expected, actual) for one behaviour.
PoisonCheck = Callable[[PoisonExport], tuple[object, object]]
POISON_CHECKS: dict[str, PoisonCheck] = {
    "export-succeeds": lambda p: (SpanExportResult.SUCCESS, p.result),
    "every-span-stored": lambda p: ({ids(span) for span in p.batch}, set(p.rows)),
    "normal-spans-untouched": lambda p: (
        [{"n": (span.attributes or {})["n"]} for span in p.normal],
        [p.rows[ids(span)]["metadata"] for span in p.normal],
    ),
    "nul-in-attributes": lambda p: (
        {f"k{R}ey": f"v{R}al", "list": [f"a{R}", "b"], R: R},
        p.row("nul")["metadata"],
    ),
    "nul-in-name-and-status-message": lambda p: (
        (f"na{R}me", f"fail{R}ed"),
        (p.row("nul")["operation"], p.row("nul")["status_message"]),
    ),
    "surrogates-in-attributes": lambda p: (
        {"pair": "\U0001f600", "lone": f"a{R}b", R: R},
        p.row("surrogates")["metadata"],
    ),
    "surrogates-in-name-and-status-message": lambda p: (
        (f"surrogate {R}", f"{R} lone"),
        (p.row("surrogates")["operation"], p.row("surrogates")["status_message"]),
    ),
    "non-finite-floats-become-strings": lambda p: (
        typed(NON_FINITE_JSON),
        typed(p.row("non-finite")["metadata"]),
    ),
    "huge-value-truncated": lambda p: (
        {"blob": TRUNCATED_BLOB, "small": "kept"},
        p.row("huge")["metadata"],
    ),
    "many-values-first-kept-whole": lambda p: (
        "v" * 20_000,
        p.row("many")["metadata"]["attr.000"],
    ),
    "many-values-beyond-the-span-cap-truncated": lambda p: (
        True,
        any(str(value).endswith(" chars]") for value in p.row("many")["metadata"].values()),
    ),
    "poison-in-events": lambda p: (
        [{"name": f"ev{R}{R}", "attributes": {f"a{R}": "NaN", "s": R}}],
        [
            {"name": event["name"], "attributes": event["attributes"]}
            for event in p.row("events-links")["events"]
        ],
    ),
    "poison-in-links": lambda p: (
        {f"l{R}": "-Infinity", "t": R},
        p.row("events-links")["links"][0]["attributes"],
    ),
    "none-bytes-and-mappings": lambda p: (
        {"none": None, "bytes": f"{R}\\xff", "map": {f"k{R}": "NaN"}},
        p.row("extended")["metadata"],
    ),
    "poison-in-service-and-scope": lambda p: (
        (f"svc{R}", f"sc{R}"),
        (p.row("resource")["service"], p.row("resource")["scope"]),
    ),
    "poison-in-resource": lambda p: (
        {"service.name": f"svc{R}", f"h{R}": R},
        p.row("resource")["resource"],
    ),
}


@pytest.mark.parametrize("check", POISON_CHECKS.values(), ids=POISON_CHECKS.keys())
def test_poison_batch_is_stored_whole_and_sanitised(
    poison_export: PoisonExport, check: PoisonCheck
) -> None:
    """A batch mixing normal spans and every poison value is stored whole, and each value is
    sanitised as the case's id says."""
    expected, actual = check(poison_export)

    assert expected == actual


def test_batch_with_an_integer_too_long_for_json_is_stored(
    exporter: PostgresSpanExporter, migrated_dsn: str
) -> None:
    """A span with a 5001-digit int attribute, which the API accepts, is stored with its batch."""
    factory = SpanFactory()
    batch = [factory.span("normal"), factory.span("big", attributes={"big": 10**5000})]

    result = exporter.export(batch)

    assert {ids(span) for span in batch} == set(stored_rows(migrated_dsn))
    assert SpanExportResult.SUCCESS == result


# --- properties ----------------------------------------------------------------------------------

PROPERTY_FACTORY = SpanFactory()


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch_attributes=st.lists(extended_attribute_dicts, min_size=1, max_size=3))
def test_any_api_attributes_are_stored_sanitised(
    exporter: PostgresSpanExporter, migrated_dsn: str, batch_attributes: list[dict[str, Any]]
) -> None:
    """Any attributes the API accepts are stored, read back as their sanitised values."""
    batch = [PROPERTY_FACTORY.span(attributes=attributes) for attributes in batch_attributes]

    assert SpanExportResult.SUCCESS == exporter.export(batch)

    with psycopg.connect(migrated_dsn) as conn:
        for span in batch:
            record = conn.execute(
                "SELECT metadata FROM trace_spans WHERE trace_id = %s AND span_id = %s", ids(span)
            ).fetchone()
            assert record is not None
            expected = sanitised_attributes(dict(span.attributes or {}))
            actual = with_expected_number_types(expected, record[0])
            assert typed(expected) == typed(actual)


# --- idempotence ---------------------------------------------------------------------------------


def distinct_spans(count: int) -> Sequence[ReadableSpan]:
    """``count`` finished spans of one trace."""
    factory = SpanFactory()
    tracer = factory.tracer()
    with tracer.start_as_current_span("root"):
        for number in range(count - 1):
            with tracer.start_as_current_span(f"step {number}"):
                pass
    return factory.finished()


def test_batch_exported_twice_is_stored_once(
    exporter: PostgresSpanExporter, migrated_dsn: str
) -> None:
    """Exporting the same batch again succeeds and adds no row."""
    batch = distinct_spans(5)

    first, second = exporter.export(batch), exporter.export(batch)

    assert (SpanExportResult.SUCCESS, SpanExportResult.SUCCESS) == (first, second)
    assert 5 == row_count(migrated_dsn)


def test_span_repeated_within_a_batch_is_stored_once(
    exporter: PostgresSpanExporter, migrated_dsn: str
) -> None:
    """A batch holding the same span twice stores one row for it."""
    batch = distinct_spans(3)

    assert SpanExportResult.SUCCESS == exporter.export([*batch, batch[0], batch[1]])

    assert 3 == row_count(migrated_dsn)


def test_replayed_poison_batch_is_stored_once(
    exporter: PostgresSpanExporter, migrated_dsn: str
) -> None:
    """Sanitising is deterministic: a poisoned batch exported twice adds no row."""
    normal, poisoned = poison_batch()
    batch = [*normal, *poisoned[:3]]

    first, second = exporter.export(batch), exporter.export(batch)

    assert (SpanExportResult.SUCCESS, SpanExportResult.SUCCESS) == (first, second)
    assert len(batch) == row_count(migrated_dsn)
    assert sanitised("k\x00ey") in stored_rows(migrated_dsn)[ids(poisoned[0])]["metadata"]
