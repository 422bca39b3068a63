"""configure(): the one call, run in subprocesses because the global tracer provider can be set
only once per process; bad arguments are checked in-process (they raise before any setup)."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from support import clean_environ, query, wait_until

import otel_pg_exporter
from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter.testing.devdb import PgServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Zebra-Secret-77"

# Every script starts with these imports and ends by printing one JSON line: its findings.
PRELUDE = """\
import json, logging, os, sys, time
from opentelemetry import trace
import otel_pg_exporter
from otel_pg_exporter import PostgresSpanExporter
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="LOG %(levelname)s %(name)s %(message)s")
tracer = trace.get_tracer("tests.test_configure")

def make_spans(count, name="work"):
    with tracer.start_as_current_span(name + ".root"):
        for index in range(count - 1):
            with tracer.start_as_current_span(name + ".child", attributes={"index": index}):
                pass

def postgres_processors(provider):
    processors = provider._active_span_processor._span_processors
    return sum(isinstance(getattr(p, "span_exporter", None), PostgresSpanExporter)
               for p in processors)
"""


def run_script(body: str, **env: str) -> tuple[Any, str]:
    """Run PRELUDE + ``body`` in a fresh interpreter; its last stdout line as JSON, and stderr."""
    script = PRELUDE + textwrap.dedent(body)
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{completed.stderr}"
    return json.loads(lines[-1]), completed.stderr + completed.stdout


def count_rows(dsn: str) -> int:
    """How many spans are stored."""
    return int(query(dsn, "SELECT count(*) AS n FROM trace_spans")[0]["n"])


def warnings_about(output: str, word: str) -> list[str]:
    """The WARNING lines of a script's log output that mention ``word``."""
    return [line for line in output.splitlines() if "LOG WARNING" in line and word in line]


class ConnectionCounter:
    """A real TCP listener on 127.0.0.1 that counts (and at once closes) every connection."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def dsn(self) -> str:
        return f"postgresql://nobody@127.0.0.1:{self.port}/nothing?connect_timeout=2"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> int:
        """Stop serving, count connections still in the backlog, and return the total."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sock.setblocking(False)
            while True:
                try:
                    conn, _ = self._sock.accept()
                except BlockingIOError:
                    break
                self.accepted += 1
                conn.close()
            self._sock.close()
        return self.accepted


def configure_outcome(arguments: str, **env: str) -> str:
    """ "configured", or the exception configure(enabled=True, <arguments>) raised."""
    result, _ = run_script(
        f"""
        try:
            handle = otel_pg_exporter.configure(enabled=True, dsn="host=unused", {arguments})
        except Exception as exc:
            print(json.dumps(f"{{type(exc).__name__}}: {{exc}}"))
        else:
            print(json.dumps("configured"))
        """,
        **env,
    )
    return str(result)


@pytest.fixture
def listener() -> Iterator[ConnectionCounter]:
    """A TCP listener standing in for a database that must never be contacted."""
    with ConnectionCounter() as counter:
        yield counter


@pytest.mark.slow
def test_configure_exports_spans_with_the_service_name(dsn: str) -> None:
    """configure() sends global-tracer spans to the table; flush, stats and a double shutdown."""
    result, _ = run_script(
        """
        handle = otel_pg_exporter.configure(enabled=True, dsn=os.environ["DSN"],
                                            service_name="svc")
        make_spans(3)
        flushed = handle.force_flush()
        import psycopg
        with psycopg.connect(os.environ["DSN"]) as conn:
            rows = conn.execute("SELECT count(*) FROM trace_spans").fetchone()[0]
        stats = handle.stats()
        handle.shutdown()
        handle.shutdown()
        print(json.dumps({"flushed": flushed, "rows_after_flush": rows, "stats": stats,
                          "enabled": handle.enabled}))
        """,
        DSN=dsn,
    )
    expected_stats = {
        "enabled": True,
        "spans_exported": 3,
        "spans_duplicate": 0,
        "spans_rejected": 0,
        "spans_failed": 0,
        "spans_spooled": 0,
        "export_calls": 1,
        "export_failures": 0,
    }
    stats = result.pop("stats")
    assert {"flushed": True, "rows_after_flush": 3, "enabled": True} == result
    assert expected_stats == {key: stats[key] for key in expected_stats}
    assert [{"service": "svc", "n": 3}] == query(
        dsn, "SELECT service, count(*) AS n FROM trace_spans GROUP BY service"
    )


@pytest.mark.slow
def test_spans_are_flushed_at_interpreter_exit(dsn: str) -> None:
    """Spans still queued when the program ends normally are written without any flush call."""
    result, _ = run_script(
        """
        handle = otel_pg_exporter.configure(dsn=os.environ["DSN"])
        make_spans(4)
        print(json.dumps(handle.enabled))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="true",
    )
    assert True is result
    assert 4 == count_rows(dsn)


@pytest.mark.slow
def test_second_configure_warns_and_exports_each_span_once(dsn: str) -> None:
    """A second configure() warns, returns the first handle and adds no second exporter."""
    result, output = run_script(
        """
        first = otel_pg_exporter.configure(dsn=os.environ["DSN"], service_name="svc")
        second = otel_pg_exporter.configure(dsn=os.environ["DSN"], service_name="other")
        make_spans(5)
        first.force_flush()
        stats = first.stats()
        print(json.dumps({"same": first is second,
                          "processors": postgres_processors(trace.get_tracer_provider()),
                          "exported": stats["spans_exported"],
                          "duplicates": stats["spans_duplicate"]}))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="true",
    )
    assert {"same": True, "processors": 1, "exported": 5, "duplicates": 0} == result
    assert 1 == len(warnings_about(output, "already"))
    assert 5 == count_rows(dsn)


@pytest.mark.slow
def test_configure_joins_an_existing_sdk_provider(dsn: str) -> None:
    """An SDK provider installed first stays global and feeds both its exporter and PostgreSQL."""
    result, _ = run_script(
        """
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter)
        memory = InMemorySpanExporter()
        mine = TracerProvider(resource=Resource.create({"service.name": "mine"}))
        mine.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(mine)
        handle = otel_pg_exporter.configure(dsn=os.environ["DSN"])
        make_spans(3)
        handle.force_flush()
        print(json.dumps({"in_memory": len(memory.get_finished_spans()),
                          "still_mine": trace.get_tracer_provider() is mine,
                          "handle_provider_is_mine": handle.provider is mine}))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="true",
    )
    assert {"in_memory": 3, "still_mine": True, "handle_provider_is_mine": True} == result
    assert [{"service": "mine", "n": 3}] == query(
        dsn, "SELECT service, count(*) AS n FROM trace_spans GROUP BY service"
    )


OFF_SCRIPT = """
handle = otel_pg_exporter.configure(dsn=os.environ["LISTENER_DSN"], **ARGUMENTS)
make_spans(3)
flushed = handle.force_flush()
handle.shutdown()
print(json.dumps({"enabled": handle.enabled, "flushed": flushed}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("switch", "arguments"),
    [
        (None, "{}"),
        ("false", "{}"),
        ("maybe", "{}"),
        ("true", "{'enabled': False}"),
    ],
    ids=["unset", "false", "garbage", "argument-overrides-true"],
)
def test_tracing_off_never_connects(
    listener: ConnectionCounter, switch: str | None, arguments: str
) -> None:
    """Switched off, configure() returns a disabled handle, says so once, opens no connection."""
    env = {"LISTENER_DSN": listener.dsn}
    if switch is not None:
        env["ENABLE_DB_TRACING"] = switch
    result, output = run_script(OFF_SCRIPT.replace("ARGUMENTS", arguments), **env)
    assert {"enabled": False, "flushed": True} == result
    assert 0 == listener.close()
    expected_warnings = 1 if switch == "maybe" else 0
    assert expected_warnings == len(warnings_about(output, "ENABLE_DB_TRACING"))
    info = [line for line in output.splitlines() if "LOG INFO" in line]
    assert 1 == sum("ENABLE_DB_TRACING" in line for line in info), output


@pytest.mark.slow
def test_the_connection_probe_sees_an_enabled_exporter(listener: ConnectionCounter) -> None:
    """Control for the test above: with the switch on, the same script does reach the listener."""
    result, _ = run_script(
        OFF_SCRIPT.replace("ARGUMENTS", "{}"),
        LISTENER_DSN=listener.dsn,
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_TIMEOUT="1",
    )
    # The listener is no PostgreSQL: the spans are not stored, and the flush says so.
    assert {"enabled": True, "flushed": False} == result
    assert 1 <= listener.close()


@pytest.mark.slow
def test_enabled_argument_overrides_an_off_environment(dsn: str) -> None:
    """configure(enabled=True) writes spans although ENABLE_DB_TRACING=false."""
    result, _ = run_script(
        """
        handle = otel_pg_exporter.configure(enabled=True, dsn=os.environ["DSN"])
        make_spans(2)
        handle.force_flush()
        print(json.dumps(handle.enabled))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="false",
    )
    assert True is result
    assert 2 == count_rows(dsn)


@pytest.mark.slow
def test_switch_values() -> None:
    """1/true/yes/on in any case enable tracing; 0/false/no/off and empty leave it off."""
    values = ["1", "true", "yes", "on", "TRUE", "On", " yes ", "0", "false", "no", "OFF", ""]
    result, _ = run_script(
        f"""
        from otel_pg_exporter._configure import reset_for_tests
        seen = {{}}
        for value in {values!r}:
            os.environ["ENABLE_DB_TRACING"] = value
            seen[value] = otel_pg_exporter.configure(dsn="postgresql://nobody@127.0.0.1:1/x").enabled
            reset_for_tests()
        print(json.dumps(seen))
        """
    )
    expected = {value: value.strip().lower() in {"1", "true", "yes", "on"} for value in values}
    assert expected == result


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"timeout": "5"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"pool_max": 0}, "pool_max"),
        ({"pool_max": True}, "pool_max"),
        ({"pool_max": 2.5}, "pool_max"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"service_name": ""}, "service_name"),
        ({"service_name": 5}, "service_name"),
        ({"max_queue_size": -1}, "max_queue_size"),
        ({"max_export_batch_size": "10"}, "max_export_batch_size"),
        ({"schedule_delay_millis": 0}, "schedule_delay_millis"),
        ({"dsn": 5432}, "dsn"),
        ({"table": ""}, "table"),
        ({"schema": 7}, "schema"),
        ({"log_correlation": "yes"}, "log_correlation"),
        ({"sampler": "always_off"}, "sampler"),
        ({"max_value_chars": 10}, "max_value_chars"),
        ({"resource_attributes": ["not", "a", "mapping"]}, "resource_attributes"),
        ({"resource_attributes": 5}, "resource_attributes"),
    ],
    ids=lambda value: repr(value) if isinstance(value, dict) else None,
)
def test_bad_explicit_argument_raises_value_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, arguments: dict[str, Any], parameter: str
) -> None:
    """A wrong type or range in an explicit argument raises ValueError with the parameter name."""
    # Switched off, so a check that wrongly passes leaves no global provider in this process.
    monkeypatch.setenv("ENABLE_DB_TRACING", "false")
    with pytest.raises(ValueError, match=parameter):
        otel_pg_exporter.configure(**arguments)


@pytest.mark.slow
def test_a_valid_max_queue_size_alone_is_accepted() -> None:
    """configure(max_queue_size=100) works: the default batch size must not make it invalid."""
    assert "configured" == configure_outcome("max_queue_size=100")


@pytest.mark.slow
def test_bad_environment_values_fall_back_to_defaults_without_showing_the_password(
    pg_cluster: PgServer, dsn: str
) -> None:
    """Unparsable timeout and pool size variables are reported, defaults used, password hidden."""
    dbname = dsn.rsplit("/", 1)[1]
    # Trust authentication accepts any password, so this one only tests that it stays hidden.
    dsn_with_password = pg_cluster.dsn_for(dbname, user="postgres", password=SECRET)
    result, output = run_script(
        """
        handle = otel_pg_exporter.configure()
        make_spans(2)
        handle.force_flush()
        print(repr(handle))
        settings = handle.exporter.settings
        print(json.dumps({"timeout_s": settings.timeout_s, "pool_max": settings.pool_max,
                          "exported": handle.stats()["spans_exported"]}))
        """,
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn_with_password,
        OTEL_EXPORTER_POSTGRES_TIMEOUT="abc",
        OTEL_EXPORTER_POSTGRES_POOL_MAX="-3",
    )
    assert {"timeout_s": 10.0, "pool_max": 2, "exported": 2} == result
    assert 1 == len(warnings_about(output, ev.OTEL_EXPORTER_POSTGRES_TIMEOUT))
    assert 1 == len(warnings_about(output, ev.OTEL_EXPORTER_POSTGRES_POOL_MAX))
    assert SECRET not in output
    assert 2 == count_rows(dsn)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=4096",
        "OTEL_BSP_MAX_QUEUE_SIZE=0",
        "OTEL_BSP_SCHEDULE_DELAY=-5",
        "OTEL_BSP_SCHEDULE_DELAY=soon",
    ],
)
def test_bad_batch_processor_variables_never_stop_the_application(variable: str) -> None:
    """A bad OTEL_BSP_* value makes configure() fall back to defaults instead of raising."""
    name, value = variable.split("=")
    assert "configured" == configure_outcome("", **{name: value})


@pytest.mark.slow
def test_standard_service_and_resource_variables_are_honoured(dsn: str) -> None:
    """OTEL_SERVICE_NAME fills the service column and OTEL_RESOURCE_ATTRIBUTES the resource."""
    run_script(
        """
        handle = otel_pg_exporter.configure(dsn=os.environ["DSN"])
        make_spans(2)
        handle.force_flush()
        print(json.dumps(None))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="true",
        OTEL_SERVICE_NAME="billing",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging,team=payments",
    )
    rows = query(dsn, "SELECT service, resource FROM trace_spans")
    assert ["billing", "billing"] == [row["service"] for row in rows]
    for row in rows:
        assert "staging" == row["resource"]["deployment.environment"]
        assert "payments" == row["resource"]["team"]
        assert "billing" == row["resource"]["service.name"]


@pytest.mark.slow
def test_service_name_argument_beats_otel_service_name(dsn: str) -> None:
    """An explicit service_name wins over OTEL_SERVICE_NAME (argument > variable)."""
    run_script(
        """
        handle = otel_pg_exporter.configure(dsn=os.environ["DSN"], service_name="explicit")
        make_spans(1)
        handle.force_flush()
        print(json.dumps(None))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="true",
        OTEL_SERVICE_NAME="from-env",
    )
    assert [{"service": "explicit"}] == query(dsn, "SELECT service FROM trace_spans")


@pytest.mark.slow
def test_always_off_sampler_from_the_environment_stores_nothing(dsn: str) -> None:
    """OTEL_TRACES_SAMPLER=always_off: spans are created but none is stored."""
    result, _ = run_script(
        """
        handle = otel_pg_exporter.configure(dsn=os.environ["DSN"])
        make_spans(3)
        handle.force_flush()
        print(json.dumps(handle.stats()["export_calls"]))
        """,
        DSN=dsn,
        ENABLE_DB_TRACING="true",
        OTEL_TRACES_SAMPLER="always_off",
    )
    assert 0 == result
    assert 0 == count_rows(dsn)


@pytest.mark.slow
def test_schedule_delay_variable_exports_while_the_process_runs(dsn: str) -> None:
    """OTEL_BSP_SCHEDULE_DELAY=200: spans reach the table with no flush, process still alive."""
    script = PRELUDE + textwrap.dedent(
        """
        handle = otel_pg_exporter.configure(dsn=os.environ["DSN"])
        make_spans(2)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        env=clean_environ(DSN=dsn, ENABLE_DB_TRACING="true", OTEL_BSP_SCHEDULE_DELAY="200"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            assert "ready" == process.stdout.readline().strip()
            wait_until(
                lambda: count_rows(dsn) >= 2,
                3.0,
                message="both spans in trace_spans with no flush",
            )
            assert 2 == count_rows(dsn)
            assert process.poll() is None
        finally:
            process.stdin.close()
            process.wait(timeout=30)
    assert 0 == process.returncode


def test_environment_variable_constants_name_themselves_and_document_a_default() -> None:
    """Every constant of environment_variables equals its own name and its docstring a default."""
    source = Path(ev.__file__).read_text(encoding="utf-8")
    body = ast.parse(source).body
    documented: dict[str, str] = {}
    for statement, following in zip(body, [*body[1:], None], strict=True):
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            doc = ""
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                doc = str(following.value.value)
            documented[statement.targets[0].id] = doc
    constants = {name: getattr(ev, name) for name in dir(ev) if name.isupper()}
    assert sorted(constants) == sorted(documented)
    assert {name: name for name in constants} == constants
    assert [] == [name for name, doc in documented.items() if "Default" not in doc]
    assert [] == [name for name, doc in documented.items() if f"envvar:: {name}" not in doc]
