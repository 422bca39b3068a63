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


def otel_pg(dsn: str, *args: str) -> None:
    """Run an ``otel-pg`` command against the demo's database, showing the command."""
    print(f"\n$ otel-pg {' '.join(args)}")
    subprocess.run(
        [sys.executable, "-m", "otel_pg_exporter", *args, "--dsn", dsn, "--width", "110"],
        check=True,
    )


def show_traces(dsn: str) -> None:
    """What landed, then the diagnosis: the cross-service trace and the failed request as
    waterfalls, and the errors of the last hour."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        traces = conn.execute(
            "SELECT trace_id, count(*) AS spans, string_agg(DISTINCT service, ', ') AS services,"
            " (array_agg(operation ORDER BY started_at))[1] AS root,"
            " bool_or(status = 'error') AS failed"
            " FROM trace_spans GROUP BY trace_id ORDER BY min(started_at)"
        ).fetchall()
    print(
        f"\n{sum(t['spans'] for t in traces)} spans in {len(traces)} traces landed in trace_spans:"
    )
    for trace in traces:
        flag = "  error" if trace["failed"] else ""
        print(
            f"  {trace['trace_id']}  {trace['spans']:3d} spans  {trace['root']:<16}"
            f" ({trace['services']}){flag}"
        )
    chain = next(t["trace_id"] for t in traces if "chain" in t["root"])
    failed = next(t["trace_id"] for t in traces if t["failed"] and "fail" in t["root"])
    otel_pg(dsn, "show", chain)
    otel_pg(dsn, "show", failed)
    otel_pg(dsn, "errors", "--since", "1h")
    otel_pg(dsn, "show", "--execution", "404")
    print("\nQuery them yourself, for example:")
    print("  SELECT depth, operation, duration_ms, self_ms FROM trace_tree('<trace id>');")
    print("  SELECT * FROM execution_trace(202);")


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
                f"{jobs_url}/jobs/404",
            ):
                # A new connection per request: a server may close one after an error.
                response = httpx.get(url, timeout=10.0)
                print(f"  GET {url} -> {response.status_code}")
        finally:
            for service in services:
                service.send_signal(signal.SIGINT)
            for service in services:
                service.wait(timeout=30)
        show_traces(dsn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
