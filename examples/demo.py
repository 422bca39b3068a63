"""`make demo`: two instrumented services, real requests, and what landed in ``trace_spans``.

1. A PostgreSQL: ``DATABASE_URL`` when set, else a throwaway local cluster (removed after).
2. ``otel-pg migrate`` creates the table.
3. Service ``router`` runs under ``opentelemetry-instrument`` with no tracing code at all;
   service ``jobs`` calls ``otel_pg_exporter.configure()``. Both are uvicorn servers.
4. Real HTTP requests: jobs, a failing route, and a router -> jobs call that continues the
   trace across the two services.
5. The servers stop (flushing their spans) and every trace is printed as a tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from otel_pg_exporter.testing.devdb import DevCluster

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def database() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        print("Using DATABASE_URL's database.")
        yield url
        return
    with DevCluster() as cluster:
        cluster.start()
        print(f"Started a throwaway PostgreSQL on 127.0.0.1:{cluster.port} ({cluster.data_dir}).")
        yield cluster.create_database("demo")


def start_service(name: str, port: int, dsn: str, *, zero_code: bool, **env: str) -> Any:
    environ = {
        **os.environ,
        "ENABLE_DB_TRACING": "true",
        "OTEL_EXPORTER_POSTGRES_DSN": dsn,
        "OTEL_SERVICE_NAME": name,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **env,
    }
    server = [str(BIN / "uvicorn"), "examples.asgi_app:app", "--port", str(port)]
    server += ["--host", "127.0.0.1", "--no-access-log", "--log-level", "critical"]
    if zero_code:
        command = [str(BIN / "opentelemetry-instrument"), "--traces_exporter", "postgres"]
        command += server
    else:
        environ["EXAMPLE_CONFIGURE"] = "1"
        command = server
    print(f"  {name:<7} http://127.0.0.1:{port}  {' '.join(Path(c).name for c in command[:3])}")
    return subprocess.Popen(command, cwd=ROOT, env=environ)


def wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not start within {timeout_s:g} s")
        time.sleep(0.1)


def exception_of(span: dict[str, Any]) -> str:
    for event in span["events"] or []:
        if event["name"] == "exception":
            return str(event["attributes"].get("exception.type", ""))
    return ""


def print_tree(
    span: dict[str, Any], children: dict[str | None, list[dict[str, Any]]], depth: int
) -> None:
    label = f"{'  ' * depth}{span['operation']}"
    extra = f"execution_id={span['execution_id']}" if span["execution_id"] else ""
    if span["status"] == "error":
        extra += f"  error: {span['status_message'] or exception_of(span)}"
    print(
        f"  {label:<40} {span['service']:<7} {span['kind']:<8}"
        f" {span['duration_ms']:9.2f} ms  {span['status']:<5} {extra}"
    )
    for child in children.get(span["span_id"], []):
        print_tree(child, children, depth + 1)


def print_traces(dsn: str) -> None:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT trace_id, span_id, parent_span_id, service, operation, kind, status,"
            " status_message, duration_ms, execution_id, started_at, events"
            " FROM trace_spans ORDER BY started_at"
        ).fetchall()
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        traces[row["trace_id"]].append(row)
    print(f"\n{len(rows)} spans in {len(traces)} traces landed in trace_spans:\n")
    for trace_id, spans in traces.items():
        services = sorted({span["service"] for span in spans})
        print(f"trace {trace_id}  ({', '.join(services)})")
        ids = {span["span_id"] for span in spans}
        children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for span in spans:
            parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
            children[parent].append(span)

        for root in children[None]:
            print_tree(root, children, 0)
        print()
    print("Query them yourself, for example:")
    print("  SELECT operation, duration_ms, status FROM trace_spans WHERE execution_id = 202;")


def main() -> int:
    with database() as dsn:
        subprocess.run(
            [sys.executable, "-m", "otel_pg_exporter", "migrate", "--dsn", dsn], check=True
        )
        jobs_port, router_port = free_port(), free_port()
        jobs_url = f"http://127.0.0.1:{jobs_port}"
        router_url = f"http://127.0.0.1:{router_port}"
        print("Starting two instrumented services:")
        services = [
            start_service("jobs", jobs_port, dsn, zero_code=False),
            start_service("router", router_port, dsn, zero_code=True, DOWNSTREAM_URL=jobs_url),
        ]
        try:
            wait_healthy(jobs_url)
            wait_healthy(router_url)
            print("Sending requests:")
            for url in (
                f"{router_url}/jobs/101",
                f"{router_url}/fail",
                f"{router_url}/chain/202",
                f"{jobs_url}/jobs/303",
            ):
                # A new connection per request: a server may close one after an error.
                response = httpx.get(url, timeout=10.0)
                print(f"  GET {url} -> {response.status_code}")
        finally:
            for service in services:
                service.send_signal(signal.SIGINT)
            for service in services:
                service.wait(timeout=30)
        print_traces(dsn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
