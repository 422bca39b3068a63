"""Many exporting processes against few connections: each process stays within its pool size,
the applications see no error, and every span is stored once the spool is replayed.

The connection limit is a role's (``CONNECTION LIMIT``), so the session's server is not
restarted; ``make bench``'s neighbour ``benchmarks/bench_many_processes.py`` runs the
50-process version against a server started with ``max_connections=20``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.testing.devdb import PgServer

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 8
SPANS = 600
POOL_MAX = 2
ROLE_LIMIT = 3

CHILD = """\
import json, sys, time
from opentelemetry import trace
import otel_pg_exporter

spans, dsn, spool_dir, pool_max = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
errors = 0
handle = otel_pg_exporter.configure(
    dsn=dsn, pool_max=pool_max, spool_dir=spool_dir, timeout=3.0, schedule_delay_millis=100,
    max_export_batch_size=64, retention_days=0, service_name="many",
)
tracer = trace.get_tracer("many")
for index in range(spans):
    try:
        with tracer.start_as_current_span("request", attributes={"index": index}):
            pass
    except Exception:
        errors += 1
    if index % 50 == 49:
        time.sleep(0.1)
handle.shutdown(10)
stats = handle.stats()
print(json.dumps({"errors": errors, **{k: v for k, v in stats.items() if isinstance(v, int)}}))
"""


def test_many_processes_share_few_connections_without_errors_or_lost_spans(
    pg_cluster: PgServer, migrated_dsn: str, tmp_path: Path
) -> None:
    """Eight processes with pool_max=2 under a 3-connection role limit: no process ever holds
    more than 2 connections, no application error, and every span is stored exactly once."""
    role = f"many_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {}").format(
                sql.Identifier(role), sql.Literal(ROLE_LIMIT)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON trace_spans TO {}").format(
                sql.Identifier(role)
            )
        )
    dbname = str(conninfo_to_dict(migrated_dsn)["dbname"])
    role_dsn = pg_cluster.dsn_for(dbname, user=role)
    spool_dir = str(tmp_path / "spool")
    seen: dict[str, int] = {}
    most_for_role = 0
    stop = threading.Event()

    def sample() -> None:  # connections per process (application_name) and for the role
        nonlocal most_for_role
        with psycopg.connect(migrated_dsn, autocommit=True) as conn:
            while not stop.wait(0.01):
                rows = conn.execute(
                    "SELECT application_name, count(*)::int FROM pg_stat_activity"
                    " WHERE usename = %s GROUP BY 1",
                    (role,),
                ).fetchall()
                most_for_role = max(most_for_role, sum(count for _, count in rows))
                for name, count in rows:
                    seen[name] = max(seen.get(name, 0), count)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    textwrap.dedent(CHILD),
                    str(SPANS),
                    make_conninfo(role_dsn, application_name=f"many-{index}"),
                    spool_dir,
                    str(POOL_MAX),
                ],
                env={**os.environ, "ENABLE_DB_TRACING": "true"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for index in range(PROCESSES)
        ]
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        stop.set()
        sampler.join()

    assert [0] * PROCESSES == [child.returncode for child in children], [
        err[-1000:] for _, err in outputs
    ]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [0] * PROCESSES == [result["errors"] for result in results]
    assert {} == {
        key: value
        for result in results
        for key, value in result.items()
        if key.startswith("spans_dropped_") and value
    }
    assert all(count <= POOL_MAX for count in seen.values()), seen
    assert most_for_role <= ROLE_LIMIT
    # The limit was felt: some processes spooled for lack of a connection.
    assert sum(result["spans_spooled"] for result in results) > 0

    successor = PostgresSpanExporter(role_dsn, enabled=True, spool_dir=spool_dir)
    try:
        successor._open_spool_lazily()
        assert successor.replayer is not None
        assert successor.replayer.wait_idle(120)
    finally:
        successor.shutdown()
    with psycopg.connect(migrated_dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT span_id) FROM trace_spans").fetchone()
    assert (PROCESSES * SPANS, PROCESSES * SPANS) == row
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
