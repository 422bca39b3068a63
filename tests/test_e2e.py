"""End to end: the example services under uvicorn, real HTTP requests, real PostgreSQL.

Service ``jobs`` calls ``configure()`` (EXAMPLE_CONFIGURE=1); service ``router`` runs under
``opentelemetry-instrument --traces_exporter postgres`` with no tracing code, and calls
``jobs`` over HTTP with the trace context propagated.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import clean_environ, query, wait_until

from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import PgServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_service(
    name: str, port: int, dsn: str, log: Path, *, zero_code: bool, **env: str
) -> subprocess.Popen[bytes]:
    """examples.asgi_app under uvicorn, traced by configure() or by opentelemetry-instrument."""
    environ = clean_environ(
        ENABLE_DB_TRACING="true",
        OTEL_EXPORTER_POSTGRES_DSN=dsn,
        OTEL_SERVICE_NAME=name,
        OTEL_BSP_SCHEDULE_DELAY="200",
        **env,
    )
    command = [str(BIN / "uvicorn"), "examples.asgi_app:app", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    if zero_code:
        command = [str(BIN / "opentelemetry-instrument"), "--traces_exporter", "postgres"]
        command += [str(BIN / "uvicorn"), "examples.asgi_app:app", "--port", str(port)]
        command += ["--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    else:
        environ["EXAMPLE_CONFIGURE"] = "1"
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=output, stderr=output)


def wait_healthy(url: str, service: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``/health`` until the service answers; fail with its log if it dies or hangs."""

    def answers() -> bool:
        if service.poll() is not None:
            pytest.fail(f"{url} exited with {service.returncode}:\n{log.read_text()}")
        try:
            return 200 == httpx.get(f"{url}/health", timeout=1.0).status_code
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 30.0, message=f"{url} to become healthy")
    except AssertionError as timed_out:
        pytest.fail(f"{timed_out}\n{log.read_text()}")


@pytest.fixture(scope="module")
def traces(
    pg_cluster: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[dict[str, Any]], dict[str, int], str]]:
    """Both services run, get /jobs/7, /fail and /chain/9, stop on SIGINT: the stored rows,
    the HTTP status per path, and the services' combined output."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name)
    try:
        migrate(dsn)
        yield run_services(dsn, tmp_path_factory.mktemp("e2e"))
    finally:
        pg_cluster.drop_database(name)


def run_services(dsn: str, logs: Path) -> tuple[list[dict[str, Any]], dict[str, int], str]:
    """Start both services, send the requests, stop them; what the fixture above yields."""
    jobs_port, router_port = free_port(), free_port()
    jobs_url = f"http://127.0.0.1:{jobs_port}"
    router_url = f"http://127.0.0.1:{router_port}"
    services = {
        "jobs": start_service("jobs", jobs_port, dsn, logs / "jobs.log", zero_code=False),
        "router": start_service(
            "router", router_port, dsn, logs / "router.log", zero_code=True, DOWNSTREAM_URL=jobs_url
        ),
    }
    statuses: dict[str, int] = {}
    try:
        wait_healthy(jobs_url, services["jobs"], logs / "jobs.log")
        wait_healthy(router_url, services["router"], logs / "router.log")
        for url in (f"{router_url}/jobs/7", f"{jobs_url}/fail", f"{router_url}/chain/9"):
            # A new connection per request: a server may close one after an error.
            with httpx.Client(timeout=10.0) as client:
                statuses[url.split("/", 3)[3]] = client.get(url).status_code
    finally:
        for service in services.values():
            service.send_signal(signal.SIGINT)
        exit_codes = {key: service.wait(timeout=30) for key, service in services.items()}
    output = "\n".join(
        f"--- {key}.log ---\n{(logs / f'{key}.log').read_text()}" for key in services
    )
    assert {"jobs": 0, "router": 0} == exit_codes, output
    return query(dsn, "SELECT * FROM trace_spans ORDER BY started_at"), statuses, output


def trace_of(rows: list[dict[str, Any]], server_operation: str) -> list[dict[str, Any]]:
    """Every span of the one trace whose server span is named ``server_operation``."""
    servers = [r for r in rows if r["operation"] == server_operation and r["kind"] == "server"]
    assert 1 == len(servers), [r["operation"] for r in rows]
    return [r for r in rows if r["trace_id"] == servers[0]["trace_id"]]


def one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The single span with these column values."""
    found = [s for s in spans if all(s[key] == value for key, value in match.items())]
    assert 1 == len(found), (match, [(s["service"], s["operation"]) for s in spans])
    return found[0]


def test_requests_answer_as_the_example_says(
    traces: tuple[list[dict[str, Any]], dict[str, int], str],
) -> None:
    """The job and chain routes answer 200 and the failing route 500."""
    _, statuses, output = traces
    assert {"jobs/7": 200, "fail": 500, "chain/9": 200} == statuses, output


def test_job_trace_is_a_tree_with_the_execution_id(
    traces: tuple[list[dict[str, Any]], dict[str, int], str],
) -> None:
    """GET /jobs/7: server span -> job.run -> fetch, transform, store, all execution_id 7."""
    rows, _, _ = traces
    spans = trace_of(rows, "GET /jobs/7")
    server = one(spans, operation="GET /jobs/7", kind="server")
    job = one(spans, operation="job.run")
    steps = sorted((s for s in spans if s["parent_span_id"] == job["span_id"]), key=by_start)
    assert "router" == server["service"]
    assert (server["span_id"], 7) == (job["parent_span_id"], job["execution_id"])
    assert ["job.fetch", "job.transform", "job.store"] == [s["operation"] for s in steps]
    assert [7, 7, 7] == [s["execution_id"] for s in steps]
    assert {"router"} == {s["service"] for s in spans}


def by_start(span: dict[str, Any]) -> Any:
    """Sort key: start time."""
    return span["started_at"]


def test_failing_route_records_the_error(
    traces: tuple[list[dict[str, Any]], dict[str, int], str],
) -> None:
    """GET /fail: the server span has status error; model.predict holds the exception event."""
    rows, _, _ = traces
    spans = trace_of(rows, "GET /fail")
    server = one(spans, operation="GET /fail", kind="server")
    assert ("jobs", "error", 500) == (
        server["service"],
        server["status"],
        server["metadata"]["http.status_code"],
    )
    predict = one(spans, operation="model.predict")
    assert (server["span_id"], "error") == (predict["parent_span_id"], predict["status"])
    attributes = exception_attributes(predict)
    assert "examples.asgi_app.ModelNotLoadedError" == attributes["exception.type"]
    assert "inference model is not loaded" == attributes["exception.message"]


def test_failing_route_server_span_has_the_exception_event(
    traces: tuple[list[dict[str, Any]], dict[str, int], str],
) -> None:
    """GET /fail: the server span itself carries an exception event naming ModelNotLoadedError,
    as the example's ``fail`` docstring promises."""
    rows, _, _ = traces
    server = one(trace_of(rows, "GET /fail"), operation="GET /fail", kind="server")
    assert "examples.asgi_app.ModelNotLoadedError" == exception_attributes(server).get(
        "exception.type"
    )


def exception_attributes(span: dict[str, Any]) -> dict[str, Any]:
    """The attributes of the span's single exception event ({} when it has none)."""
    exceptions = [e for e in span["events"] or [] if e["name"] == "exception"]
    assert len(exceptions) <= 1, exceptions
    return dict(exceptions[0]["attributes"]) if exceptions else {}


def test_chain_trace_spans_both_services(
    traces: tuple[list[dict[str, Any]], dict[str, int], str],
) -> None:
    """GET /chain/9: one trace across router and jobs; jobs' server span hangs under the client."""
    rows, _, _ = traces
    spans = trace_of(rows, "GET /chain/9")
    router_server = one(spans, operation="GET /chain/9", kind="server")
    client = one(spans, operation="downstream.run_job")
    jobs_server = one(spans, operation="GET /jobs/9", kind="server")
    job = one(spans, operation="job.run")
    assert {"router", "jobs"} == {s["service"] for s in spans}
    assert ("router", "client", router_server["span_id"]) == (
        client["service"],
        client["kind"],
        client["parent_span_id"],
    )
    assert ("jobs", client["span_id"]) == (jobs_server["service"], jobs_server["parent_span_id"])
    assert ("jobs", jobs_server["span_id"], 9) == (
        job["service"],
        job["parent_span_id"],
        job["execution_id"],
    )


def test_every_span_is_stored_once_and_every_parent_is_stored(
    traces: tuple[list[dict[str, Any]], dict[str, int], str],
) -> None:
    """No span appears twice, each trace has one root, and every parent id is a stored span."""
    rows, _, _ = traces
    assert [] == [
        key for key, n in Counter((r["trace_id"], r["span_id"]) for r in rows).items() if n > 1
    ]
    ids = {(r["trace_id"], r["span_id"]) for r in rows}
    orphans = [
        r["operation"]
        for r in rows
        if r["parent_span_id"] and (r["trace_id"], r["parent_span_id"]) not in ids
    ]
    assert [] == orphans
    roots = Counter(r["trace_id"] for r in rows if r["parent_span_id"] is None)
    assert {1} == set(roots.values())
    assert 3 == len(roots)
    signatures = Counter(
        (r["trace_id"], r["service"], r["operation"], r["parent_span_id"], r["started_at"])
        for r in rows
    )
    assert [] == [key for key, n in signatures.items() if n > 1]


def test_worker_example_writes_one_trace_per_job(migrated_dsn: str) -> None:
    """``python examples/worker.py 3`` stores jobs 1001..1003; the last one is an error."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker.py"), "3"],
        env=clean_environ(ENABLE_DB_TRACING="true", OTEL_EXPORTER_POSTGRES_DSN=migrated_dsn),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr
    jobs = query(
        migrated_dsn,
        "SELECT trace_id, execution_id, status, service FROM trace_spans"
        " WHERE operation = 'job.execute' ORDER BY execution_id",
    )
    assert [(1001, "unset"), (1002, "unset"), (1003, "error")] == [
        (job["execution_id"], job["status"]) for job in jobs
    ]
    assert {"example-worker"} == {job["service"] for job in jobs}
    assert 3 == len({job["trace_id"] for job in jobs})
    steps = query(
        migrated_dsn,
        "SELECT execution_id, operation, status FROM trace_spans"
        " WHERE operation <> 'job.execute' ORDER BY execution_id, started_at",
    )
    expected = [
        (execution_id, f"job.{step}", "unset")
        for execution_id in (1001, 1002)
        for step in ("load_inputs", "infer", "save_outputs")
    ] + [(1003, "job.load_inputs", "unset"), (1003, "job.infer", "error")]
    assert expected == [(s["execution_id"], s["operation"], s["status"]) for s in steps]
    for job in jobs:
        trace_ids = query(
            migrated_dsn,
            f"SELECT DISTINCT trace_id FROM trace_spans WHERE execution_id = {job['execution_id']}",
        )
        assert [job["trace_id"]] == [row["trace_id"] for row in trace_ids]
