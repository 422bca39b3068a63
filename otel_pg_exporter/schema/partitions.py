"""Day partitions of a partitioned spans table (``otel-pg migrate --partitioned``).

``maintain`` calls ``otel_pg_maintain`` (migration 0004) in the table's schema: it creates the
day partitions from ``days_behind`` days ago to ``days_ahead`` days ahead (UTC days), keeps the
DEFAULT partition where a span outside every partition lands, and moves what it finds there
into partitions of their own. For a plain table it does nothing. ``otel-pg maintain`` and the
exporter's background job run it; it is cheap when there is nothing to do.

Partitions are attached (SHARE UPDATE EXCLUSIVE on the parent), not created with
``PARTITION OF`` (ACCESS EXCLUSIVE): writers never wait for maintenance, except those of spans
bound for the default partition while it is being emptied. A ``lock_timeout`` bounds the
wait for a lock held elsewhere (a long read of the default partition, a migration): the call
then fails with nothing done, and the next run does the work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow

from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import MigrationError
from otel_pg_exporter.schema.migrations import MAINTAIN_FUNCTION, connection
from otel_pg_exporter.schema.table import DEFAULT_TABLE

logger = logging.getLogger("otel_pg_exporter")

__all__ = [
    "DAYS_AHEAD",
    "DAYS_BEHIND",
    "CreatedPartition",
    "MaintenanceResult",
    "maintain",
]

DAYS_AHEAD = 3
DAYS_BEHIND = 1
MAX_DAYS = 366
LOCK_TIMEOUT_MS = 2000
STATEMENT_TIMEOUT_MS = 300_000


@dataclass(frozen=True)
class CreatedPartition:
    """One partition ``maintain`` created: its name (as regclass prints it), its UTC day, and
    the rows it received from the default partition."""

    name: str
    day: date
    rows_moved: int


@dataclass(frozen=True)
class MaintenanceResult:
    """What ``maintain`` did. ``partitioned`` is False for a plain table, ``managed_by`` is
    ``"pg_partman"`` for a table handed to it: nothing to do in either case."""

    partitioned: bool
    created: list[CreatedPartition] = field(default_factory=list)
    managed_by: str | None = None

    @property
    def rows_moved(self) -> int:
        """Rows moved out of the default partition into partitions of their own."""
        return sum(partition.rows_moved for partition in self.created)


def _days(parameter: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAYS:
        raise ValueError(f"{parameter} must be a whole number of days from 0 to {MAX_DAYS}")
    return value


def maintain(
    dsn: str | psycopg.Connection[Any],
    *,
    schema: str | None = None,
    table: str = DEFAULT_TABLE,
    days_ahead: int = DAYS_AHEAD,
    days_behind: int = DAYS_BEHIND,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
) -> MaintenanceResult:
    """Create the missing day partitions of ``schema.table`` and empty its default partition.

    One transaction: either every partition is made and every movable row moved, or nothing
    changes. Raises MigrationError (no password) when the table or the function is missing,
    a lock is not had within ``lock_timeout_ms``, or the database cannot be used; ValueError
    for a bad argument.
    """
    _days("days_ahead", days_ahead)
    _days("days_behind", days_behind)
    if lock_timeout_ms < 1:
        raise ValueError("lock_timeout_ms must be at least 1")
    name = sql.Identifier(schema, table) if schema else sql.Identifier(table)
    shown = f"{schema}.{table}" if schema else table
    with connection(dsn) as conn, untraced():
        row = conn.execute(
            "SELECT c.oid::regclass::text, n.nspname, c.relkind = 'p', c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            (name.as_string(conn),),
        ).fetchone()
        if row is None:
            raise MigrationError(f"table {shown!r} does not exist: run `otel-pg migrate` first")
        regclass, home, partitioned = str(row[0]), str(row[1]), bool(row[2])
        if not partitioned:
            return MaintenanceResult(partitioned=False)
        if _partman_manages(conn, f"{home}.{row[3]}"):
            return MaintenanceResult(partitioned=True, managed_by="pg_partman")
        function = sql.Identifier(home, MAINTAIN_FUNCTION)
        found = conn.execute(
            "SELECT to_regprocedure(%s) IS NOT NULL",
            (sql.SQL("{}(regclass, integer, integer)").format(function).as_string(conn),),
        ).fetchone()
        if not (found and found[0]):
            raise MigrationError(
                f"{MAINTAIN_FUNCTION} is not installed in schema {home!r}: "
                "run `otel-pg migrate` first"
            )
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true),"
                    " set_config('statement_timeout', %s, true)",
                    (str(lock_timeout_ms), str(STATEMENT_TIMEOUT_MS)),
                )
                rows = conn.execute(
                    sql.SQL(
                        "SELECT partition_created::text, partition_day, rows_moved"
                        " FROM {}(%s::regclass, %s, %s)"
                    ).format(function),
                    (regclass, days_ahead, days_behind),
                ).fetchall()
        except errors.LockNotAvailable:
            raise MigrationError(
                f"partitions of {shown!r} not maintained: a lock was not had within "
                f"{lock_timeout_ms} ms (a long query or a migration holds the table); "
                "nothing was changed, try again later"
            ) from None
    created = [CreatedPartition(str(part), day, int(moved)) for part, day, moved in rows]
    if created:
        logger.info(
            "Created %d partition(s) of %s, moved %d row(s) out of its default partition",
            len(created),
            shown,
            sum(partition.rows_moved for partition in created),
        )
    return MaintenanceResult(partitioned=True, created=created)


def _partman_manages(conn: psycopg.Connection[TupleRow], parent: str) -> bool:
    """Whether pg_partman's part_config lists ``parent`` (``schema.table``, unquoted, as
    pg_partman writes it)."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_partman'"
    ).fetchone()
    if row is None:
        return False
    found = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE parent_table = %s)").format(
            sql.Identifier(str(row[0]), "part_config")
        ),
        (parent,),
    ).fetchone()
    return bool(found and found[0])
