"""The ``xtrace`` propagator: the Go runner's X-Trace-ID / X-Request-ID headers.

Pure tests of extract and inject, the entry point and ``OTEL_PROPAGATORS``; then real HTTP
between processes: the test plays the Go runner and calls instrumented uvicorn services.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from support import clean_environ, query
from test_e2e import free_port, one, start_service, wait_healthy

from otel_pg_exporter.integrations.propagator import XTracePropagator
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import PgServer

PROPAGATORS = "tracecontext,baggage,xtrace"
GO_TRACE_ID = "4bf92f3577b34da6"
GO_REQUEST_ID = "00f067aa0ba902b7"
W3C_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def extract(headers: Mapping[str, Any], context: Context | None = None) -> Context:
    """``XTracePropagator().extract`` over a plain dict of headers."""
    return XTracePropagator().extract(dict(headers), context)


def ids(context: Context) -> tuple[str, str]:
    """The (trace id, span id) of the context's span, as W3C hex."""
    span_context = trace.get_current_span(context).get_span_context()
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def inject(context: Context | None = None) -> dict[str, str]:
    """The headers ``XTracePropagator().inject`` writes for ``context``."""
    headers: dict[str, str] = {}
    XTracePropagator().inject(headers, context)
    return headers


@pytest.mark.parametrize("header", ["X-Trace-ID", "x-trace-id"])
def test_a_16_hex_trace_id_is_left_padded_to_32(header: str) -> None:
    """A Go 16-hex trace id, in any case and either header spelling, becomes 16 zeros + it."""
    context = extract({header: " 4BF92f3577B34DA6 ", "X-Request-ID": GO_REQUEST_ID})
    assert ("0" * 16 + GO_TRACE_ID, GO_REQUEST_ID) == ids(context)


def test_a_32_hex_trace_id_is_taken_lowercased() -> None:
    """A 32-hex trace id in mixed case is kept whole, in lowercase."""
    context = extract({"x-trace-id": W3C_TRACE_ID.upper(), "x-request-id": GO_REQUEST_ID})
    assert (W3C_TRACE_ID, GO_REQUEST_ID) == ids(context)


def test_the_extracted_parent_is_remote_and_sampled() -> None:
    """The remote parent is a non-recording, sampled, remote span context."""
    span = trace.get_current_span(extract({"X-Trace-ID": GO_TRACE_ID}))
    span_context = span.get_span_context()
    assert (False, True, True) == (
        span.is_recording(),
        span_context.is_remote,
        span_context.trace_flags.sampled,
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "0" * 16,
        "0" * 32,
        "4bf92f3577b34da",
        "4bf92f3577b34da6a",
        W3C_TRACE_ID[:-1],
        W3C_TRACE_ID + "0",
        "0x4bf92f3577b34d",
        "4bf92f35_77b34da",
        "4bf92f35-77b3-4da6-8448-eb211c80319c",
        "gbf92f3577b34da6",
        "٤bf92f3577b34da6",
        "4bf92f3577b34da6,4bf92f3577b34da7",
    ],
)
def test_invalid_trace_ids_are_ignored(value: str) -> None:
    """A trace id that is not 16 or 32 hex digits, or is all zeros, leaves the context as is."""
    context = Context({"unrelated": 1})
    assert context is extract({"X-Trace-ID": value, "X-Request-ID": GO_REQUEST_ID}, context)


def test_without_headers_the_context_is_returned() -> None:
    """No X-Trace-ID: the given context comes back, and no context gives an empty one."""
    context = Context({"unrelated": 1})
    assert (context, Context()) == (extract({}, context), extract({"X-Request-ID": "abc"}))


@pytest.mark.parametrize("request_id", [GO_REQUEST_ID.upper(), "ffffffffffffffff" + GO_REQUEST_ID])
def test_a_hex_request_id_is_the_parent_span_id(request_id: str) -> None:
    """A 16-hex X-Request-ID is the parent span id; of a 32-hex one, its last 16 digits."""
    assert GO_REQUEST_ID == ids(extract({"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": request_id}))[1]


@pytest.mark.parametrize(
    "request_id",
    ["req-42", "4bf92f35-77b3-4da6-8448-eb211c80319c", "0" * 16, "1" * 16 + "0" * 16, "é✓"],
)
def test_another_request_id_gives_a_parent_derived_from_its_text(request_id: str) -> None:
    """Any other request id gives the first 8 bytes of its sha256 as parent, the same each time."""
    expected = hashlib.sha256(request_id.encode()).hexdigest()[:16]
    headers = {"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": f" {request_id} "}
    assert [expected, expected] == [ids(extract(headers))[1] for _ in range(2)]


def test_without_a_request_id_the_parent_is_random() -> None:
    """Without X-Request-ID each extraction gets its own valid random parent span id."""
    parents = {ids(extract({"X-Trace-ID": GO_TRACE_ID}))[1] for _ in range(20)}
    assert (20, False) == (len(parents), "0" * 16 in parents)


def test_a_valid_context_is_left_untouched() -> None:
    """A context that already holds a valid span context (from traceparent) comes back as is."""
    context = TraceContextTextMapPropagator().extract(
        {"traceparent": f"00-{W3C_TRACE_ID}-{GO_REQUEST_ID}-01"}
    )
    assert context is extract({"X-Trace-ID": GO_TRACE_ID}, context)


def test_an_invalid_span_in_the_context_is_replaced() -> None:
    """A context holding only the invalid span is continued from the headers."""
    context = trace.set_span_in_context(trace.INVALID_SPAN)
    assert ("0" * 16 + GO_TRACE_ID, GO_REQUEST_ID) == ids(
        extract({"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": GO_REQUEST_ID}, context)
    )


def test_a_16_hex_trace_goes_back_as_the_same_16_hex_string() -> None:
    """Extracted from a Go id, inject writes the very same 16-hex id and the parent's span id."""
    context = extract({"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": GO_REQUEST_ID})
    assert {"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": GO_REQUEST_ID} == inject(context)


def test_a_child_span_injects_its_own_span_id() -> None:
    """Under a local child span the trace id stays the Go one and X-Request-ID is the child's."""
    provider = TracerProvider()
    parent = extract({"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": GO_REQUEST_ID})
    with provider.get_tracer("test").start_as_current_span("child", context=parent) as child:
        expected = {
            "X-Trace-ID": GO_TRACE_ID,
            "X-Request-ID": trace.format_span_id(child.get_span_context().span_id),
        }
        assert expected == inject()
    provider.shutdown()


@pytest.mark.parametrize("trace_id", [W3C_TRACE_ID, "0000000000000001" + GO_TRACE_ID])
def test_a_32_hex_trace_stays_32_hex(trace_id: str) -> None:
    """A trace id using its high 64 bits is injected with all 32 hex digits."""
    context = extract({"X-Trace-ID": trace_id, "X-Request-ID": GO_REQUEST_ID})
    assert {"X-Trace-ID": trace_id, "X-Request-ID": GO_REQUEST_ID} == inject(context)


def test_inject_without_a_valid_span_writes_nothing() -> None:
    """No current span, or an invalid one: no headers."""
    assert [{}, {}] == [inject(Context()), inject(trace.set_span_in_context(trace.INVALID_SPAN))]


def test_fields_are_the_two_headers() -> None:
    """``fields`` names the headers inject sets."""
    assert {"X-Trace-ID", "X-Request-ID"} == XTracePropagator().fields


def hex_text(width: int, value: int, upper: bool, affix: str) -> str:
    """``value`` as ``width`` hex digits, maybe uppercase, wrapped in whitespace or after 0x."""
    text = f"{value:0{width}x}"[-width:]
    text = text.upper() if upper else text
    return f"{affix}{text}{affix}" if affix.isspace() else f"{affix}{text}"


hex_ids = st.builds(
    hex_text,
    st.sampled_from([16, 32]) | st.sampled_from([15, 17, 31, 33]),
    st.integers(0, 2**132 - 1) | st.builds(int.from_bytes, st.binary(min_size=17), st.just("big")),
    st.booleans(),
    st.sampled_from(["", " ", "\t", "0x"]),
)
header_names = st.sampled_from(
    ["X-Trace-ID", "x-trace-id", "X-TRACE-ID", "X-Request-ID", "x-request-id", "traceparent"]
) | st.text(max_size=12)
header_values = (
    hex_ids
    | st.text(max_size=40)
    | st.lists(hex_ids | st.text(max_size=40), max_size=3)
    | st.binary(max_size=40)
    | st.integers()
    | st.none()
)
# Mostly the Go headers in the spellings the getter is asked for, with ids or anything else.
go_headers = st.dictionaries(
    st.sampled_from(["X-Trace-ID", "x-trace-id", "X-Request-ID", "x-request-id"]),
    st.one_of(hex_ids, hex_ids, header_values),
    min_size=1,
    max_size=4,
)
carriers = st.builds(
    lambda other, go: {**other, **go},
    st.dictionaries(header_names, header_values, max_size=4),
    go_headers,
)


@settings(max_examples=200, deadline=None, database=None)
@given(headers=carriers)
def test_garbage_headers_never_raise(headers: dict[str, Any]) -> None:
    """Any header dict extracts without raising: to nothing, or to a context inject reproduces."""
    context = XTracePropagator().extract(headers)
    if not trace.get_current_span(context).get_span_context().is_valid:
        assert Context() == context
        return
    again = extract(inject(context))
    assert ids(context) == ids(again)


@settings(max_examples=200, deadline=None, database=None)
@given(trace_id=st.integers(1, 2**64 - 1) | st.integers(2**64, 2**128 - 1))
def test_any_trace_id_goes_back_as_it_came(trace_id: int) -> None:
    """Every 16-hex id goes back as the same 16 hex, every 32-hex one beyond 64 bits as 32."""
    sent = f"{trace_id:016x}" if trace_id < 2**64 else f"{trace_id:032x}"
    assert sent == inject(extract({"x-trace-id": sent.upper()}))["X-Trace-ID"]


def test_the_entry_point_loads_the_class() -> None:
    """``opentelemetry_propagator`` entry point ``xtrace`` is XTracePropagator."""
    entry_point = importlib.metadata.entry_points(group="opentelemetry_propagator")["xtrace"]
    assert XTracePropagator is entry_point.load()


def composite_of(names: str) -> CompositePropagator:
    """The propagator ``opentelemetry.propagate`` builds for ``OTEL_PROPAGATORS=names``."""
    entry_points = importlib.metadata.entry_points(group="opentelemetry_propagator")
    propagators: list[TextMapPropagator] = [
        entry_points[name].load()() for name in names.split(",")
    ]
    return CompositePropagator(propagators)


def test_traceparent_wins_over_x_trace_id() -> None:
    """With ``tracecontext,baggage,xtrace`` a valid traceparent decides; X-Trace-ID is ignored."""
    context = composite_of(PROPAGATORS).extract(
        {"traceparent": f"00-{W3C_TRACE_ID}-{GO_REQUEST_ID}-01", "X-Trace-ID": GO_TRACE_ID}
    )
    assert (W3C_TRACE_ID, GO_REQUEST_ID) == ids(context)


def test_the_composite_continues_and_passes_on_a_go_trace() -> None:
    """X-Trace-ID alone is continued, and inject writes it back in both header families."""
    propagator = composite_of(PROPAGATORS)
    context = propagator.extract({"X-Trace-ID": GO_TRACE_ID, "X-Request-ID": GO_REQUEST_ID})
    headers: dict[str, str] = {}
    propagator.inject(headers, context)
    assert {
        "traceparent": f"00-{'0' * 16}{GO_TRACE_ID}-{GO_REQUEST_ID}-01",
        "X-Trace-ID": GO_TRACE_ID,
        "X-Request-ID": GO_REQUEST_ID,
    } == headers


# Run with OTEL_PROPAGATORS set: what opentelemetry.propagate itself extracts and injects.
PROPAGATE_SCRIPT = """
import json, sys
from opentelemetry import propagate, trace
context = propagate.extract({"x-trace-id": sys.argv[1], "x-request-id": sys.argv[2]})
headers = {}
propagate.inject(headers, context)
span_context = trace.get_current_span(context).get_span_context()
print(json.dumps({
    "trace_id": trace.format_trace_id(span_context.trace_id),
    "headers": headers,
    "fields": sorted(propagate.get_global_textmap().fields),
}))
"""


@pytest.mark.slow
def test_otel_propagators_variable_enables_xtrace() -> None:
    """``OTEL_PROPAGATORS=tracecontext,baggage,xtrace``: opentelemetry.propagate uses xtrace."""
    completed = subprocess.run(
        [sys.executable, "-c", PROPAGATE_SCRIPT, GO_TRACE_ID, GO_REQUEST_ID],
        env=clean_environ(OTEL_PROPAGATORS=PROPAGATORS),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr
    assert {
        "trace_id": "0" * 16 + GO_TRACE_ID,
        "headers": {
            "traceparent": f"00-{'0' * 16}{GO_TRACE_ID}-{GO_REQUEST_ID}-01",
            "X-Trace-ID": GO_TRACE_ID,
            "X-Request-ID": GO_REQUEST_ID,
        },
        "fields": ["X-Request-ID", "X-Trace-ID", "baggage", "traceparent", "tracestate"],
    } == json.loads(completed.stdout)


class Calls(NamedTuple):
    """What the services did: stored rows, answers by path, the Go ids sent, their output."""

    rows: list[dict[str, Any]]
    answers: dict[str, tuple[int, Any]]
    go_ids: dict[str, str]
    output: str


@pytest.fixture(scope="module")
def calls(pg_cluster: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calls]:
    """Three services run and are called as the Go runner would, then stop on SIGINT.

    ``jobs`` (configure()) and ``router`` (opentelemetry-instrument) use
    ``OTEL_PROPAGATORS=tracecontext,baggage,xtrace``; ``legacy``, router's downstream, knows
    only ``xtrace``, as a service reading nothing but the Go headers: it can continue the trace
    only if router's call carried X-Trace-ID / X-Request-ID.
    """
    name = f"t_{secrets.token_hex(6)}"
    dsn = pg_cluster.create_database(name)
    try:
        migrate(dsn)
        yield call_services(dsn, tmp_path_factory.mktemp("xtrace"))
    finally:
        pg_cluster.drop_database(name)


def call_services(dsn: str, logs: Path) -> Calls:
    """Start the services, send the Go-style requests, stop them; what the fixture yields."""
    ports = {key: free_port() for key in ("jobs", "router", "legacy")}
    urls = {key: f"http://127.0.0.1:{port}" for key, port in ports.items()}
    services = {
        "jobs": start_service(
            "jobs", ports["jobs"], dsn, logs / "jobs.log", zero_code=False,
            OTEL_PROPAGATORS=PROPAGATORS,
        ),
        "router": start_service(
            "router", ports["router"], dsn, logs / "router.log", zero_code=True,
            OTEL_PROPAGATORS=PROPAGATORS, DOWNSTREAM_URL=urls["legacy"],
        ),
        "legacy": start_service(
            "legacy", ports["legacy"], dsn, logs / "legacy.log", zero_code=False,
            OTEL_PROPAGATORS="xtrace",
        ),
    }  # fmt: skip
    go_ids = {"job": secrets.token_hex(8), "request": secrets.token_hex(8)}
    go_ids["chain"] = secrets.token_hex(8)
    requests = {
        "jobs/5": (urls["jobs"], {"X-Trace-ID": go_ids["job"], "X-Request-ID": go_ids["request"]}),
        "chain/6": (urls["router"], {"X-Trace-ID": go_ids["chain"]}),
    }
    answers: dict[str, tuple[int, Any]] = {}
    try:
        for key, service in services.items():
            wait_healthy(urls[key], service, logs / f"{key}.log")
        for path, (url, headers) in requests.items():
            with httpx.Client(timeout=10.0) as client:
                response = client.get(f"{url}/{path}", headers=headers)
                answers[path] = (response.status_code, response.json())
    finally:
        for service in services.values():
            service.send_signal(signal.SIGINT)
        exit_codes = {key: service.wait(timeout=30) for key, service in services.items()}
    output = "\n".join(
        f"--- {key}.log ---\n{(logs / f'{key}.log').read_text()}" for key in services
    )
    assert {"jobs": 0, "router": 0, "legacy": 0} == exit_codes, output
    rows = query(dsn, "SELECT * FROM trace_spans ORDER BY started_at")
    return Calls(rows, answers, go_ids, output)


def padded(go_id: str) -> str:
    """The W3C form of a 16-hex Go id."""
    return "0" * 16 + go_id


def spans_of(calls: Calls, go_id: str) -> list[dict[str, Any]]:
    """The stored spans of the trace whose Go id is ``go_id``."""
    return [row for row in calls.rows if row["trace_id"] == padded(go_id)]


def test_jobs_continues_the_go_trace(calls: Calls) -> None:
    """GET /jobs/5 with only the Go headers: every span has the padded trace id, and the
    server span's parent is the X-Request-ID."""
    trace_id = padded(calls.go_ids["job"])
    spans = spans_of(calls, calls.go_ids["job"])
    server = one(spans, operation="GET /jobs/5", kind="server")
    job = one(spans, operation="job.run")
    assert (200, trace_id) == (calls.answers["jobs/5"][0], calls.answers["jobs/5"][1]["trace_id"])
    assert ("server", calls.go_ids["request"]) == (server["kind"], server["parent_span_id"])
    assert (server["span_id"], 5) == (job["parent_span_id"], job["execution_id"])
    assert {"jobs"} == {span["service"] for span in spans}
    assert {"job.run", "job.fetch", "job.transform", "job.store"} <= {
        span["operation"] for span in spans
    }


def test_the_go_trace_id_crosses_two_services(calls: Calls) -> None:
    """GET /chain/6 with X-Trace-ID only: router and its xtrace-only downstream store their
    spans under the padded id, the downstream's server span under router's client span."""
    trace_id = padded(calls.go_ids["chain"])
    spans = spans_of(calls, calls.go_ids["chain"])
    status, body = calls.answers["chain/6"]
    router = one(spans, service="router", operation="GET /chain/6", kind="server")
    client = one(spans, service="router", operation="downstream.run_job")
    downstream = one(spans, service="legacy", operation="GET /jobs/6", kind="server")
    job = one(spans, service="legacy", operation="job.run")
    assert (200, trace_id, trace_id) == (status, body["trace_id"], body["downstream"]["trace_id"])
    assert {"router", "legacy"} == {span["service"] for span in spans}
    assert (router["span_id"], client["span_id"], downstream["span_id"]) == (
        client["parent_span_id"],
        downstream["parent_span_id"],
        job["parent_span_id"],
    )
    assert router["parent_span_id"] not in {span["span_id"] for span in spans}
    assert 16 == len(router["parent_span_id"] or "")
