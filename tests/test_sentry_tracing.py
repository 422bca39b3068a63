"""The Sentry bridge beside Sentry's own tracing: a real uvicorn app whose Sentry client has
``traces_sample_rate=1.0`` (in every order and entry), served over HTTP. The failing request's
error event carries the ids of its rows in ``trace_spans``, and whatever Sentry receives for
it (transactions, OTLP spans) carries that one trace id."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sentry_receiver import SentryReceiver
from support import clean_environ, query
from test_e2e import free_port, wait_healthy

from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import PgServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# (mode, layout): see tests/sentry_tracing_app.py.
VARIANTS = (
    ("before", "outside"),
    ("before", "inside"),
    ("after", "outside"),
    ("configure", "outside"),
    ("configure", "inside"),
    ("instrument", "outside"),
    ("instrument-init", "inside"),
)
APP_INITS_SENTRY = {"before", "after", "instrument-init"}


@dataclass
class Served:
    """What one variant's service left behind after GET /fail and GET /manual."""

    events: list[dict[str, Any]]
    transactions: list[dict[str, Any]]
    otlp_spans: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    log: str

    def rows_of(self, operation: str) -> list[dict[str, Any]]:
        """The rows of the trace holding a span named ``operation``."""
        (trace_id,) = {row["trace_id"] for row in self.rows if row["operation"] == operation}
        return [row for row in self.rows if row["trace_id"] == trace_id]

    def event_about(self, message: str) -> dict[str, Any]:
        (event,) = [
            event
            for event in self.events
            if any(
                value.get("value") == message
                for value in (event.get("exception") or {}).get("values") or []
            )
        ]
        return event


def _start(
    mode: str, layout: str, port: int, dsn: str, sentry_dsn: str, log: Path
) -> subprocess.Popen[bytes]:
    environ = clean_environ(
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
        OTEL_SERVICE_NAME=f"sentry-{mode}",
        OTEL_BSP_SCHEDULE_DELAY="200",
        SENTRY_TRACING_MODE=mode,
        SENTRY_TRACING_LAYOUT=layout,
        APP_SENTRY_DSN=sentry_dsn,
    )
    command = [str(BIN / "uvicorn"), "tests.sentry_tracing_app:app", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    if mode.startswith("instrument"):
        environ["SENTRY_DSN"] = sentry_dsn
        command = [str(BIN / "opentelemetry-instrument"), "--traces_exporter", "postgres", *command]
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=output, stderr=output)


@pytest.fixture(scope="module")
def served(
    pg_cluster: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], Served]]:
    """Every variant's service, started together, asked GET /fail and GET /manual, stopped."""
    logs = tmp_path_factory.mktemp("sentry-tracing")
    names = {variant: f"t_{uuid.uuid4().hex[:12]}" for variant in VARIANTS}
    dsns = {variant: pg_cluster.create_database(name) for variant, name in names.items()}
    receivers = {variant: SentryReceiver() for variant in VARIANTS}
    try:
        for receiver in receivers.values():
            receiver.__enter__()
        ports = {variant: free_port() for variant in VARIANTS}
        paths = {variant: logs / f"{variant[0]}-{variant[1]}.log" for variant in VARIANTS}
        services = {}
        for variant in VARIANTS:
            migrate(dsns[variant])
            services[variant] = _start(
                *variant, ports[variant], dsns[variant], receivers[variant].dsn, paths[variant]
            )
        try:
            for variant, service in services.items():
                url = f"http://127.0.0.1:{ports[variant]}"
                wait_healthy(url, service, paths[variant])
                # One connection each: uvicorn closes a connection whose request raised.
                assert 500 == httpx.get(f"{url}/fail", timeout=10.0).status_code
                assert 200 == httpx.get(f"{url}/manual", timeout=10.0).status_code
            for receiver in receivers.values():
                receiver.wait_for(lambda r: len(r.events) >= 2, timeout_s=10.0)
        finally:
            for service in services.values():
                service.send_signal(signal.SIGINT)
            for service in services.values():
                service.wait(timeout=30)
        results = {}
        for variant in VARIANTS:
            receiver = receivers[variant]
            results[variant] = Served(
                events=list(receiver.events),
                transactions=list(receiver.transactions),
                otlp_spans=list(receiver.spans),
                rows=query(dsns[variant], "SELECT * FROM trace_spans ORDER BY started_at"),
                log=paths[variant].read_text(),
            )
        yield results
    finally:
        for receiver in receivers.values():
            receiver.__exit__(None, None, None)
        for name in names.values():
            pg_cluster.drop_database(name)


def _ids(variant: tuple[str, str]) -> str:
    return "-".join(variant)


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_the_error_event_carries_the_ids_of_its_rows(
    variant: tuple[str, str], served: dict[tuple[str, str], Served]
) -> None:
    """The failing request's one error event names a stored span of that request (trace id
    and span id), and the application's own before_send still ran on it."""
    result = served[variant]
    event = result.event_about("card declined")
    rows = result.rows_of("checkout.charge")
    context = event["contexts"]["trace"]

    shown = [(row["operation"], row["trace_id"], row["span_id"]) for row in result.rows]
    assert rows[0]["trace_id"] == context["trace_id"], (context, shown)
    assert context["span_id"] in {row["span_id"] for row in rows}, (context, shown)
    if variant[0] != "instrument":  # the one entry where the application sets no hook
        assert "yes" == event.get("tags", {}).get("app_hook"), event.get("tags")


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_sentry_receives_each_request_under_its_rows_trace_id_only(
    variant: tuple[str, str], served: dict[tuple[str, str], Served]
) -> None:
    """No transaction or span reaches Sentry under a trace id that is not a stored trace's:
    a request never shows up in Sentry as a second trace. The spans Sentry does get for the
    failing request are its rows' spans."""
    result = served[variant]
    stored = {row["trace_id"] for row in result.rows}
    received = [t["contexts"]["trace"]["trace_id"] for t in result.transactions]
    received += [span["trace_id"] for span in result.otlp_spans]
    failing = result.rows_of("checkout.charge")[0]["trace_id"]

    strangers = [trace_id for trace_id in received if trace_id not in stored]
    assert [] == strangers, (
        [t["transaction"] for t in result.transactions],
        [(s["name"], s["trace_id"]) for s in result.otlp_spans],
        sorted(stored),
    )
    assert {row["span_id"] for row in result.rows_of("checkout.charge")} >= {
        span["span_id"] for span in result.otlp_spans if span["trace_id"] == failing
    }


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_a_sentry_transaction_started_by_hand_keeps_the_opentelemetry_ids(
    variant: tuple[str, str], served: dict[tuple[str, str], Served]
) -> None:
    """An error captured inside a Sentry transaction begun by hand inside an OpenTelemetry
    span carries that span's ids, not the transaction's."""
    result = served[variant]
    event = result.event_about("report failed")
    (span,) = [row for row in result.rows if row["operation"] == "report.build"]

    assert (span["trace_id"], span["span_id"]) == (
        event["contexts"]["trace"]["trace_id"],
        event["contexts"]["trace"]["span_id"],
    )


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] in APP_INITS_SENTRY], ids=_ids)
def test_turning_sentrys_own_tracing_off_is_said_once_naming_the_option(
    variant: tuple[str, str], served: dict[tuple[str, str], Served]
) -> None:
    """Where the application turned Sentry's own tracing on, one warning says it is off and
    names the option."""
    log = served[variant].log
    warnings = [line for line in log.splitlines() if "turns Sentry's own tracing off" in line]

    assert 1 == len(warnings), log
    assert "traces_sample_rate=1.0" in warnings[0]
