"""What ``flush_after(budget_ms=100)`` adds to a handler's return, database up, slow and down.

    .venv/bin/python -m benchmarks.bench_flush_after [--calls 500] [--spans 5] [--budget-ms 100]

Starts a throwaway PostgreSQL with fsync on (or uses ``TEST_DATABASE_URL``, an admin DSN),
migrates a fresh database and runs ``--calls`` handlers per scenario, each making
``--spans`` spans: "up" (direct), "slow" (through a TCP proxy that stops forwarding, a
network that drops packets) and "down" (a closed port). The added time is the wrapped call
minus the handler's own body. Prints p50/p90/p99/max in milliseconds and what became of the spans.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from otel_pg_exporter import (
    CountingBatchSpanProcessor,
    Handle,
    PostgresSpanExporter,
    _configure,
    flush_after,
)
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import DevCluster, ExternalServer, PgServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tcp_proxy import TcpProxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(fsync: bool = True) -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        yield ExternalServer(url)
        return
    cluster = DevCluster(fsync=fsync)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def pipeline(dsn: str, spool_dir: str) -> Handle:
    exporter = PostgresSpanExporter(dsn, enabled=True, timeout=2.0, spool_dir=spool_dir)
    processor = CountingBatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-flush-after"}))
    provider.add_span_processor(processor)
    handle = Handle(
        enabled=True, exporter=exporter, processor=processor, provider=provider, owns_provider=True
    )
    _configure._handle = handle  # what configure() would set, on a private provider
    return handle


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(handle: Handle, calls: int, spans: int, budget_ms: float) -> dict[str, Any]:
    assert handle.provider is not None
    tracer = handle.provider.get_tracer("bench")
    body_times: list[float] = []

    @flush_after(budget_ms=budget_ms)
    def handler() -> None:
        started = time.perf_counter()
        with tracer.start_as_current_span("handler"):
            for index in range(spans - 1):
                with tracer.start_as_current_span("step", attributes={"index": index}):
                    pass
        body_times.append(time.perf_counter() - started)

    added = []
    for _ in range(calls):
        started = time.perf_counter()
        handler()
        added.append((time.perf_counter() - started - body_times[-1]) * 1000)
    return {
        "p50_ms": round(percentile(added, 0.50), 2),
        "p90_ms": round(percentile(added, 0.90), 2),
        "p99_ms": round(percentile(added, 0.99), 2),
        "max_ms": round(max(added), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--spans", type=int, default=5)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="the throwaway server without fsync (commits cheaper)",
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with server(fsync=not args.no_fsync) as pg, tempfile.TemporaryDirectory() as spool_root:
        dsn = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        migrate(dsn)
        params = conninfo_to_dict(dsn)
        target = (str(params.get("host", "127.0.0.1")), int(str(params["port"])))
        for scenario in ("up", "slow", "down"):
            spool_dir = os.path.join(spool_root, scenario)
            if scenario == "up":
                handle = pipeline(dsn, spool_dir)
                with flush_after(budget_ms=5000):  # warm up: the pool's first connection
                    pass
                handle.force_flush(5)
                results[scenario] = measure(handle, args.calls, args.spans, args.budget_ms)
            elif scenario == "slow":
                with TcpProxy(*target) as proxy:
                    handle = pipeline(
                        make_conninfo(dsn, port=proxy.port, host="127.0.0.1"), spool_dir
                    )
                    assert handle.provider is not None
                    with flush_after(budget_ms=5000):
                        handle.provider.get_tracer("bench").start_span("warm").end()
                    proxy.stall()
                    results[scenario] = measure(handle, args.calls, args.spans, args.budget_ms)
                    proxy.resume()
            else:
                handle = pipeline(make_conninfo(dsn, port=free_port(), host="127.0.0.1"), spool_dir)
                results[scenario] = measure(handle, args.calls, args.spans, args.budget_ms)
            stats = handle.stats()
            results[scenario].update(
                spans=args.calls * args.spans,
                spans_exported=stats.get("spans_exported", 0),
                spans_spooled=stats.get("spans_spooled", 0),
                dropped=sum(v for k, v in stats.items() if k.startswith("spans_dropped_")),
            )
            handle.shutdown(5)
            _configure._handle = None
    print(json.dumps({"budget_ms": args.budget_ms, "calls": args.calls, **results}, indent=2))


if __name__ == "__main__":
    main()
