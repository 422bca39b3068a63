"""The Sentry bridge against a local Sentry stand-in: error events and ``trace_spans`` rows share
trace and span ids, a per-trace share of the spans reaches Sentry's OTLP endpoint, filters and
scrubbing apply before anything is sent, and an unreachable Sentry costs the application nothing.

sentry-sdk keeps global state, so every scenario that starts it runs in a fresh interpreter;
the receiver runs in the test process on 127.0.0.1 and every DSN points at it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from sentry_receiver import SentryReceiver
from support import clean_environ, query
from test_e2e import free_port, start_service, wait_healthy

import otel_pg_exporter
from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter.integrations.sentry import INSTALL_HINT, default_sample_rate, trace_is_sampled
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.settings import SentrySettings
from otel_pg_exporter.testing.devdb import PgServer

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")

pytestmark = pytest.mark.slow

# Every script starts with these lines and ends by printing one JSON line: its findings.
# PG_DSN and RECEIVER_DSN are the test's own variables: neither sentry-sdk nor the package
# reads them, so a script uses them only where it says so.
PRELUDE = """\
import json, logging, os, sys, time
import sentry_sdk
from opentelemetry import trace
import otel_pg_exporter
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="LOG %(levelname)s %(name)s %(message)s")
tracer = trace.get_tracer("tests.test_sentry")
PG_DSN = os.environ.get("PG_DSN")
RECEIVER_DSN = os.environ.get("RECEIVER_DSN")

def ids(span):
    context = span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

def capture(exception):
    try:
        raise exception
    except BaseException:
        return sentry_sdk.capture_exception()

def flush(handle):
    handle.force_flush(timeout=10)
    sentry_sdk.flush(timeout=10)
"""

# Blocks the BLOCKED modules (comma-separated) as if the [sentry] extra were not installed.
WITHOUT_EXTRA = """\
import os, sys

class _WithoutSentryExtra:
    blocked = tuple(os.environ["BLOCKED"].split(","))

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in self.blocked):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _WithoutSentryExtra())
"""
WHOLE_EXTRA = "sentry_sdk,opentelemetry.exporter.otlp"


def run_script(body: str, *, prelude: str = PRELUDE, **env: str) -> tuple[Any, str]:
    """Run ``prelude`` + ``body`` in a fresh interpreter; its last stdout line as JSON, and its
    output (stderr, then stdout)."""
    completed = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        env=clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    output = completed.stderr + completed.stdout
    assert 0 == completed.returncode, output
    lines = completed.stdout.strip().splitlines()
    assert lines, f"no output:\n{output}"
    return json.loads(lines[-1]), output


@pytest.fixture
def receiver() -> Iterator[SentryReceiver]:
    """A Sentry stand-in listening on 127.0.0.1 for this test."""
    with SentryReceiver() as started:
        yield started


def rows_of(dsn: str) -> list[dict[str, Any]]:
    """Every stored span, in start order."""
    return query(dsn, "SELECT * FROM trace_spans ORDER BY started_at")


def labels(events: list[dict[str, Any]]) -> list[str]:
    """What each event is about, sorted: ``Type: value`` of its exception, or its message."""
    found: list[str] = []
    for event in events:
        values = (event.get("exception") or {}).get("values") or []
        if values:
            found.append(f"{values[-1]['type']}: {values[-1]['value']}")
        else:
            found.append(str(event.get("message") or (event.get("logentry") or {}).get("message")))
    return sorted(found)


# --- 1. linkage -------------------------------------------------------------------------------


def test_event_and_row_share_trace_id_span_id_and_event_id(
    receiver: SentryReceiver, dsn: str
) -> None:
    """An exception captured inside a span reaches Sentry with that span's ids, and the span's
    row records the event id."""
    result, output = run_script(
        """
        handle = otel_pg_exporter.configure(enabled=True, dsn=PG_DSN, sentry_dsn=RECEIVER_DSN)
        with tracer.start_as_current_span("checkout") as span:
            event_id = capture(ValueError("card declined"))
            found = ids(span)
        flush(handle)
        print(json.dumps({"event_id": event_id, **found}))
        """,
        PG_DSN=dsn,
        RECEIVER_DSN=receiver.dsn,
    )
    assert receiver.wait_for(lambda r: r.events), output
    rows = rows_of(dsn)
    assert 1 == len(receiver.events), labels(receiver.events)
    assert ["checkout"] == [row["operation"] for row in rows]
    event, row = receiver.events[0], rows[0]
    assert (result["trace_id"], result["span_id"]) == (row["trace_id"], row["span_id"])
    assert 32 == len(row["trace_id"])
    assert {"trace_id": row["trace_id"], "span_id": row["span_id"]} == {
        key: event["contexts"]["trace"][key] for key in ("trace_id", "span_id")
    }
    assert (event["event_id"], event["event_id"]) == (
        result["event_id"],
        row["metadata"].get("sentry.event_id"),
    )


# --- 2. the example app ------------------------------------------------------------------------

EXAMPLE_VARIANTS = ("configure", "opentelemetry-instrument")


@pytest.fixture(scope="module")
def example_failures(
    pg_cluster: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], str]]]:
    """The example app, once with EXAMPLE_CONFIGURE=1 and once under opentelemetry-instrument,
    each with SENTRY_DSN at its own receiver, answers GET /fail and stops on SIGINT: per variant
    the Sentry events, the stored rows and the service's output."""
    logs = tmp_path_factory.mktemp("sentry-example")
    databases = {variant: f"t_{uuid.uuid4().hex[:12]}" for variant in EXAMPLE_VARIANTS}
    dsns = {variant: pg_cluster.create_database(name) for variant, name in databases.items()}
    try:
        with SentryReceiver() as by_configure, SentryReceiver() as by_instrument:
            receivers = dict(zip(EXAMPLE_VARIANTS, (by_configure, by_instrument), strict=True))
            ports = {variant: free_port() for variant in EXAMPLE_VARIANTS}
            services = {}
            for variant in EXAMPLE_VARIANTS:
                migrate(dsns[variant])
                services[variant] = start_service(
                    "jobs",
                    ports[variant],
                    dsns[variant],
                    logs / f"{variant}.log",
                    zero_code=variant == "opentelemetry-instrument",
                    SENTRY_DSN=receivers[variant].dsn,
                )
            statuses = {}
            try:
                for variant, service in services.items():
                    url = f"http://127.0.0.1:{ports[variant]}"
                    wait_healthy(url, service, logs / f"{variant}.log")
                    with httpx.Client(timeout=10.0) as client:
                        statuses[variant] = client.get(f"{url}/fail").status_code
                # Sentry reports the error after the 500 has been sent: let it happen before
                # the services stop, as it would in any service that keeps running.
                for receiver in receivers.values():
                    receiver.wait_for(lambda r: r.events, timeout_s=5.0)
            finally:
                for service in services.values():
                    service.send_signal(signal.SIGINT)
                exit_codes = {key: service.wait(timeout=30) for key, service in services.items()}
            results = {}
            for variant in EXAMPLE_VARIANTS:
                output = (logs / f"{variant}.log").read_text()
                assert (500, 0) == (statuses[variant], exit_codes[variant]), output
                receivers[variant].wait_for(lambda r: r.events, timeout_s=5.0)
                results[variant] = (receivers[variant].events, rows_of(dsns[variant]), output)
        yield results
    finally:
        for name in databases.values():
            pg_cluster.drop_database(name)


@pytest.mark.parametrize("variant", EXAMPLE_VARIANTS)
def test_example_failure_is_one_event_linked_to_a_stored_span(
    variant: str,
    example_failures: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], str]],
) -> None:
    """GET /fail gives exactly one ModelNotLoadedError event (Sentry's Starlette integration
    captures it), and its trace and span ids are those of a stored span of the request."""
    events, rows, output = example_failures[variant]
    assert ["ModelNotLoadedError: inference model is not loaded"] == labels(events), output
    context = events[0]["contexts"]["trace"]
    linked = [
        row["operation"]
        for row in rows
        if (row["trace_id"], row["span_id"]) == (context["trace_id"], context["span_id"])
    ]
    assert ["GET /fail"] == linked, (context, [(r["operation"], r["span_id"]) for r in rows])
    assert {context["trace_id"]} == {row["trace_id"] for row in rows}


@pytest.mark.parametrize("variant", EXAMPLE_VARIANTS)
def test_example_failure_row_records_the_event_id(
    variant: str,
    example_failures: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], str]],
) -> None:
    """The row of the span the failure's event points at holds ``sentry.event_id``."""
    events, rows, output = example_failures[variant]
    assert 1 == len(events), output
    context = events[0]["contexts"]["trace"]
    [linked] = [
        row
        for row in rows
        if (row["trace_id"], row["span_id"]) == (context["trace_id"], context["span_id"])
    ]
    assert events[0]["event_id"] == linked["metadata"].get("sentry.event_id"), linked


# --- 3. joining the application's own sentry_sdk.init -----------------------------------------


def test_joining_an_existing_sentry_init_keeps_its_hook_and_links_events(
    receiver: SentryReceiver, dsn: str
) -> None:
    """After the application's own ``sentry_sdk.init(before_send=...)``, configure() joins it:
    events carry the span's ids, the application's hook still tags them, and configure's
    ignore filter drops ignored errors."""
    result, output = run_script(
        """
        def tag_event(event, hint):
            event.setdefault("tags", {})["app_hook"] = "ran"
            return event

        sentry_sdk.init(dsn=RECEIVER_DSN, before_send=tag_event)
        handle = otel_pg_exporter.configure(
            enabled=True, dsn=PG_DSN, sentry_ignore_errors=["TimeoutError"]
        )
        with tracer.start_as_current_span("joined") as span:
            kept = capture(ValueError("kept"))
            ignored = capture(TimeoutError("ignored"))
            found = ids(span)
        flush(handle)
        print(json.dumps({"kept": kept, "ignored": ignored, **found}))
        """,
        PG_DSN=dsn,
        RECEIVER_DSN=receiver.dsn,
    )
    assert receiver.wait_for(lambda r: r.events), output
    assert ["ValueError: kept"] == labels(receiver.events)
    event = receiver.events[0]
    assert (result["kept"], None) == (event["event_id"], result["ignored"])
    assert "ran" == dict(event["tags"]).get("app_hook"), event["tags"]
    assert {"trace_id": result["trace_id"], "span_id": result["span_id"]} == {
        key: event["contexts"]["trace"][key] for key in ("trace_id", "span_id")
    }
    [row] = rows_of(dsn)
    assert event["event_id"] == row["metadata"].get("sentry.event_id")


def test_joining_chains_the_apps_hook_with_configures_own(receiver: SentryReceiver) -> None:
    """Joined with both the application's ``before_send`` and configure's
    ``sentry_before_send``, an event passes through both: neither hook is silently dropped."""
    _, output = run_script(
        """
        def tagger(name):
            def hook(event, hint):
                event.setdefault("tags", {})[name] = "ran"
                return event
            return hook

        sentry_sdk.init(dsn=RECEIVER_DSN, before_send=tagger("app_hook"))
        handle = otel_pg_exporter.configure(sentry_before_send=tagger("configure_hook"))
        capture(ValueError("kept"))
        flush(handle)
        print(json.dumps({}))
        """,
        RECEIVER_DSN=receiver.dsn,
    )
    assert receiver.wait_for(lambda r: r.events), output
    [event] = receiver.events
    tags = dict(event.get("tags") or {})
    assert {"app_hook": "ran", "configure_hook": "ran"} == {
        key: tags.get(key) for key in ("app_hook", "configure_hook")
    }


# --- 4. the share of traces forwarded to Sentry ----------------------------------------------

SAMPLING_SCRIPT = """
handle = otel_pg_exporter.configure(enabled=True, dsn=PG_DSN, **json.loads(os.environ["KWARGS"]))
trace_ids = []
for index in range(int(os.environ["TRACES"])):
    with tracer.start_as_current_span("request") as root:
        with tracer.start_as_current_span("query"):
            with tracer.start_as_current_span("row"):
                pass
    trace_ids.append(ids(root)["trace_id"])
sentry_sdk.capture_message("alive")  # the receiver did listen, whatever the rate
flush(handle)
print(json.dumps({"trace_ids": trace_ids}))
"""


def run_sampling(
    receiver: SentryReceiver, dsn: str, traces: int, kwargs: dict[str, Any], **env: str
) -> tuple[list[str], dict[str, int], str]:
    """Run SAMPLING_SCRIPT: the trace ids it made, the spans per trace id Sentry received, and
    the script's output; checks that PostgreSQL got every span and the alive event arrived."""
    kwargs = {"sentry_dsn": receiver.dsn, **kwargs}
    result, output = run_script(
        SAMPLING_SCRIPT, PG_DSN=dsn, KWARGS=json.dumps(kwargs), TRACES=str(traces), **env
    )
    assert receiver.wait_for(lambda r: r.events), output
    assert ["alive"] == labels(receiver.events)
    stored = query(dsn, "SELECT count(*) AS n, count(DISTINCT trace_id) AS traces FROM trace_spans")
    assert [{"n": 3 * traces, "traces": traces}] == stored
    return result["trace_ids"], Counter(span["trace_id"] for span in receiver.spans), output


def test_quarter_of_the_traces_reach_sentry_whole(receiver: SentryReceiver, dsn: str) -> None:
    """SENTRY_TRACES_SAMPLE_RATE=0.25: PostgreSQL gets all 1200 spans; Sentry gets whole traces
    only, exactly those ``trace_is_sampled(trace_id, 0.25)`` picks, about a quarter of them."""
    trace_ids, received, _ = run_sampling(
        receiver, dsn, 400, {}, SENTRY_TRACES_SAMPLE_RATE="0.25", SENTRY_ENVIRONMENT="staging"
    )
    assert {3} == set(received.values())
    expected = {t for t in trace_ids if trace_is_sampled(int(t, 16), 0.25)}
    assert expected == set(received)
    assert 60 <= len(received) <= 140, len(received)


@pytest.mark.parametrize(
    ("environment", "rate"),
    [({"SENTRY_ENVIRONMENT": "production"}, 0.1), ({}, 0.1), ({"SENTRY_ENVIRONMENT": "dev"}, 1.0)],
    ids=["production", "unset-is-sentry-sdks-production", "dev"],
)
def test_default_rate_follows_the_environment(
    environment: dict[str, str], rate: float, receiver: SentryReceiver, dsn: str
) -> None:
    """Without a rate, production (sentry-sdk's default environment) forwards a tenth of the
    traces and any other environment all of them."""
    trace_ids, received, _ = run_sampling(receiver, dsn, 200, {}, **environment)
    assert {t for t in trace_ids if trace_is_sampled(int(t, 16), rate)} == set(received)
    assert set(received.values()) <= {3}


def test_default_sample_rate_is_a_tenth_in_production_only() -> None:
    """``default_sample_rate``: 0.1 for production (any case, or "prod"), 1.0 for the rest."""
    names = ["production", "Production", "prod", "staging", "dev", "", None]
    assert [0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0] == [default_sample_rate(n) for n in names]


def test_trace_is_sampled_agrees_with_trace_id_ratio_based() -> None:
    """``trace_is_sampled`` decides as OpenTelemetry's TraceIdRatioBased sampler on the low 64
    bits of the trace id, so services sharing a rate keep or drop a trace together."""
    trace_ids = [0, 1, (1 << 64) - 1, 1 << 64, 0x0123456789ABCDEF0123456789ABCDEF]
    trace_ids += [(index * 0x9E3779B97F4A7C15F39CC0605CEDC835) % (1 << 128) for index in range(300)]
    for rate in (0.0, 0.1, 0.25, 0.5, 1.0):
        sampler = TraceIdRatioBased(rate)
        expected = [
            Decision.RECORD_AND_SAMPLE == sampler.should_sample(None, t, "x").decision
            for t in trace_ids
        ]
        assert expected == [trace_is_sampled(t, rate) for t in trace_ids], rate


def test_rate_zero_sends_no_spans(receiver: SentryReceiver, dsn: str) -> None:
    """``sentry_traces_sample_rate=0``: errors still reach Sentry, spans never do."""
    _, received, _ = run_sampling(receiver, dsn, 50, {"sentry_traces_sample_rate": 0})
    assert {} == dict(received)


def test_bad_rate_variable_warns_and_uses_the_default(receiver: SentryReceiver, dsn: str) -> None:
    """SENTRY_TRACES_SAMPLE_RATE=abc is reported by name and the default (1.0 outside
    production) applies."""
    trace_ids, received, output = run_sampling(
        receiver, dsn, 30, {}, SENTRY_TRACES_SAMPLE_RATE="abc", SENTRY_ENVIRONMENT="staging"
    )
    warnings = [line for line in output.splitlines() if line.startswith("LOG WARNING")]
    assert 1 == len([line for line in warnings if ev.SENTRY_TRACES_SAMPLE_RATE in line]), output
    assert set(trace_ids) == set(received)


@pytest.mark.parametrize("rate", [1.5, -0.1, True, "0.5", float("nan")])
def test_bad_rate_argument_raises_naming_it(rate: Any) -> None:
    """configure(sentry_traces_sample_rate=<outside 0..1 or not a number>) raises ValueError
    naming the parameter, before sentry-sdk is started."""
    with pytest.raises(ValueError, match="sentry_traces_sample_rate"):
        otel_pg_exporter.configure(enabled=False, sentry_traces_sample_rate=rate)


# --- 5. filters ------------------------------------------------------------------------------

# Each capture happens in its own span named after it, so a row shows whether an event id was
# recorded for it.
FILTER_SCRIPT = """
class SlowUpstreamError(TimeoutError):
    pass

def drop_key_errors(event, hint):
    return None if isinstance(hint.get("exc_info", (None, None))[1], KeyError) else event

handle = otel_pg_exporter.configure(enabled=True, dsn=PG_DSN, sentry_dsn=RECEIVER_DSN, {kwargs})
captures = [
    lambda: capture(TimeoutError("upstream timed out")),
    lambda: capture(SlowUpstreamError("slow upstream")),
    lambda: capture(ValueError("health check failed")),
    lambda: sentry_sdk.capture_message("healthcheck ok"),
    lambda: capture(KeyError("draft")),
    lambda: capture(ValueError("kept error")),
    lambda: sentry_sdk.capture_message("kept message"),
]
event_ids = {{}}
for index, make in enumerate(captures):
    with tracer.start_as_current_span(f"capture.{{index}}"):
        event_ids[f"capture.{{index}}"] = make()
flush(handle)
print(json.dumps(event_ids))
"""


def run_filters(receiver: SentryReceiver, dsn: str, kwargs: str, **env: str) -> list[str]:
    """Run FILTER_SCRIPT with configure's extra ``kwargs`` (source text); the labels of the
    events that arrived, after checking that exactly their spans recorded an event id."""
    result, output = run_script(
        FILTER_SCRIPT.format(kwargs=kwargs), PG_DSN=dsn, RECEIVER_DSN=receiver.dsn, **env
    )
    assert receiver.wait_for(lambda r: r.events), output
    arrived = {event["event_id"] for event in receiver.events}
    assert arrived == {event_id for event_id in result.values() if event_id is not None}
    recorded = {row["operation"]: row["metadata"].get("sentry.event_id") for row in rows_of(dsn)}
    assert {
        operation: event_id if event_id in arrived else None
        for operation, event_id in result.items()
    } == recorded
    return labels(receiver.events)


KEPT = ["KeyError: 'draft'", "ValueError: kept error", "kept message"]


@pytest.mark.parametrize(
    "kwargs",
    [
        'sentry_ignore_errors=["TimeoutError"], sentry_ignore_messages=[r"health ?check"]',
        "sentry_ignore_errors=[TimeoutError], sentry_ignore_messages=[r'health ?check']",
        'sentry_ignore_errors=["builtins.TimeoutError"], sentry_ignore_messages=["^health"]',
    ],
    ids=["names", "types", "dotted-name"],
)
def test_ignored_errors_and_messages_never_arrive(
    kwargs: str, receiver: SentryReceiver, dsn: str
) -> None:
    """Ignored exception types (subclasses too) and messages matching an ignore pattern never
    reach Sentry and leave no event id on their span; the other events arrive."""
    assert KEPT == run_filters(receiver, dsn, kwargs)


def test_ignore_variables_filter_like_the_arguments(receiver: SentryReceiver, dsn: str) -> None:
    """SENTRY_IGNORE_ERRORS (comma list) and SENTRY_IGNORE_MESSAGES (``;;`` list) filter as
    the arguments do."""
    labels_ = run_filters(
        receiver,
        dsn,
        "",
        SENTRY_IGNORE_ERRORS=" OSError.never , TimeoutError ,",
        SENTRY_IGNORE_MESSAGES="^never;;health ?check",
    )
    assert KEPT == labels_


def test_arguments_win_over_the_ignore_variables(receiver: SentryReceiver, dsn: str) -> None:
    """Explicit ignore lists replace the variables: ``sentry_ignore_errors=[]`` lets a
    TimeoutError through although SENTRY_IGNORE_ERRORS names it."""
    labels_ = run_filters(
        receiver,
        dsn,
        "sentry_ignore_errors=[], sentry_ignore_messages=['health ?check']",
        SENTRY_IGNORE_ERRORS="TimeoutError",
    )
    assert [
        "KeyError: 'draft'",
        "SlowUpstreamError: slow upstream",
        "TimeoutError: upstream timed out",
        "ValueError: kept error",
        "kept message",
    ] == labels_


def test_before_send_returning_none_drops_the_event(receiver: SentryReceiver, dsn: str) -> None:
    """A ``sentry_before_send`` that returns None for KeyError drops those events only."""
    labels_ = run_filters(receiver, dsn, "sentry_before_send=drop_key_errors")
    assert [
        "SlowUpstreamError: slow upstream",
        "TimeoutError: upstream timed out",
        "ValueError: health check failed",
        "ValueError: kept error",
        "healthcheck ok",
        "kept message",
    ] == labels_


# --- 6. scrubbing before Sentry --------------------------------------------------------------


def leaks(secrets: dict[str, str], receiver: SentryReceiver, dsn: str) -> list[tuple[str, str]]:
    """(where the secret was put, where it was found) for every secret that shows up in a
    parsed event, a received span, a raw request body or a stored row."""
    documents = {
        "events": json.dumps(receiver.events),
        "otlp spans": json.dumps(receiver.spans),
        "rows": json.dumps(rows_of(dsn), default=str),
    }
    for index, body in enumerate(receiver.bodies):
        documents[f"request body {index}"] = body.decode("latin-1")
    return [
        (origin, where)
        for origin, secret in secrets.items()
        for where, text in documents.items()
        if secret in text
    ]


EVENT_SECRETS = {
    "exception message": "Msg-Pw-42",
    "local variable": "Local-Var-Pw-41",
    "extra": "Extra-Pw-43",
    "context": "xyzBearer44",
    "tag": "Tag-Dsn-Pw-45",
    "breadcrumb": "Crumb-Pw-46",
}


def test_event_secrets_never_reach_sentry(receiver: SentryReceiver, dsn: str) -> None:
    """A password in the exception message, a DSN password in a local variable and a tag, a
    ``password=`` extra, an ``Authorization: Bearer`` context and a breadcrumb's password reach
    Sentry redacted: in no request body, parsed event or row."""
    _, output = run_script(
        """
        handle = otel_pg_exporter.configure(enabled=True, dsn=PG_DSN, sentry_dsn=RECEIVER_DSN)

        def connect():
            connection = "postgresql://app:Local-Var-Pw-41@db.internal/app"
            raise ConnectionError(f"login to {connection[-15:]} failed: password=Msg-Pw-42")

        with tracer.start_as_current_span("connect"):
            with sentry_sdk.new_scope():
                logging.getLogger("app").info("retrying with password=Crumb-Pw-46")
                sentry_sdk.set_extra("login", "user=bob password=Extra-Pw-43")
                sentry_sdk.set_context("upstream", {"request": "Authorization: Bearer xyzBearer44"})
                sentry_sdk.set_tag("database", "postgresql://app:Tag-Dsn-Pw-45@db.internal/app")
                try:
                    connect()
                except ConnectionError:
                    sentry_sdk.capture_exception()
        flush(handle)
        print(json.dumps({}))
        """,
        PG_DSN=dsn,
        RECEIVER_DSN=receiver.dsn,
    )
    assert receiver.wait_for(lambda r: r.events), output
    [event] = receiver.events
    assert (
        "ConnectionError: login to db.internal/app failed: password=[REDACTED:password]"
        == (labels([event])[0])
    )
    assert "retrying with password=[REDACTED:password]" in json.dumps(event["breadcrumbs"])
    assert [] == leaks(EVENT_SECRETS, receiver, dsn)


SPAN_SECRETS = {
    "attribute": "s3cretpw",
    "span name": "Name-Pw-47",
    "status description": "Status-Pw-48",
    "resource attribute": "Resource-Pw-49",
    "exception event": "Event-Pw-50",
    "event name": "Event-Name-Pw-51",
}


def test_span_secrets_never_reach_sentry(receiver: SentryReceiver, dsn: str) -> None:
    """Spans forwarded to Sentry's OTLP endpoint are scrubbed as the rows are: a connection
    string attribute, a span name, a status description, a resource attribute, an exception
    event and an event name carry no password, and every span does arrive."""
    _, output = run_script(
        """
        handle = otel_pg_exporter.configure(
            enabled=True,
            dsn=PG_DSN,
            sentry_dsn=RECEIVER_DSN,
            sentry_traces_sample_rate=1.0,
            resource_attributes={"deployment.db": "postgresql://u:Resource-Pw-49@h/db"},
        )
        attributes = {"db.connection_string": "postgresql://u:s3cretpw@h/db"}
        with tracer.start_as_current_span("connect", attributes=attributes):
            pass
        with tracer.start_as_current_span("connect postgresql://u:Name-Pw-47@h/db"):
            pass
        with tracer.start_as_current_span("login") as span:
            span.set_status(trace.StatusCode.ERROR, "login failed: password=Status-Pw-48")
        with tracer.start_as_current_span("retry") as span:
            span.record_exception(ConnectionError("login failed: password=Event-Pw-50"))
            span.add_event("retrying with password=Event-Name-Pw-51")
        flush(handle)
        print(json.dumps({}))
        """,
        PG_DSN=dsn,
        RECEIVER_DSN=receiver.dsn,
    )
    assert receiver.wait_for(lambda r: len(r.spans) >= 4), output
    assert 4 == len(rows_of(dsn))
    assert 4 == len(receiver.spans), [span["name"] for span in receiver.spans]
    assert [] == leaks(SPAN_SECRETS, receiver, dsn)


# --- 7. an unreachable Sentry ----------------------------------------------------------------

UNREACHABLE_SCRIPT = """
handle = otel_pg_exporter.configure(enabled=True, dsn=PG_DSN, sentry_traces_sample_rate=1.0)
start = time.monotonic()
for index in range(200):
    with tracer.start_as_current_span("attempt", attributes={"attempt": index}) as span:
        try:
            raise RuntimeError(f"attempt {index} failed")
        except RuntimeError as exc:
            span.record_exception(exc)
            sentry_sdk.capture_exception()
work_s = time.monotonic() - start
handle.force_flush(timeout=10)
print(json.dumps({"work_s": work_s, "flushed_s": time.monotonic() - start}))
"""


@pytest.mark.parametrize("refusing", [False, True], ids=["closed-port", "answers-503"])
def test_unreachable_sentry_costs_the_application_nothing(refusing: bool, dsn: str) -> None:
    """With SENTRY_DSN at a closed port or at a server answering 503, 200 failing spans are
    made quickly, all reach PostgreSQL and the script exits 0."""
    with SentryReceiver(refuse=True) as refuser:
        target = refuser.dsn if refusing else f"http://publickey@127.0.0.1:{free_port()}/1"
        start = time.monotonic()
        result, output = run_script(UNREACHABLE_SCRIPT, PG_DSN=dsn, SENTRY_DSN=target)
        wall_s = time.monotonic() - start
    assert [{"n": 200}] == query(dsn, "SELECT count(*) AS n FROM trace_spans"), output
    assert result["work_s"] < 10.0, result
    assert wall_s < 30.0, (wall_s, result)
    assert (refuser.requests > 0) == refusing  # the 503 server was really asked


# --- 8. without the [sentry] extra, and with the database off --------------------------------

NO_EXTRA_PRELUDE = (
    WITHOUT_EXTRA
    + """\
import json, logging, os
from opentelemetry import trace
import otel_pg_exporter
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="LOG %(levelname)s %(name)s %(message)s")
"""
)


@pytest.mark.parametrize(
    "blocked", [WHOLE_EXTRA, "opentelemetry.exporter.otlp"], ids=["no-extra", "no-otlp-exporter"]
)
def test_explicit_dsn_without_the_extra_raises_with_the_install_line(blocked: str) -> None:
    """``configure(sentry_dsn=...)`` where sentry-sdk or the OTLP exporter cannot be imported
    raises ImportError whose message holds ``pip install 'otel_pg_exporter[sentry]'``."""
    result, output = run_script(
        """
        try:
            otel_pg_exporter.configure(enabled=False, sentry_dsn="http://key@127.0.0.1:9/1")
            print(json.dumps({"raised": None}))
        except ImportError as exc:
            print(json.dumps({"raised": str(exc)}))
        """,
        prelude=NO_EXTRA_PRELUDE,
        BLOCKED=blocked,
    )
    assert "pip install 'otel_pg_exporter[sentry]'" == INSTALL_HINT
    assert INSTALL_HINT in (result["raised"] or ""), output


def test_sentry_dsn_variable_without_the_extra_warns_and_traces_on(dsn: str) -> None:
    """With only SENTRY_DSN set and sentry-sdk not importable, configure() logs one warning with
    the install line and spans still reach PostgreSQL."""
    result, output = run_script(
        """
        handle = otel_pg_exporter.configure()
        with trace.get_tracer("t").start_as_current_span("still traced"):
            pass
        handle.force_flush()
        print(json.dumps({"bridge": handle.sentry is not None}))
        """,
        prelude=NO_EXTRA_PRELUDE,
        BLOCKED=WHOLE_EXTRA,
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
        SENTRY_DSN="http://key@127.0.0.1:9/1",
    )
    warnings = [line for line in output.splitlines() if line.startswith("LOG WARNING")]
    assert [True] == [INSTALL_HINT in line for line in warnings], output
    assert {"bridge": False} == result
    assert ["still traced"] == [row["operation"] for row in rows_of(dsn)]


def test_bridge_works_with_database_tracing_off(receiver: SentryReceiver) -> None:
    """ENABLE_DB_TRACING unset and SENTRY_DSN set: configure() still starts the bridge, and
    captured events reach Sentry, scrubbed."""
    result, output = run_script(
        """
        handle = otel_pg_exporter.configure()
        event_id = capture(ValueError("checkout failed: password=Off-Pw-52"))
        flush(handle)
        print(json.dumps({"enabled": handle.enabled, "event_id": event_id}))
        """,
        SENTRY_DSN=receiver.dsn,
    )
    assert receiver.wait_for(lambda r: r.events), output
    assert {"enabled": False, "event_id": receiver.events[0]["event_id"]} == result
    assert ["ValueError: checkout failed: password=[REDACTED:password]"] == labels(receiver.events)


# --- 9. invalid settings ---------------------------------------------------------------------


def test_ignore_variables_are_parsed_into_lists() -> None:
    """SENTRY_IGNORE_ERRORS splits at commas and SENTRY_IGNORE_MESSAGES at ``;;``, blanks
    dropped."""
    options = SentrySettings.resolve(
        {
            ev.SENTRY_IGNORE_ERRORS: " TimeoutError, ,myapp.errors.Busy ,",
            ev.SENTRY_IGNORE_MESSAGES: "health ?check;;^noise$;;",
        }
    )
    assert (("TimeoutError", "myapp.errors.Busy"), ("health ?check", "^noise$")) == (
        options.ignore_errors,
        options.ignore_messages,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SENTRY_DSN", "not-a-dsn"),
        ("SENTRY_DSN", "http://127.0.0.1:9/1"),
        ("SENTRY_IGNORE_MESSAGES", "health("),
    ],
    ids=["dsn-without-scheme", "dsn-without-key", "bad-pattern"],
)
def test_bad_sentry_variable_warns_and_tracing_goes_on(
    variable: str, value: str, receiver: SentryReceiver, dsn: str
) -> None:
    """A malformed Sentry variable is reported by name and configure() returns: spans still
    reach PostgreSQL (a bad environment value never raises)."""
    env = {"SENTRY_DSN": receiver.dsn, variable: value}
    result, output = run_script(
        """
        try:
            handle = otel_pg_exporter.configure()
            with tracer.start_as_current_span("still traced"):
                pass
            handle.force_flush()
            print(json.dumps({"raised": None}))
        except Exception as exc:
            print(json.dumps({"raised": f"{type(exc).__name__}: {exc}"}))
        """,
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
        **env,
    )
    warnings = [line for line in output.splitlines() if line.startswith("LOG WARNING")]
    assert {"raised": None} == result
    assert 1 == len([line for line in warnings if variable in line]), output
    assert ["still traced"] == [row["operation"] for row in rows_of(dsn)]


def test_bad_sentry_dsn_does_not_stop_opentelemetry_instrument(dsn: str) -> None:
    """Under opentelemetry-instrument a malformed SENTRY_DSN does not abort the automatic
    set-up: psycopg's auto-instrumentation still records the script's query."""
    script = "import os, psycopg\npsycopg.connect(os.environ['APP_DSN']).execute('select 42')"
    completed = subprocess.run(
        [INSTRUMENT, "--traces_exporter", "postgres", sys.executable, "-c", script],
        env=clean_environ(
            ENABLE_DB_TRACING="true",
            OTEL_EXPORTER_POSTGRES_DSN=dsn,
            APP_DSN=dsn,
            SENTRY_DSN="not-a-dsn",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert (0, False) == (completed.returncode, "Failed to auto initialize" in output), output
    rows = query(dsn, "SELECT operation, metadata FROM trace_spans")
    assert ["select 42"] == [row["metadata"].get("db.statement") for row in rows], output


def test_bad_ignore_pattern_argument_raises_before_any_setup(receiver: SentryReceiver) -> None:
    """``sentry_ignore_messages=["health("]`` raises ValueError naming the parameter, before
    a tracer provider is installed or sentry-sdk is started."""
    result, output = run_script(
        """
        try:
            otel_pg_exporter.configure(
                enabled=True,
                dsn=PG_DSN,
                sentry_dsn=RECEIVER_DSN,
                sentry_ignore_messages=["health("],
            )
            raised = None
        except ValueError as exc:
            raised = str(exc)
        from opentelemetry.sdk.trace import TracerProvider
        print(json.dumps({
            "raised": raised,
            "provider": isinstance(trace.get_tracer_provider(), TracerProvider),
            "sentry": sentry_sdk.get_client().is_active(),
        }))
        """,
        PG_DSN="postgresql://nobody@127.0.0.1:9/unused",
        RECEIVER_DSN=receiver.dsn,
    )
    assert "sentry_ignore_messages" in (result["raised"] or ""), output
    assert {"provider": False, "sentry": False} == {
        key: result[key] for key in ("provider", "sentry")
    }
