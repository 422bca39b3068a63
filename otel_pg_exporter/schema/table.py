"""The spans table's shape, in one place: what the migrations create, what the writer copies
and inserts, and what the query layer and maintenance refer to.

Pure data and names; no database connection, no OpenTelemetry. ``sql/0001_trace_spans.sql``
creates exactly ``COLUMNS``, ``PRIMARY_KEY`` (``PARTITIONED_PRIMARY_KEY`` in the partitioned
layout) and ``INDEXES`` (a test compares the table it makes with these), and the writer builds
its COPY and INSERT statements from them.
"""

from __future__ import annotations

import hashlib
from datetime import date

DEFAULT_TABLE = "trace_spans"
MIGRATIONS_TABLE = "otel_pg_schema_migrations"
"""History table, in the spans table's schema: one row per (spans table, applied version)."""

# Stored columns, in table order, with their PostgreSQL types.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("trace_id", "text"),
    ("span_id", "text"),
    ("parent_span_id", "text"),
    ("service", "text"),
    ("operation", "text"),
    ("kind", "text"),
    ("started_at", "timestamp with time zone"),
    ("completed_at", "timestamp with time zone"),
    ("duration_ms", "double precision"),
    ("status", "text"),
    ("status_message", "text"),
    ("execution_id", "bigint"),
    ("metadata", "jsonb"),
    ("events", "jsonb"),
    ("links", "jsonb"),
    ("resource", "jsonb"),
    ("scope", "text"),
    ("otel", "jsonb"),
    ("created_at", "timestamp with time zone"),
)

PRIMARY_KEY: tuple[str, ...] = ("trace_id", "span_id")
"""A retried or replayed batch never duplicates a row: inserts skip rows whose key exists.
Every unique key holds trace_id, so the table can be distributed by it."""

PARTITION_COLUMN = "started_at"
"""The partitioned layout (``migrate --partitioned``) splits the table by day on this column."""

PARTITIONED_PRIMARY_KEY: tuple[str, ...] = (*PRIMARY_KEY, PARTITION_COLUMN)
"""The key of the partitioned layout: PostgreSQL requires a unique key of a partitioned table to
hold the partition column. A retried span carries the same started_at, so it still conflicts
with itself; two spans with one (trace_id, span_id) and different start times no longer do."""


def primary_key(partitioned: bool) -> tuple[str, ...]:
    """The primary key of the plain or the partitioned layout."""
    return PARTITIONED_PRIMARY_KEY if partitioned else PRIMARY_KEY


INDEXES: dict[str, tuple[str, ...]] = {
    "created_at": ("created_at",),
    "execution_id": ("execution_id",),
    "service_started_at": ("service", "started_at"),
    # Migration 0002, for the query functions: time windows over every service, and the
    # (few) error spans of a window without reading the others.
    "started_at": ("started_at",),
    "errors_started_at": ("started_at",),  # WHERE status = 'error'
}
"""Secondary indexes by name suffix (``{table}_{suffix}_idx``, see ``index_name``)."""

# Staging columns, in row order: what the exporter sends with binary COPY. Times travel as
# integer nanoseconds since the epoch and become timestamptz and duration_ms in the database,
# which costs the application nothing; jsonb columns travel as text, parsed by the server.
STAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("trace_id", "text"),
    ("span_id", "text"),
    ("parent_span_id", "text"),
    ("service", "text"),
    ("operation", "text"),
    ("kind", "text"),
    ("start_ns", "int8"),
    ("end_ns", "int8"),
    ("status", "text"),
    ("status_message", "text"),
    ("execution_id", "int8"),
    ("metadata", "text"),
    ("events", "text"),
    ("links", "text"),
    ("resource", "text"),
    ("scope", "text"),
    ("otel", "text"),
)

# Each stored column the writer fills, and the SQL expression over the staging columns that
# gives it (created_at takes its default). Integer division keeps timestamps exact to the
# microsecond, as float seconds would not.
INSERTED_FROM_STAGE: tuple[tuple[str, str], ...] = (
    ("trace_id", "trace_id"),
    ("span_id", "span_id"),
    ("parent_span_id", "parent_span_id"),
    ("service", "service"),
    ("operation", "operation"),
    ("kind", "kind"),
    ("started_at", "timestamptz 'epoch' + (start_ns / 1000) * interval '1 microsecond'"),
    ("completed_at", "timestamptz 'epoch' + (end_ns / 1000) * interval '1 microsecond'"),
    ("duration_ms", "(end_ns - start_ns) / 1e6::float8"),
    ("status", "status"),
    ("status_message", "status_message"),
    ("execution_id", "execution_id"),
    ("metadata", "metadata::jsonb"),
    ("events", "events::jsonb"),
    ("links", "links::jsonb"),
    ("resource", "resource::jsonb"),
    ("scope", "scope"),
    ("otel", "otel::jsonb"),
)

Row = tuple[
    str,  # trace_id
    str,  # span_id
    str | None,  # parent_span_id
    str,  # service
    str,  # operation
    str,  # kind
    int,  # start_ns
    int,  # end_ns
    str,  # status
    str | None,  # status_message
    int | None,  # execution_id
    str,  # metadata
    str | None,  # events
    str | None,  # links
    str | None,  # resource
    str | None,  # scope
    str | None,  # otel
]
"""One staging row, in ``STAGE_COLUMNS`` order (built by the mapping, sent by the writer)."""

_IDENTIFIER_MAX_BYTES = 63


def index_name(table: str, suffix: str) -> str:
    """``{table}_{suffix}_idx``, shortened with a hash of the table name to fit 63 bytes."""
    tail = f"_{suffix}_idx"
    full = table + tail
    if len(full.encode("utf-8")) <= _IDENTIFIER_MAX_BYTES:
        return full
    digest = hashlib.sha256(table.encode("utf-8")).hexdigest()[:8]
    room = _IDENTIFIER_MAX_BYTES - len(tail.encode("utf-8")) - len(digest) - 1
    # Cut on a character boundary: a split UTF-8 sequence is dropped, never kept half.
    head = table.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"{head}_{digest}{tail}"


FUNCTIONS: tuple[str, ...] = (
    "trace_tree",
    "trace_gaps",
    "critical_path",
    "orphan_spans",
    "error_traces",
    "slow_operations",
    "execution_trace",
    "service_map",
)
"""The query functions (migration 0002), by their names for the default table."""


MAINTENANCE_ROUTINES: tuple[str, ...] = (
    "otel_pg_cleanup",
    "otel_pg_cleanup_batch",
    "otel_pg_drop_partitions",
)
"""Retention routines (migration 0003), shared by every spans table of a schema: each takes
the table as a regclass argument."""


def function_name(table: str, base: str) -> str:
    """``base`` for the default table, ``{table}_{base}`` for another (shortened with a hash
    of the table name to fit 63 bytes): two spans tables in one schema never share one."""
    if table == DEFAULT_TABLE:
        return base
    full = f"{table}_{base}"
    if len(full.encode("utf-8")) <= _IDENTIFIER_MAX_BYTES:
        return full
    digest = hashlib.sha256(table.encode("utf-8")).hexdigest()[:8]
    room = _IDENTIFIER_MAX_BYTES - len(base.encode("utf-8")) - len(digest) - 2
    head = table.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"{head}_{digest}_{base}"


def _suffixed(name: str, suffix: str) -> str:
    """``{name}{suffix}``, shortened to fit 63 bytes like ``index_name``: the name cut on a
    character boundary, then ``_`` and 8 hex digits of its SHA-256."""
    full = name + suffix
    if len(full.encode("utf-8")) <= _IDENTIFIER_MAX_BYTES:
        return full
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    room = _IDENTIFIER_MAX_BYTES - len(suffix.encode("utf-8")) - len(digest) - 1
    head = name.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"{head}_{digest}{suffix}"


def partition_name(table: str, day: date) -> str:
    """The day partition ``{table}_pYYYYMMDD`` that ``otel_pg_maintain`` (migration 0004)
    creates for the UTC day ``day``; shortened with a hash past 63 bytes, as the SQL does."""
    return _suffixed(table, f"_p{day:%Y%m%d}")


def default_partition_name(table: str) -> str:
    """``{table}_default``: where a span outside every day partition lands until the next
    ``otel_pg_maintain`` moves it to a partition of its own."""
    return _suffixed(table, "_default")


PARTITION_ROUTINES: tuple[str, ...] = ("otel_pg_maintain",)
"""Partition maintenance (migration 0004), generic like ``MAINTENANCE_ROUTINES``: it takes the
spans table as a regclass, one per schema, shared by every spans table in it."""


def function_names(table: str) -> dict[str, str]:
    """Every query function of ``table`` by its default name."""
    return {base: function_name(table, base) for base in FUNCTIONS}


def index_names(table: str) -> dict[str, str]:
    """Every secondary index of ``table`` by suffix."""
    return {suffix: index_name(table, suffix) for suffix in INDEXES}
