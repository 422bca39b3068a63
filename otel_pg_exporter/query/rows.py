"""What the query functions return: one frozen dataclass per SQL function, field for field.

Times are ``datetime`` (timezone-aware) or milliseconds as ``float``; ids are W3C hex text.
Every text field comes from span data and may hold anything a request sender chose: render it
escaped (``query.render.clean``), never raw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TreeSpan:
    """One span of ``trace_tree``, in depth-first order."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    depth: int
    path: list[str]  # operation names from the root down to this span
    service: str
    operation: str
    kind: str
    started_at: datetime
    completed_at: datetime
    offset_ms: float  # from the trace's first start
    duration_ms: float
    self_ms: float  # duration not covered by any child
    status: str
    status_message: str | None
    execution_id: int | None
    is_orphan: bool  # its parent never arrived: shown as an extra root


@dataclass(frozen=True)
class Gap:
    """An interval inside a span covered by none of its children (``trace_gaps``)."""

    trace_id: str
    parent_span_id: str
    parent_service: str
    parent_operation: str
    gap_start: datetime
    gap_end: datetime
    offset_ms: float  # gap start from the trace's first start
    gap_ms: float
    before_span_id: str | None  # the child that ended where the gap begins (None: span start)
    before_operation: str | None
    after_span_id: str | None  # the child that started where the gap ends (None: span end)
    after_operation: str | None


@dataclass(frozen=True)
class PathSpan:
    """A span on the critical path, with the time it contributes to the trace's duration."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    service: str
    operation: str
    started_at: datetime
    offset_ms: float
    duration_ms: float
    contribution_ms: float  # its own time on the path: duration minus its critical children
    status: str


@dataclass(frozen=True)
class OrphanGroup:
    """Spans of one service and operation whose parent never arrived (``orphan_spans``)."""

    service: str
    operation: str
    spans: int
    remote_parents: int  # of them, how many had a parent in another process
    example_trace_id: str
    example_span_id: str
    last_seen: datetime


@dataclass(frozen=True)
class ErrorTrace:
    """A trace with an error span, described by its first error (``error_traces``)."""

    trace_id: str
    first_error_at: datetime
    error_spans: int
    service: str
    operation: str
    span_id: str
    status_message: str | None
    exception_type: str | None
    exception_message: str | None
    execution_id: int | None


@dataclass(frozen=True)
class SlowOperation:
    """Duration percentiles of one service and operation (``slow_operations``)."""

    service: str
    operation: str
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    total_ms: float


@dataclass(frozen=True)
class ExecutionSpan:
    """A span of one job execution (``execution_trace``), in time order."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    depth: int  # 0 for a top-level span of the execution
    service: str
    operation: str
    started_at: datetime
    completed_at: datetime
    offset_ms: float  # from the execution's first start
    duration_ms: float
    status: str
    status_message: str | None
    gap_before_ms: float | None  # top-level spans: idle time since the previous ones ended


@dataclass(frozen=True)
class ServiceEdge:
    """Calls from one service operation to another (``service_map``)."""

    caller_service: str
    caller_operation: str
    callee_service: str
    callee_operation: str
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class TraceSummary:
    """A trace found by ``search_traces``: the whole trace in brief, and its first span that
    matched the filters."""

    trace_id: str
    started_at: datetime  # the trace's first start
    duration_ms: float  # first start to last end
    spans: int
    error_spans: int
    services: list[str]
    root_service: str  # the root span (or the earliest span, when the root never arrived)
    root_operation: str
    execution_id: int | None  # the smallest execution id any span of the trace carries
    match_span_id: str
    match_service: str
    match_operation: str
    match_duration_ms: float
    match_status: str
    match_status_message: str | None


@dataclass(frozen=True)
class SpanDetail:
    """One span with everything stored for it (``get_span``)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    service: str
    operation: str
    kind: str
    started_at: datetime
    completed_at: datetime
    duration_ms: float
    status: str
    status_message: str | None
    execution_id: int | None
    attributes: dict[str, Any]  # the metadata column
    events: list[Any]  # exceptions are events named "exception" with a stack trace
    links: list[Any]
    resource: dict[str, Any]
    scope: str | None
    otel: dict[str, Any]


@dataclass(frozen=True)
class ColumnDoc:
    """A column of the spans table with its type and ``COMMENT``."""

    name: str
    type: str
    comment: str | None


@dataclass(frozen=True)
class FunctionDoc:
    """A query function of the spans table: call signature, result columns, ``COMMENT``."""

    name: str
    arguments: str
    returns: str
    comment: str | None


@dataclass(frozen=True)
class TableDoc:
    """What a model needs to write SQL over the spans table (``describe_table``)."""

    table: str  # schema-qualified
    comment: str | None
    columns: list[ColumnDoc]
    functions: list[FunctionDoc]
