"""The real ``opentelemetry-instrument`` CLI in subprocesses: scripts with no tracing setup of
their own get their spans, auto-instrumented ones included, into PostgreSQL."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import clean_environ, query

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"

# Nested spans through the OpenTelemetry API only: no otel_pg_exporter import anywhere.
NESTED_SPANS = """
import json, sys
from opentelemetry import trace
tracer = trace.get_tracer("tests.cli")
ids = {}
with tracer.start_as_current_span("outer") as outer:
    with tracer.start_as_current_span("middle") as middle:
        with tracer.start_as_current_span("inner") as inner:
            pass
for name, span in (("outer", outer), ("middle", middle), ("inner", inner)):
    ids[name] = format(span.get_span_context().span_id, "016x")
ids["trace_id"] = format(outer.get_span_context().trace_id, "032x")
ids["imported"] = "otel_pg_exporter" in sys.modules
print(json.dumps(ids))
"""


def run_instrumented(
    tmp_path: Path, script: str, flags: tuple[str, ...] = (), **env: str
) -> tuple[Any, str]:
    """``opentelemetry-instrument [flags] python script``; its last stdout line as JSON, and
    everything it printed."""
    path = tmp_path / f"script_{uuid.uuid4().hex[:8]}.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    completed = subprocess.run(
        [str(INSTRUMENT), *flags, sys.executable, str(path)],
        env=clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert 0 == completed.returncode, output
    assert "Failed to auto initialize" not in output
    lines = completed.stdout.strip().splitlines()
    assert lines, output
    return json.loads(lines[-1]), output


def spans_by_operation(dsn: str) -> dict[str, dict[str, Any]]:
    """Every stored span, keyed by its operation (the tests' names are unique)."""
    rows = query(dsn, "SELECT * FROM trace_spans")
    by_operation = {row["operation"]: row for row in rows}
    assert len(rows) == len(by_operation), [row["operation"] for row in rows]
    return by_operation


def assert_nested(ids: dict[str, Any], dsn: str, service: str) -> None:
    """The three nested spans of NESTED_SPANS are stored with their parent links."""
    spans = spans_by_operation(dsn)
    assert ["inner", "middle", "outer"] == sorted(spans)
    expected = {
        "outer": (ids["trace_id"], ids["outer"], None, service),
        "middle": (ids["trace_id"], ids["middle"], ids["outer"], service),
        "inner": (ids["trace_id"], ids["inner"], ids["middle"], service),
    }
    actual = {
        name: (row["trace_id"], row["span_id"], row["parent_span_id"], row["service"])
        for name, row in spans.items()
    }
    assert expected == actual


def test_environment_variables_alone_export_nested_spans(tmp_path: Path, dsn: str) -> None:
    """OTEL_TRACES_EXPORTER=postgres stores a plain script's nested spans with parent links."""
    ids, _ = run_instrumented(
        tmp_path,
        NESTED_SPANS,
        OTEL_TRACES_EXPORTER="postgres",
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
        OTEL_SERVICE_NAME="cli-env",
    )
    assert_nested(ids, dsn, "cli-env")


def test_command_line_flags_export_nested_spans(tmp_path: Path, dsn: str) -> None:
    """``--traces_exporter postgres --exporter_postgres_dsn DSN`` works like the variables."""
    ids, _ = run_instrumented(
        tmp_path,
        NESTED_SPANS,
        (
            "--traces_exporter",
            "postgres",
            "--exporter_postgres_dsn",
            dsn,
            "--service_name",
            "cli-flags",
        ),
        ENABLE_DB_TRACING="true",
    )
    assert_nested(ids, dsn, "cli-flags")


def test_log_records_carry_the_span_ids(tmp_path: Path, dsn: str) -> None:
    """Under the CLI, ``%(trace_id)s %(span_id)s`` in a log format show the stored span's ids."""
    result, _ = run_instrumented(
        tmp_path,
        """
        import io, json, logging
        from opentelemetry import trace
        stream = io.StringIO()
        logging.basicConfig(level=logging.INFO, stream=stream,
                            format="%(trace_id)s|%(span_id)s|%(message)s")
        log = logging.getLogger("script")
        log.info("before")
        with trace.get_tracer("tests.cli").start_as_current_span("logged"):
            log.info("during")
        print(json.dumps(stream.getvalue().splitlines()))
        """,
        OTEL_TRACES_EXPORTER="postgres",
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
    )
    row = spans_by_operation(dsn)["logged"]
    assert ["||before", f"{row['trace_id']}|{row['span_id']}|during"] == result


def test_configure_under_the_cli_exports_each_span_once(tmp_path: Path, dsn: str) -> None:
    """A script that also calls configure() gets the CLI's pipeline, not a second exporter."""
    result, _ = run_instrumented(
        tmp_path,
        """
        import json
        from opentelemetry import trace
        import otel_pg_exporter
        from otel_pg_exporter import PostgresSpanExporter
        handle = otel_pg_exporter.configure()
        tracer = trace.get_tracer("tests.cli")
        for index in range(4):
            with tracer.start_as_current_span(f"span-{index}"):
                pass
        handle.force_flush()
        processors = trace.get_tracer_provider()._active_span_processor._span_processors
        stats = handle.stats()
        print(json.dumps({
            "postgres_processors": sum(
                isinstance(getattr(p, "span_exporter", None), PostgresSpanExporter)
                for p in processors),
            "exported": stats["spans_exported"],
            "duplicates": stats["spans_duplicate"],
        }))
        """,
        OTEL_TRACES_EXPORTER="postgres",
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
    )
    assert {"postgres_processors": 1, "exported": 4, "duplicates": 0} == result
    assert ["span-0", "span-1", "span-2", "span-3"] == sorted(spans_by_operation(dsn))


def test_switch_unset_under_the_cli_runs_the_script_and_writes_nothing(
    tmp_path: Path, dsn: str
) -> None:
    """Without ENABLE_DB_TRACING the script runs as usual and the table stays empty."""
    ids, output = run_instrumented(
        tmp_path,
        NESTED_SPANS,
        OTEL_TRACES_EXPORTER="postgres",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
    )
    assert {"outer", "middle", "inner", "trace_id", "imported"} == set(ids)
    assert [] == query(dsn, "SELECT operation FROM trace_spans")
    assert "Traceback" not in output


def test_auto_instrumented_queries_are_stored_but_not_the_exporters_own(
    tmp_path: Path, dsn: str
) -> None:
    """psycopg's instrumentation records the app's query; the exporter's own SQL stays untraced."""
    result, _ = run_instrumented(
        tmp_path,
        """
        import json, os
        import psycopg
        from opentelemetry import trace
        tracer = trace.get_tracer("tests.cli")
        with tracer.start_as_current_span("app.work") as span:
            with psycopg.connect(os.environ["APP_DSN"]) as conn:
                answer = conn.execute("select 42").fetchone()[0]
        # A second batch, written while the pool's connection is already open.
        with tracer.start_as_current_span("app.more"):
            pass
        print(json.dumps({"answer": answer,
                          "span_id": format(span.get_span_context().span_id, "016x")}))
        """,
        OTEL_TRACES_EXPORTER="postgres",
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
        APP_DSN=dsn,
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    assert 42 == result["answer"]
    rows = query(dsn, "SELECT operation, kind, parent_span_id, metadata FROM trace_spans")
    clients = [row for row in rows if row["kind"] == "client"]
    assert [("select 42", result["span_id"])] == [
        (row["metadata"].get("db.statement"), row["parent_span_id"]) for row in clients
    ]
    own_sql = ("trace_spans", "copy", "otel_pg_exporter_stage", "set_config", "temporary")
    leaked = [
        row
        for row in rows
        if any(word in (row["operation"] + json.dumps(row["metadata"])).lower() for word in own_sql)
    ]
    assert [] == leaked
    assert {"app.work", "app.more"} == {row["operation"] for row in rows if row["kind"] != "client"}


@pytest.fixture(scope="module")
def distro_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """opentelemetry-distro installed into a throwaway folder (put on PYTHONPATH), or a skip."""
    version = importlib.metadata.version("opentelemetry-instrumentation")
    target = tmp_path_factory.mktemp("distro")
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--target", str(target), f"opentelemetry-distro=={version}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        pytest.skip(
            f"could not pip install opentelemetry-distro=={version} (offline?): "
            f"{completed.stderr.strip()[-300:]}"
        )
    return target


@pytest.mark.parametrize("configurator", ["postgres", "configurator"], ids=["ours", "distro"])
def test_export_works_beside_opentelemetry_distro(
    tmp_path: Path, dsn: str, distro_path: Path, configurator: str
) -> None:
    """With the distro installed, OTEL_TRACES_EXPORTER=postgres exports under either configurator
    (the distro's defaults its metrics and logs to OTLP, which is not installed: turned off)."""
    result, _ = run_instrumented(
        tmp_path,
        """
        import io, json, logging
        from opentelemetry import trace
        stream = io.StringIO()
        logging.basicConfig(level=logging.INFO, stream=stream, format="%(trace_id)s")
        with trace.get_tracer("tests.cli").start_as_current_span("beside-distro"):
            logging.getLogger("script").info("x")
        print(json.dumps(stream.getvalue().strip()))
        """,
        PYTHONPATH=str(distro_path),
        OTEL_PYTHON_CONFIGURATOR=configurator,
        OTEL_TRACES_EXPORTER="postgres",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
    )
    row = spans_by_operation(dsn)["beside-distro"]
    assert row["trace_id"] == result
