"""What each MCP tool does, without the SDK: a thin call into ``otel_pg_exporter.query`` and a
compact ``output.Report``. Failures are ``QueryError`` (no connection, unknown trace, a refused
query) or ``ValueError`` (bad arguments); the server turns both into tool errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otel_pg_exporter import query
from otel_pg_exporter.mcp.output import Report, fields, ms
from otel_pg_exporter.mcp.sandbox import Limits, run_readonly
from otel_pg_exporter.mcp.trim import subtree, trim
from otel_pg_exporter.query.traces import describe_table, get_span, search_traces, span_id_of

MAX_LIMIT = 100
MAX_SPANS = 300


@dataclass(frozen=True)
class Config:
    """Where the tools read: the DSN, the spans table and the query tool's limits."""

    dsn: str
    target: query.Target = field(default_factory=query.Target)
    limits: Limits = field(default_factory=Limits)


def _limit(limit: int, cap: int = MAX_LIMIT) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    return min(limit, cap)


def _more(report: Report, rows: int, limit: int, what: str) -> None:
    if rows >= limit:
        report.cut(f"there may be more {what} than the limit of {limit}: raise limit or narrow")


def search(
    config: Config,
    since: str,
    service: str | None,
    operation: str | None,
    errors_only: bool,
    min_ms: float | None,
    max_ms: float | None,
    execution_id: int | None,
    attributes: list[str] | None,
    limit: int,
) -> str:
    pairs: dict[str, str] = {}
    for item in attributes or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"an attribute filter is key=value, not {item!r}")
        pairs[key.strip()] = value
    limit = _limit(limit)
    with query.connect(config.dsn) as conn:
        found = search_traces(
            conn,
            config.target,
            query.parse_since(since),
            service=service,
            operation=operation,
            errors_only=errors_only,
            min_ms=min_ms,
            max_ms=max_ms,
            execution_id=execution_id,
            attributes=pairs,
            limit=limit,
        )
    report = Report(f"search_traces: {len(found)} trace(s) since {since}, newest match first")
    report.extend(fields(t) for t in found)
    _more(report, len(found), limit, "traces")
    if found:
        report.next("get_trace(trace_id) for a trace's span tree; recent_errors for errors only")
    else:
        report.next("widen since, drop a filter, or check names with slow_operations")
    return report.render()


def recent_errors(config: Config, since: str, service: str | None, limit: int) -> str:
    limit = _limit(limit)
    with query.connect(config.dsn) as conn:
        found = query.error_traces(
            conn, config.target, query.parse_since(since), service, limit=limit
        )
    report = Report(
        f"recent_errors: {len(found)} trace(s) with an error since {since}, newest first; "
        "each row is the trace's first error (usually the cause)"
    )
    report.extend(fields(t) for t in found)
    _more(report, len(found), limit, "traces")
    report.next(
        "get_span(trace_id, span_id) for the exception and stack trace; "
        "get_trace(trace_id) for what surrounds it; find_gaps(trace_id) for unexplained time"
    )
    return report.render()


def get_trace(
    config: Config,
    trace_id: str,
    span_id: str | None,
    max_spans: int,
    max_depth: int | None,
    min_ms: float,
) -> str:
    max_spans = _limit(max_spans, MAX_SPANS)
    with query.connect(config.dsn) as conn:
        spans = query.trace_tree(conn, config.target, trace_id)
    whole = spans
    if span_id:
        spans = subtree(spans, span_id_of(span_id))
    cut = trim(spans, max_spans=max_spans, max_depth=max_depth, min_ms=max(min_ms, 0.0))
    end = max(s.offset_ms + s.duration_ms for s in whole)
    errors = sum(s.status == "error" for s in spans)
    services = sorted({s.service for s in spans})
    scope = f"subtree of {span_id}: " if span_id else ""
    report = Report(
        f"get_trace {whole[0].trace_id}: {scope}{len(spans)} span(s) of {len(whole)}, "
        f"{ms(end)} ms, {errors} error span(s), {len(services)} service(s); depth first, "
        "offsets from the trace start"
    )
    report.extend(cut.rows)
    folded = [r for r in cut.rows if "folded_spans" in r]
    if folded:
        report.cut(
            f"{sum(r['folded_spans'] for r in folded)} span(s) folded into {len(folded)} "
            "row(s) with folded_spans; get_trace(span_id=parent_span_id, min_ms=0) expands one"
        )
    if cut.deeper:
        report.cut(
            f"{cut.deeper} span(s) deeper than max_depth {max_depth}: "
            f"get_trace(span_id={cut.deeper_below!r}) continues below"
        )
    if cut.left_out:
        report.cut(
            f"{cut.left_out} span(s) past max_spans {max_spans}: "
            f"get_trace(span_id={cut.resume_at!r}) shows the part where they begin"
        )
    report.next(
        "get_span(trace_id, span_id) for a span's attributes and exception; "
        "find_gaps(trace_id) and critical_path(trace_id) for where the time went"
    )
    return report.render()


def span(config: Config, trace_id: str, span_id: str) -> str:
    with query.connect(config.dsn) as conn:
        found = get_span(conn, config.target, trace_id, span_id)
    report = Report(f"get_span {found.trace_id} {found.span_id}")
    row: dict[str, Any] = fields(found)
    exceptions = [
        e.get("attributes", {})
        for e in found.events
        if isinstance(e, dict) and e.get("name") == "exception"
    ]
    report.row(row)
    if exceptions:
        report.next(
            f"{len(exceptions)} exception event(s) above (events, name exception: exception.type, "
            "exception.message, exception.stacktrace); find_gaps(trace_id) for the time around it"
        )
    if found.parent_span_id:
        report.next(f"the parent is get_span(trace_id, {found.parent_span_id!r})")
    return report.render()


def find_gaps(config: Config, trace_id: str, min_gap_ms: float) -> str:
    with query.connect(config.dsn) as conn:
        gaps = query.trace_gaps(conn, config.target, trace_id, min_gap_ms)
    report = Report(
        f"find_gaps {query.trace_id_of(trace_id)}: {len(gaps)} gap(s) of at least {min_gap_ms:g} "
        "ms, largest first: time inside parent_span_id covered by none of its children, "
        "between before_span_id (null: the parent's start) and after_span_id (null: its end)"
    )
    report.extend(fields(g, *_GAP_FIELDS) for g in gaps[:MAX_LIMIT])
    if len(gaps) > MAX_LIMIT:
        report.cut(f"{len(gaps) - MAX_LIMIT} smaller gap(s): raise min_gap_ms")
    report.next("get_span(trace_id, span_id) on the spans around a gap to see what it waited for")
    return report.render()


_GAP_FIELDS = (
    "parent_span_id",
    "parent_service",
    "parent_operation",
    "offset_ms",
    "gap_ms",
    "before_span_id",
    "before_operation",
    "after_span_id",
    "after_operation",
)


def critical_path(config: Config, trace_id: str) -> str:
    with query.connect(config.dsn) as conn:
        path = query.critical_path(conn, config.target, trace_id)
    report = Report(
        f"critical_path {query.trace_id_of(trace_id)}: {len(path)} span(s) that set the trace's "
        "duration, in start order; contribution_ms is each one's own time on the path"
    )
    report.extend(fields(p, *_PATH_FIELDS) for p in path[:MAX_SPANS])
    if len(path) > MAX_SPANS:
        report.cut(f"{len(path) - MAX_SPANS} later span(s) on the path")
    report.next("get_span(trace_id, span_id) on the span with the largest contribution_ms")
    return report.render()


_PATH_FIELDS = (
    "span_id",
    "parent_span_id",
    "service",
    "operation",
    "offset_ms",
    "duration_ms",
    "contribution_ms",
    "status",
)


def execution(config: Config, execution_id: int) -> str:
    with query.connect(config.dsn) as conn:
        spans = query.execution_trace(conn, config.target, execution_id)
    errors = [s for s in spans if s.status == "error"]
    traces = sorted({s.trace_id for s in spans})
    report = Report(
        f"execution_trace {execution_id}: {len(spans)} span(s) in {len(traces)} trace(s), "
        f"{len(errors)} error span(s), in time order; depth 0 spans carry the execution id and "
        "gap_before_ms, the idle time since the previous ones ended"
    )
    report.extend(fields(s, *_EXECUTION_FIELDS) for s in spans[:MAX_SPANS])
    if len(spans) > MAX_SPANS:
        report.cut(f"{len(spans) - MAX_SPANS} later span(s): get_trace(trace_id) per trace")
    if errors:
        report.next(
            "get_span(trace_id, span_id) on the error span that ended first (often the deepest) "
            "for its exception; find_gaps(trace_id) for time before it no span accounts for"
        )
    else:
        report.next("get_trace(trace_id) per trace; find_gaps(trace_id) for unexplained time")
    return report.render()


_EXECUTION_FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "depth",
    "service",
    "operation",
    "offset_ms",
    "duration_ms",
    "gap_before_ms",
    "status",
    "status_message",
)


def slow_operations(config: Config, since: str, service: str | None, limit: int) -> str:
    limit = _limit(limit)
    with query.connect(config.dsn) as conn:
        found = query.slow_operations(
            conn, config.target, query.parse_since(since), service, limit=limit
        )
    report = Report(
        f"slow_operations since {since}: {len(found)} operation(s), slowest p95 first (ms)"
    )
    report.extend(fields(o) for o in found)
    _more(report, len(found), limit, "operations")
    report.next("search_traces(service, operation, min_ms=<p95>) for examples of the slow ones")
    return report.render()


def service_map(config: Config, since: str, service: str | None, limit: int) -> str:
    limit = _limit(limit)
    with query.connect(config.dsn) as conn:
        edges = query.service_map(conn, config.target, query.parse_since(since), limit=limit)
    if service is not None:
        edges = [e for e in edges if service in (e.caller_service, e.callee_service)]
    report = Report(
        f"service_map since {since}: {len(edges)} caller -> callee edge(s), busiest first "
        "(callee p50/p95 in ms)"
    )
    report.extend(fields(e) for e in edges)
    _more(report, len(edges), limit, "edges")
    report.next("search_traces(service=callee_service, errors_only=true) where errors > 0")
    return report.render()


def schema(config: Config) -> str:
    with query.connect(config.dsn) as conn:
        doc = describe_table(conn, config.target)
    report = Report(
        f"schema of {doc.table}: {len(doc.columns)} column(s) and {len(doc.functions)} query "
        "function(s), each with its COMMENT; write SQL for the query tool from these",
        untrusted=False,
    )
    report.row({"table": doc.table, "comment": doc.comment})
    report.extend({"column": c.name, "type": c.type, "comment": c.comment} for c in doc.columns)
    report.extend(
        {"function": f"{f.name}({f.arguments})", "returns": f.returns, "comment": f.comment}
        for f in doc.functions
    )
    report.next(
        "query(sql) runs one read-only SELECT; prefer the functions (SELECT * FROM "
        "trace_tree('<trace id>')) and always bound started_at or filter by trace_id"
    )
    return report.render()


def run_query(config: Config, sql: str) -> str:
    result = run_readonly(config.dsn, config.target, sql, config.limits)
    report = Report(
        f"query: {len(result.rows)} row(s) in {result.elapsed_ms:g} ms (read-only; at most "
        f"{config.limits.max_rows} rows); each row is a JSON array in the order of columns"
    )
    report.row({"columns": result.columns})
    report.extend(result.rows)
    if result.more:
        report.cut(result.more + ": add a LIMIT, a narrower WHERE or fewer columns")
    return report.render()
