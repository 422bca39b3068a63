"""Retention in the background: one exporting process per table deletes old spans.

A daemon thread of the exporter, started at its first export when retention is on. It waits
``FIRST_RUN_AFTER_S`` first (a short-lived process, a serverless handler or a script, never
runs it, and never in its shutdown), then about once an hour takes a session advisory lock
keyed on the table: whichever process gets it keeps the day partitions ahead (partitioned
layout) and deletes in small batches with pauses (``schema.maintenance.cleanup``); the others
skip this round. Never on the export path: one connection of its own for the round, not
the exporter's pool.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from datetime import timedelta
from typing import Any

import psycopg

from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import OtelPgError
from otel_pg_exporter.schema import maintenance, partitions

logger = logging.getLogger("otel_pg_exporter")

FIRST_RUN_AFTER_S = 300.0
INTERVAL_S = 3600.0
BATCH_ROWS = 2000
PAUSE_S = 0.5  # between batches: a low duty cycle, whatever the backlog
MAX_RUN_S = 600.0  # the rest waits for the next round


def lock_key(schema: str | None, table: str) -> int:
    """The advisory lock of one spans table's retention, a stable signed 64-bit number."""
    text = f"otel_pg_exporter.retention\x00{schema or ''}\x00{table}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


class RetentionJob:
    """Runs ``run_once`` every ``interval_s`` (with jitter) after ``first_run_after_s``."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None,
        table: str,
        retention_days: int,
        first_run_after_s: float = FIRST_RUN_AFTER_S,
        interval_s: float = INTERVAL_S,
        batch_rows: int = BATCH_ROWS,
        pause_s: float = PAUSE_S,
        max_run_s: float = MAX_RUN_S,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._table = table
        self._older_than = timedelta(days=retention_days)
        self._first_run_after_s = first_run_after_s
        self._interval_s = interval_s
        self._batch_rows = batch_rows
        self._pause_s = pause_s
        self._max_run_s = max_run_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # rounds that held the lock
        self.skipped = 0  # rounds another process held it
        self.rows_deleted = 0
        self.last_report: maintenance.CleanupReport | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="otel_pg_exporter-retention", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; never waits (a batch in flight is rolled back at exit)."""
        self._stop.set()

    def _run(self) -> None:
        wait = self._first_run_after_s * random.uniform(1.0, 1.2)  # noqa: S311 - jitter
        while not self._stop.wait(wait):
            try:
                self.run_once()
            except Exception as exc:  # the job must keep going, and never reach the app
                logger.warning(
                    "Retention of %s skipped this round: %s", self._table, redact_dsn(str(exc))
                )
            wait = self._interval_s * random.uniform(0.9, 1.1)  # noqa: S311 - jitter

    def run_once(self) -> bool:
        """One round: False when another process holds this table's lock."""
        key = lock_key(self._schema, self._table)
        with untraced(), psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
            held = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (held and held[0]):
                self.skipped += 1
                return False
            try:
                # The whole round on this one connection: a process holds at most one
                # connection beyond its pool, and only while it runs a round.
                self._maintain_partitions(conn)
                report = maintenance.cleanup(
                    conn,
                    older_than=self._older_than,
                    schema=self._schema,
                    table=self._table,
                    batch_rows=self._batch_rows,
                    pause_s=self._pause_s,
                    max_seconds=self._max_run_s,
                    stop=self._stop,
                )
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        self.runs += 1
        self.rows_deleted += report.rows
        self.last_report = report
        if report.rows or report.partitions:
            logger.info("Retention of %s: %s", self._table, report.summary())
        return True

    def _maintain_partitions(self, conn: psycopg.Connection[Any]) -> None:
        """Keep day partitions ahead and the default partition empty (a no-op for the plain
        layout, and for a table pg_partman manages)."""
        try:
            partitions.maintain(conn, schema=self._schema, table=self._table)
        except OtelPgError as exc:
            logger.warning("Partition maintenance of %s failed: %s", self._table, exc)
