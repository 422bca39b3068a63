"""Read the spans table: typed rows from the SQL functions (``traces``), rendered as text or
JSON (``render``). Front ends (``otel-pg``, the MCP server) call these and nothing else."""

from otel_pg_exporter.query import render
from otel_pg_exporter.query.traces import (
    Target,
    connect,
    critical_path,
    error_traces,
    execution_trace,
    orphan_spans,
    parse_since,
    service_map,
    slow_operations,
    trace_gaps,
    trace_id_of,
    trace_tree,
)

__all__ = [
    "Target",
    "connect",
    "critical_path",
    "error_traces",
    "execution_trace",
    "orphan_spans",
    "parse_since",
    "render",
    "service_map",
    "slow_operations",
    "trace_gaps",
    "trace_id_of",
    "trace_tree",
]
