"""Retention: old spans go in small batches that never stall a writer, by ``otel-pg cleanup``,
the ``otel_pg_cleanup`` procedure for schedulers, and the exporter's background job, which
one process per table runs at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from layout import PARTITIONED
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import clean_environ, wait_until

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.cli import main
from otel_pg_exporter.export.retention import RetentionJob
from otel_pg_exporter.schema import maintenance

ROOT = Path(__file__).resolve().parent.parent

SEED = """
INSERT INTO trace_spans (trace_id, span_id, service, operation, kind, started_at, completed_at,
                         duration_ms, status, created_at)
SELECT md5(%(tag)s || i::text), left(md5(%(tag)s || (-i)::text), 16), 'seed', 'old.step',
       'internal', t, t, 0, 'unset', t
  FROM generate_series(1, %(rows)s) AS i,
       LATERAL (SELECT now() - %(age)s::interval - i * interval '1 second') AS s(t)
"""


def seed(dsn: str, rows: int, age: str, tag: str = "old") -> None:
    """``rows`` spans created ``age`` ago (and one second apart before that)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(SEED, {"rows": rows, "age": age, "tag": tag})


def count(dsn: str, where: str = "true") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM trace_spans WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def make_spans(count_: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "writer"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.test_retention")
    for index in range(count_):
        with tracer.start_as_current_span("live.step", attributes={"index": index}):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_cleanup_deletes_only_what_is_older_than_the_cutoff_in_batches(migrated_dsn: str) -> None:
    """1,000 spans 40 days old go in batches of 300; 50 spans a day old stay."""
    seed(migrated_dsn, 1000, "40 days")
    seed(migrated_dsn, 50, "1 day", tag="new")
    seen: list[int] = []

    report = maintenance.cleanup(
        migrated_dsn,
        older_than=timedelta(days=30),
        batch_rows=300,
        pause_s=0.0,
        progress=lambda r: seen.append(r.rows),
    )

    assert (1000, False) == (report.rows, report.stopped)
    if PARTITIONED:  # by whole days: the old spans' day partition is dropped, no batches
        assert (0, 1) == (report.batches, len(report.partitions))
    else:
        assert (4, [], [300, 600, 900, 1000]) == (report.batches, report.partitions, seen)
    assert 50 == count(migrated_dsn)


def test_dry_run_counts_and_deletes_nothing(migrated_dsn: str) -> None:
    """A dry run reports what would go and leaves every row."""
    seed(migrated_dsn, 120, "40 days")

    report = maintenance.cleanup(migrated_dsn, older_than=timedelta(days=30), dry_run=True)

    assert (True, 120, 0) == (report.dry_run, report.rows, report.batches)
    assert 120 == count(migrated_dsn)


def test_the_scheduler_procedure_does_the_same(migrated_dsn: str) -> None:
    """``CALL otel_pg_cleanup(...)``, what pg_cron runs, deletes the old spans in batches."""
    seed(migrated_dsn, 700, "40 days")
    seed(migrated_dsn, 10, "2 days", tag="new")
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("CALL otel_pg_cleanup('trace_spans', interval '30 days', 250, 0)")

    assert 10 == count(migrated_dsn)


def test_a_held_lock_makes_a_batch_wait_its_turn_not_the_writers(migrated_dsn: str) -> None:
    """While another session holds a lock that conflicts with DELETE, each batch gives up
    within the lock timeout and is retried; the cleanup finishes once the lock goes."""
    seed(migrated_dsn, 200, "40 days")
    holder = psycopg.connect(migrated_dsn)
    holder.execute("LOCK TABLE trace_spans IN SHARE MODE")
    release = threading.Timer(1.0, holder.rollback)
    release.start()
    try:
        report = maintenance.cleanup(
            migrated_dsn, older_than=timedelta(days=30), batch_rows=100, pause_s=0.05
        )
    finally:
        release.join()
        holder.close()

    assert report.lock_waits >= 1 or PARTITIONED  # the partition step waits for the lock
    assert (200, False) == (report.rows, report.stopped)


def test_a_concurrent_writer_is_never_stalled_by_a_cleanup(migrated_dsn: str) -> None:
    """An exporter writing batches while 60,000 old rows are deleted: every batch is stored,
    and no export waits anywhere near a long DELETE (the bound is generous: a shared
    machine; `make bench-scale` measures the real figure)."""
    seed(migrated_dsn, 60_000, "40 days")
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True, retention_days=0)
    template = make_spans(200)
    took: list[float] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert SpanExportResult.SUCCESS == exporter.export(template)
            took.append(time.monotonic() - started)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        report = maintenance.cleanup(
            migrated_dsn, older_than=timedelta(days=30), batch_rows=5000, pause_s=0.02
        )
    finally:
        stop.set()
        writer.join()
        exporter.shutdown()

    assert 60_000 == report.rows
    assert 200 == count(migrated_dsn)  # the same 200 ids each time: stored once
    assert len(took) >= 3
    assert max(took) < 2.0, f"an export waited {max(took):.2f} s during the cleanup"


# --- otel-pg cleanup ------------------------------------------------------------------------


def test_cli_cleanup_reports_and_deletes(
    migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`otel-pg cleanup --older-than 30d --json` deletes and says how many, in how many
    batches; a second run finds nothing."""
    seed(migrated_dsn, 40, "31 days")

    assert 0 == main(["cleanup", "--dsn", migrated_dsn, "--older-than", "30d", "--json"])
    first = json.loads(capsys.readouterr().out)
    assert 0 == main(["cleanup", "--dsn", migrated_dsn, "--older-than", "30d"])
    second = capsys.readouterr().out

    assert (40, False) == (first["rows"], first["dry_run"])
    assert (0 if PARTITIONED else 1) == first["batches"]
    assert "deleted 0 spans" in second


def test_cli_cleanup_defaults_to_the_retention_setting(
    migrated_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --older-than, OTEL_EXPORTER_POSTGRES_RETENTION_DAYS decides; 0 deletes nothing
    and says so."""
    seed(migrated_dsn, 5, "10 days")
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_RETENTION_DAYS", "0")
    assert 0 == main(["cleanup", "--dsn", migrated_dsn])
    assert "Retention is off" in capsys.readouterr().out
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_RETENTION_DAYS", "7")

    assert 0 == main(["cleanup", "--dsn", migrated_dsn, "--dry-run"])

    assert "would delete 5 spans" in capsys.readouterr().out
    assert 5 == count(migrated_dsn)


@pytest.mark.parametrize("age", ["30", "0d", "thirty days", "-1d"])
def test_cli_cleanup_refuses_a_bad_age(
    age: str, migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --older-than is a usage error naming the option."""
    assert 2 == main(["cleanup", "--dsn", migrated_dsn, "--older-than", age])
    assert "--older-than" in capsys.readouterr().err


def test_cli_cleanup_of_a_missing_table_says_migrate(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against a database without the table: exit 1, and the message says what to run."""
    assert 1 == main(["cleanup", "--dsn", fresh_dsn, "--older-than", "1d"])
    assert "otel-pg migrate" in capsys.readouterr().err


# --- the background job ---------------------------------------------------------------------

RUN_ONCE = """
import json, sys, time
from otel_pg_exporter.export.retention import RetentionJob
dsn, start_at = sys.argv[1], float(sys.argv[2])
job = RetentionJob(dsn, schema=None, table="trace_spans", retention_days=30,
                   batch_rows=100, pause_s=0.05)
time.sleep(max(0.0, start_at - time.time()))
ran = job.run_once()
print(json.dumps({"ran": ran, "rows": job.rows_deleted}))
"""


def test_two_processes_at_once_one_cleans_the_other_skips(migrated_dsn: str) -> None:
    """Two exporting processes whose jobs start at the same instant: the advisory lock lets
    one delete every old span; the other skips the round."""
    seed(migrated_dsn, 2000, "40 days")
    start_at = time.time() + 3.0
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ONCE, migrated_dsn, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_environ(),
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    results: list[dict[str, Any]] = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert 0 == process.returncode, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert [False, True] == sorted(result["ran"] for result in results)
    assert 0 == count(migrated_dsn)  # deleted in batches, or (partitioned) dropped by day


def test_the_exporter_starts_the_job_at_its_first_export_and_waits_before_running(
    migrated_dsn: str,
) -> None:
    """Retention on (the default): the job exists only after the first export, and its first
    round waits minutes, so a short-lived process never deletes anything."""
    seed(migrated_dsn, 10, "40 days")
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True)
    try:
        assert exporter.retention is None
        assert SpanExportResult.SUCCESS == exporter.export(make_spans(3))
        job = exporter.retention
        assert job is not None
        time.sleep(0.3)
        stats = exporter.stats()
    finally:
        exporter.shutdown()

    assert (0, 0) == (stats["retention_runs"], stats["retention_rows_deleted"])
    assert 13 == count(migrated_dsn)


def test_retention_zero_starts_no_job(migrated_dsn: str) -> None:
    """retention_days=0 keeps spans forever: no job, no retention counters."""
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True, retention_days=0)
    try:
        assert SpanExportResult.SUCCESS == exporter.export(make_spans(2))
        assert exporter.retention is None
        assert "retention_runs" not in exporter.stats()
    finally:
        exporter.shutdown()


def test_the_job_thread_runs_rounds_and_stops(migrated_dsn: str) -> None:
    """Started with no first delay, the job's thread deletes the old spans, then stops when
    asked."""
    seed(migrated_dsn, 300, "40 days")
    job = RetentionJob(
        migrated_dsn,
        schema=None,
        table="trace_spans",
        retention_days=30,
        first_run_after_s=0.0,
        interval_s=3600,
        batch_rows=100,
        pause_s=0.0,
    )
    job.start()
    wait_until(lambda: job.runs > 0, 30.0, message="the job's first round")
    job.stop()

    assert 1 == job.runs
    assert 0 == count(migrated_dsn)


def test_a_bad_retention_variable_warns_and_keeps_thirty_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_POSTGRES_RETENTION_DAYS=-3 is reported and the default used."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_RETENTION_DAYS", "-3")
    exporter = PostgresSpanExporter("postgresql://127.0.0.1:1/x", enabled=True)
    try:
        assert 30 == exporter.settings.retention_days
    finally:
        exporter.shutdown()
