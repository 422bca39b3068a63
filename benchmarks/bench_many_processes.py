"""Many processes exporting at once against a server with few connections (issue 14, item 3).

    .venv/bin/python -m benchmarks.bench_many_processes [--processes 50] [--spans 2000]

Starts a throwaway PostgreSQL with ``max_connections=20`` (3 of them reserved for superusers:
the "application" probing the server meanwhile), migrates a database, and starts
``--processes`` interpreters that each ``configure(pool_max=1)`` as a non-superuser role and
make ``--spans`` spans over a few seconds. Meanwhile the parent runs ``SELECT 1`` as the
superuser every 50 ms, twice: on a connection it holds (the application's pool) and on a new
connection each time. Afterwards a fresh exporter replays whatever the processes left in
the shared spool. Reports: application errors in the children, probe failures and latency,
the children's counters (exported, spooled, dropped, connection waits) and whether every
span is stored exactly once. Not part of the test suite (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import DevCluster

ROOT = Path(__file__).resolve().parent.parent

CHILD = """\
import json, os, sys, time
from opentelemetry import trace
import otel_pg_exporter

spans, dsn, spool_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
errors = 0
handle = otel_pg_exporter.configure(
    dsn=dsn, pool_max=1, spool_dir=spool_dir, timeout=5.0, schedule_delay_millis=200,
    retention_days=0, service_name=f"proc-{os.getpid()}",
)
tracer = trace.get_tracer("many")
for index in range(spans):
    try:
        with tracer.start_as_current_span("request", attributes={"index": index}):
            pass
    except Exception:
        errors += 1
    if index % 100 == 99:
        time.sleep(0.2)   # about 5 s of traffic per process
handle.shutdown(10)
stats = handle.stats()
print(json.dumps({"errors": errors, **{k: v for k, v in stats.items() if isinstance(v, int)}}))
"""


def main() -> None:  # noqa: PLR0915 - one linear scenario, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--spans", type=int, default=2000)
    parser.add_argument("--max-connections", type=int, default=20)
    args = parser.parse_args()
    with DevCluster(fsync=False) as cluster, tempfile.TemporaryDirectory() as spool_dir:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET max_connections = {int(args.max_connections)}")
            conn.execute("ALTER SYSTEM SET superuser_reserved_connections = 3")
        cluster.restart()  # postgresql.auto.conf is read after the devdb settings file
        admin = cluster.create_database("many")
        migrate(admin)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE ROLE exporter LOGIN")
            conn.execute("GRANT SELECT, INSERT, UPDATE ON trace_spans TO exporter")
        dsn = cluster.dsn_for("many", user="exporter")

        probe_latency: list[float] = []
        probe_failures: list[str] = []
        pooled_latency: list[float] = []
        pooled_failures: list[str] = []
        stop = threading.Event()

        def probe() -> None:  # a new connection for each query, as a reserved-slot superuser
            while not stop.wait(0.05):
                started = time.monotonic()
                try:
                    with psycopg.connect(admin, connect_timeout=5) as conn:
                        conn.execute("SELECT 1")
                    probe_latency.append(time.monotonic() - started)
                except psycopg.Error as exc:
                    probe_failures.append(str(exc).splitlines()[0])

        def pooled_probe() -> None:  # the application's own pool: connections it already holds
            with psycopg.connect(admin, autocommit=True) as conn:
                while not stop.wait(0.05):
                    started = time.monotonic()
                    try:
                        conn.execute("SELECT 1")
                        pooled_latency.append(time.monotonic() - started)
                    except psycopg.Error as exc:
                        pooled_failures.append(str(exc).splitlines()[0])

        pooled = threading.Thread(target=pooled_probe)
        pooled.start()
        prober = threading.Thread(target=probe)
        prober.start()
        started = time.monotonic()
        children = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(CHILD), str(args.spans), dsn, spool_dir],
                env={**os.environ, "ENABLE_DB_TRACING": "true"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(args.processes)
        ]
        outputs = [child.communicate(timeout=300) for child in children]
        took = time.monotonic() - started
        stop.set()
        prober.join()
        pooled.join()

        results: list[dict[str, Any]] = []
        crashed = 0
        for child, (out, err) in zip(children, outputs, strict=True):
            lines = out.strip().splitlines()
            if child.returncode != 0 or not lines:
                crashed += 1
                print(err[-2000:], file=sys.stderr)
                continue
            results.append(json.loads(lines[-1]))

        # What the processes left in the spool: a fresh process replays it.
        successor = PostgresSpanExporter(dsn, enabled=True, spool_dir=spool_dir)
        replayed_ok = True
        try:
            successor._open_spool_lazily()
            if successor.replayer is not None:
                replayed_ok = successor.replayer.wait_idle(120)
        finally:
            successor.shutdown()
        with psycopg.connect(admin) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT span_id) FROM trace_spans"
            ).fetchone()
        assert row is not None

        def total(key: str) -> int:
            return sum(int(result.get(key, 0)) for result in results)

        latency = sorted(probe_latency) or [0.0]
        report = {
            "processes": args.processes,
            "max_connections": args.max_connections,
            "seconds": round(took, 1),
            "processes_crashed": crashed,
            "app_errors": total("errors"),
            "spans_made": args.processes * args.spans,
            "rows_stored": row[0],
            "rows_distinct": row[1],
            "spans_lost": args.processes * args.spans - row[1],
            "spans_spooled": total("spans_spooled"),
            "spans_replayed_by_processes": total("spans_replayed"),
            "spans_dropped": sum(
                total(key)
                for key in {k for r in results for k in r if k.startswith("spans_dropped_")}
            ),
            "connection_wait_total_ms": round(total("connection_wait_total_us") / 1000),
            "connection_wait_max_ms": round(
                max((int(r.get("connection_wait_max_us", 0)) for r in results), default=0) / 1000
            ),
            "final_replay_idle": replayed_ok,
            "pooled_queries": len(pooled_latency),
            "pooled_failures": len(pooled_failures),
            "pooled_first_failures": pooled_failures[:3],
            "pooled_p99_ms": round(
                sorted(pooled_latency or [0.0])[int(0.99 * (len(pooled_latency) - 1))] * 1000, 1
            ),
            "probe_queries": len(probe_latency),
            "probe_failures": len(probe_failures),
            "probe_first_failures": probe_failures[:3],
            "probe_p99_ms": round(
                latency[min(len(latency) - 1, int(0.99 * len(latency)))] * 1000, 1
            ),
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
