"""The row format shared by mapping (which builds rows) and writer (which stores them)."""

from __future__ import annotations

# Staging columns, in row order. Times travel as integer nanoseconds since the epoch and
# become timestamptz and duration_ms in the database, which costs the application nothing;
# jsonb columns travel as text and are parsed by the server.
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
