"""Retention: delete spans older than a cutoff without ever stalling the writers.

Whole day partitions go first (partitioned layout: detach and drop, instant); then rows, in
batches through the ``created_at`` index, each batch its own short transaction with a
``lock_timeout``, pausing between batches. The work is done by the routines of migration
0003 (``otel_pg_cleanup_batch``, ``otel_pg_drop_partitions``), which schedulers call through
``CALL otel_pg_cleanup(...)``; this module drives the same routines with progress, a dry run
and a stop signal, for ``otel-pg cleanup`` and the exporter's background job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import MigrationError
from otel_pg_exporter.schema import partitions
from otel_pg_exporter.schema.migrations import connection
from otel_pg_exporter.schema.table import DEFAULT_TABLE

logger = logging.getLogger("otel_pg_exporter")

DEFAULT_BATCH_ROWS = 5000
DEFAULT_PAUSE_S = 0.1
LOCK_TIMEOUT_MS = 100
PARTITION_LOCK_TIMEOUT_MS = LOCK_TIMEOUT_MS
STATEMENT_TIMEOUT_MS = 30_000
MAX_LOCK_WAITS = 50


@dataclass
class CleanupReport:
    """What one cleanup did (or, with ``dry_run``, would do)."""

    cutoff: datetime
    dry_run: bool
    rows: int = 0
    batches: int = 0
    partitions: list[str] = field(default_factory=list)
    lock_waits: int = 0  # batches that gave up on a lock and were retried
    seconds: float = 0.0
    stopped: bool = False  # interrupted by the stop signal; the rest waits for the next run

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        parts = f", {len(self.partitions)} partition(s) dropped" if self.partitions else ""
        if self.dry_run and self.partitions:
            parts = f", would drop {len(self.partitions)} partition(s)"
        return (
            f"{verb} {self.rows:,} spans created before {self.cutoff:%Y-%m-%d %H:%M:%S %Z}"
            f"{parts} in {self.batches:,} batch(es), {self.seconds:.1f} s"
            + (f"; {self.lock_waits} lock wait(s) retried" if self.lock_waits else "")
            + ("; stopped early" if self.stopped else "")
        )


def _table(conn: psycopg.Connection[Any], schema: str | None, table: str) -> tuple[str, str]:
    """The table's regclass text and its schema; MigrationError when it does not exist."""
    name = sql.Identifier(schema, table) if schema else sql.Identifier(table)
    row = conn.execute(
        "SELECT c.oid::regclass::text, n.nspname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        (name.as_string(conn),),
    ).fetchone()
    if row is None:
        shown = f"{schema}.{table}" if schema else table
        raise MigrationError(f"table {shown!r} does not exist: run `otel-pg migrate` first")
    return str(row[0]), str(row[1])


def cleanup(
    dsn: str | psycopg.Connection[Any],
    *,
    older_than: timedelta,
    schema: str | None = None,
    table: str = DEFAULT_TABLE,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    pause_s: float = DEFAULT_PAUSE_S,
    dry_run: bool = False,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[CleanupReport], None] | None = None,
) -> CleanupReport:
    """Delete the spans created more than ``older_than`` ago (see the module docstring).

    ``progress`` is called after each batch; ``stop`` (or ``max_seconds``) ends the run
    between batches. Raises MigrationError (no password) when the database cannot be used.
    """
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, not {older_than}")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
    started = time.monotonic()
    with connection(dsn) as conn, untraced():
        regclass, home = _table(conn, schema, table)
        row = conn.execute("SELECT now() - %s::interval", (older_than,)).fetchone()
        assert row is not None
        report = CleanupReport(cutoff=row[0], dry_run=dry_run)
        partitioned = _is_partitioned(conn, regclass)
        if dry_run:
            _dry_run(conn, regclass, partitioned, report)
            report.seconds = time.monotonic() - started
            return report
        if partitioned:
            # By whole days: spans in the default partition go to their day partitions first,
            # then every day past the cutoff is dropped; no row-by-row DELETE on this layout.
            partitions.maintain(conn, schema=schema, table=table)
            _drop_partitions(conn, home, regclass, report)
        else:
            deadline = None if max_seconds is None else started + max_seconds
            _delete_batches(
                conn, home, regclass, report, batch_rows, pause_s, deadline, stop, progress
            )
    report.seconds = time.monotonic() - started
    return report


def _drop_partitions(
    conn: psycopg.Connection[Any], home: str, regclass: str, report: CleanupReport
) -> None:
    """Detach and drop the old day partitions; on a held lock, give up within the lock
    timeout and try again a few times (writers never queue behind a long wait)."""
    drop = sql.SQL("SELECT * FROM {}(%s::regclass, %s)").format(
        sql.Identifier(home, "otel_pg_drop_partitions")
    )
    for _ in range(MAX_LOCK_WAITS):
        try:
            with conn.transaction():
                _set_timeouts(conn, PARTITION_LOCK_TIMEOUT_MS)
                dropped = conn.execute(drop, (regclass, report.cutoff)).fetchall()
            report.partitions = [str(name) for name, _ in dropped]
            report.rows += sum(int(rows) for _, rows in dropped)
            return
        except psycopg.errors.LockNotAvailable:
            report.lock_waits += 1
            time.sleep(0.5)


def _delete_batches(
    conn: psycopg.Connection[Any],
    home: str,
    regclass: str,
    report: CleanupReport,
    batch_rows: int,
    pause_s: float,
    deadline: float | None,
    stop: threading.Event | None,
    progress: Callable[[CleanupReport], None] | None,
) -> None:
    """One transaction per batch; a batch that meets a held lock gives up at once and is
    tried again after a pause, so no writer ever queues behind it."""
    batch = sql.SQL("SELECT {}(%s::regclass, %s, %s)").format(
        sql.Identifier(home, "otel_pg_cleanup_batch")
    )
    pause = stop.wait if stop is not None else time.sleep
    while True:
        if (stop is not None and stop.is_set()) or (
            deadline is not None and time.monotonic() > deadline
        ):
            report.stopped = True
            return
        try:
            with conn.transaction():
                _set_timeouts(conn, LOCK_TIMEOUT_MS)
                found = conn.execute(batch, (regclass, report.cutoff, batch_rows)).fetchone()
        except psycopg.errors.LockNotAvailable:
            report.lock_waits += 1
            if report.lock_waits > MAX_LOCK_WAITS:
                report.stopped = True
                return
            pause(max(pause_s, 0.05) * 5)
            continue
        deleted = int(found[0]) if found else 0
        report.rows += deleted
        report.batches += 1
        if progress is not None:
            progress(report)
        if deleted < batch_rows:
            return
        pause(pause_s)


def _set_timeouts(conn: psycopg.Connection[Any], lock_timeout_ms: int) -> None:
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (str(lock_timeout_ms), str(STATEMENT_TIMEOUT_MS)),
    )


def _is_partitioned(conn: psycopg.Connection[Any], regclass: str) -> bool:
    row = conn.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = %s::regclass", (regclass,))
    found = row.fetchone()
    return bool(found and found[0])


def _dry_run(
    conn: psycopg.Connection[Any], regclass: str, partitioned: bool, report: CleanupReport
) -> None:
    """Count what a cleanup would delete, through the same index, without deleting."""
    table = sql.SQL(regclass)  # a regclass's text form is already a quoted, qualified name
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE created_at < %s").format(table), (report.cutoff,)
    ).fetchone()
    report.rows = int(row[0]) if row else 0
    if partitioned:
        report.partitions = [
            str(name)
            for (name,) in conn.execute(
                "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c"
                " ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass"
                " AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"
                " AND substring(pg_get_expr(c.relpartbound, c.oid)"
                "     FROM 'TO \\(''([^'']+)''\\)')::timestamptz <= %s",
                (regclass, report.cutoff),
            )
        ]
