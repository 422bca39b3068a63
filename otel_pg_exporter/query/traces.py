"""The query layer: pure functions over a connection, one per SQL function, returning rows.

The CLI, the MCP server and the tests call these; none re-implements the SQL functions of
``sql/0002_query_functions.sql``. Every call runs in a read-only transaction with a statement
timeout, and every failure becomes a ``QueryError`` whose message holds no password.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from otel_pg_exporter._dsn import open_connection, redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import NotFound, QueryError
from otel_pg_exporter.query.rows import (
    ColumnDoc,
    ErrorTrace,
    ExecutionSpan,
    FunctionDoc,
    Gap,
    OrphanGroup,
    PathSpan,
    ServiceEdge,
    SlowOperation,
    SpanDetail,
    TableDoc,
    TraceSummary,
    TreeSpan,
)
from otel_pg_exporter.schema.table import DEFAULT_TABLE, FUNCTIONS, function_name

_R = TypeVar("_R")

APPLICATION_NAME = "otel-pg query"
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 30_000
_HEX = re.compile(r"[0-9a-f]+")
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 604_800}


@dataclass(frozen=True)
class Target:
    """The spans table (and so its functions) a query reads."""

    schema: str | None = None
    table: str = DEFAULT_TABLE

    def relation(self) -> sql.Identifier:
        return (
            sql.Identifier(self.schema, self.table) if self.schema else sql.Identifier(self.table)
        )

    def function(self, base: str) -> sql.Identifier:
        name = function_name(self.table, base)
        return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)


def trace_id_of(text: str) -> str:
    """A trace id as stored: 32 lowercase hex; 16 hex (older services) is left-padded with
    zeros, as B3 does. Anything else raises ValueError."""
    folded = text.strip().lower()
    if len(folded) == 16 and _HEX.fullmatch(folded):
        return folded.rjust(32, "0")
    if len(folded) != 32 or not _HEX.fullmatch(folded):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ValueError(f"a trace id is 32 hex characters, not {shown!r}")
    return folded


def parse_duration(text: str) -> timedelta | None:
    """``90s``, ``30m``, ``1h``, ``2d``, ``1w`` as a timedelta; None when the text is not one."""
    match = _SINCE.match(text)
    if match is None:
        return None
    return timedelta(seconds=float(match[1]) * _UNITS[match[2].lower()])


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``1h``, ``2d``, ``1w`` (before now) or an ISO 8601 time (UTC when it names no
    zone); ValueError otherwise."""
    now = now or datetime.now(timezone.utc)
    duration = parse_duration(text)
    if duration is not None:
        return now - duration
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since takes 30m, 1h, 2d, 1w or an ISO 8601 time, not {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for queries; a failure to connect is a QueryError without the password."""
    conn = open_connection(
        dsn, application_name=APPLICATION_NAME, error=QueryError, connect_timeout=CONNECT_TIMEOUT_S
    )
    with conn:
        yield conn


def _fetch_read_only(
    conn: psycopg.Connection[Any], statement: sql.SQL | sql.Composed, params: Any
) -> list[dict[str, Any]]:
    """Rows of one statement in a read-only transaction, under the statement timeout."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        # JIT compilation costs ~1 s on a large trace's recursive plan (its row estimates
        # are huge) and saves nothing on the few rows these functions read.
        cur.execute(
            "SELECT set_config('statement_timeout', %s, true), set_config('jit', 'off', true)",
            (str(STATEMENT_TIMEOUT_MS),),
        )
        cur.execute(statement, params)
        return cur.fetchall()


def _call(
    conn: psycopg.Connection[Any],
    target: Target,
    function: str,
    arguments: Sequence[Any],
    row_type: type[_R],
    *,
    limit: int | None = None,
    **extra: Any,
) -> list[_R]:
    """``SELECT * FROM function(arguments) [LIMIT n]`` in a read-only transaction."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    query = sql.SQL("SELECT * FROM {}({})").format(
        target.function(function), sql.SQL(", ").join(sql.Placeholder() * len(arguments))
    )
    if limit is not None:
        query += sql.SQL(" LIMIT {}").format(sql.Literal(limit))
    with untraced():
        try:
            rows = _fetch_read_only(conn, query, list(arguments))
        except psycopg.errors.UndefinedFunction:
            raise QueryError(
                f"the query functions are not installed for {target.table!r}: "
                "run `otel-pg migrate` (PostgreSQL 14 or newer)"
            ) from None
        except psycopg.errors.QueryCanceled:
            raise QueryError(
                f"{function} took longer than {STATEMENT_TIMEOUT_MS // 1000} s; "
                "narrow it with --since or --service"
            ) from None
        except psycopg.Error as exc:
            raise QueryError(f"{function}: {type(exc).__name__}: {redact_dsn(str(exc))}") from None
    return [row_type(**extra, **row) for row in rows]


def trace_tree(conn: psycopg.Connection[Any], target: Target, trace_id: str) -> list[TreeSpan]:
    """Every span of a trace, depth first; NotFound when it has none."""
    trace_id = trace_id_of(trace_id)
    spans = _call(conn, target, "trace_tree", [trace_id], TreeSpan, trace_id=trace_id)
    if not spans:
        raise NotFound(f"no spans of trace {trace_id} in {target.table!r}")
    return spans


def trace_gaps(
    conn: psycopg.Connection[Any], target: Target, trace_id: str, min_gap_ms: float = 0.0
) -> list[Gap]:
    """Time inside spans covered by none of their children, largest first; NotFound when the
    trace has no spans (an empty list means a trace without gaps)."""
    trace_id = trace_id_of(trace_id)
    gaps = _call(conn, target, "trace_gaps", [trace_id, float(min_gap_ms)], Gap, trace_id=trace_id)
    if not gaps and not _trace_exists(conn, target, trace_id):
        raise NotFound(f"no spans of trace {trace_id} in {target.table!r}")
    return gaps


def _trace_exists(conn: psycopg.Connection[Any], target: Target, trace_id: str) -> bool:
    table = target.relation()
    with untraced():
        try:
            row = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE trace_id = %s)").format(table),
                (trace_id,),
            ).fetchone()
        except psycopg.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {redact_dsn(str(exc))}") from None
    return bool(row and row[0])


def critical_path(conn: psycopg.Connection[Any], target: Target, trace_id: str) -> list[PathSpan]:
    """The spans that determine the trace's duration, in start order."""
    trace_id = trace_id_of(trace_id)
    return _call(conn, target, "critical_path", [trace_id], PathSpan, trace_id=trace_id)


def orphan_spans(
    conn: psycopg.Connection[Any],
    target: Target,
    since: datetime,
    service: str | None = None,
    *,
    limit: int | None = None,
) -> list[OrphanGroup]:
    """Spans whose parent never arrived, by service and operation."""
    return _call(conn, target, "orphan_spans", [since, service], OrphanGroup, limit=limit)


def error_traces(
    conn: psycopg.Connection[Any],
    target: Target,
    since: datetime,
    service: str | None = None,
    *,
    limit: int | None = None,
) -> list[ErrorTrace]:
    """Traces with an error, newest first, each by its first error."""
    return _call(conn, target, "error_traces", [since, service], ErrorTrace, limit=limit)


def slow_operations(
    conn: psycopg.Connection[Any],
    target: Target,
    since: datetime,
    service: str | None = None,
    *,
    limit: int | None = None,
) -> list[SlowOperation]:
    """Duration percentiles by service and operation, slowest p95 first."""
    return _call(conn, target, "slow_operations", [since, service], SlowOperation, limit=limit)


def execution_trace(
    conn: psycopg.Connection[Any], target: Target, execution_id: int
) -> list[ExecutionSpan]:
    """Every span of one job execution, in time order; NotFound when it has none."""
    if isinstance(execution_id, bool) or not isinstance(execution_id, int):
        raise ValueError(f"an execution id is an integer, not {execution_id!r}")
    spans = _call(conn, target, "execution_trace", [execution_id], ExecutionSpan)
    if not spans:
        raise NotFound(f"no spans of execution {execution_id} in {target.table!r}")
    return spans


def service_map(
    conn: psycopg.Connection[Any], target: Target, since: datetime, *, limit: int | None = None
) -> list[ServiceEdge]:
    """Calls between services (and client → server pairs), busiest first."""
    return _call(conn, target, "service_map", [since], ServiceEdge, limit=limit)


# --- reads without a SQL function of their own ----------------------------------------------

_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_JSON_SCALAR = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null")


def span_id_of(text: str) -> str:
    """A span id as stored: 16 lowercase hex; anything else raises ValueError."""
    folded = text.strip().lower()
    if not _SPAN_ID.fullmatch(folded):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ValueError(f"a span id is 16 hex characters, not {shown!r}")
    return folded


def _read(
    conn: psycopg.Connection[Any], label: str, statement: sql.SQL | sql.Composed, params: Any
) -> list[dict[str, Any]]:
    """Rows of one fixed, parameterised statement in a read-only transaction, as ``_call``."""
    with untraced():
        try:
            return _fetch_read_only(conn, statement, params)
        except psycopg.errors.UndefinedTable:
            raise QueryError(
                f"{label}: the spans table does not exist: run `otel-pg migrate`"
            ) from None
        except psycopg.errors.QueryCanceled:
            raise QueryError(
                f"{label} took longer than {STATEMENT_TIMEOUT_MS // 1000} s; narrow it"
            ) from None
        except psycopg.Error as exc:
            raise QueryError(f"{label}: {type(exc).__name__}: {redact_dsn(str(exc))}") from None


def _attribute_candidates(key: str, value: str) -> list[Jsonb]:
    """The JSON objects ``metadata @>`` may contain for ``key=value``: the text, and the typed
    value too when the text reads as a JSON number, boolean or null."""
    candidates = [Jsonb({key: value})]
    if _JSON_SCALAR.fullmatch(value.strip()):
        candidates.append(Jsonb({key: json.loads(value.strip())}))
    return candidates


def search_traces(
    conn: psycopg.Connection[Any],
    target: Target,
    since: datetime,
    *,
    service: str | None = None,
    operation: str | None = None,
    errors_only: bool = False,
    min_ms: float | None = None,
    max_ms: float | None = None,
    execution_id: int | None = None,
    attributes: Mapping[str, str] | None = None,
    limit: int = 20,
) -> list[TraceSummary]:
    """Traces with a span started since ``since`` matching every filter, newest match first.

    A span matches when it has the service, operation, error status, duration bounds (ms),
    execution id and attributes given: each ``attributes`` entry is ``metadata @>`` the text
    value, or the typed value when the text reads as a JSON number or boolean (``500``
    matches both ``"500"`` and ``500``). Each trace is described whole (duration, spans,
    errors, services, root) with its first matching span.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    if execution_id is not None and (
        isinstance(execution_id, bool) or not isinstance(execution_id, int)
    ):
        raise ValueError(f"an execution id is an integer, not {execution_id!r}")
    table = target.relation()
    conditions: list[sql.Composable] = [
        sql.SQL("s.started_at >= %(since)s"),
        sql.SQL("(%(service)s::text IS NULL OR s.service = %(service)s::text)"),
        sql.SQL("(%(operation)s::text IS NULL OR s.operation = %(operation)s::text)"),
        sql.SQL("(NOT %(errors)s OR s.status = 'error')"),
        sql.SQL("(%(min_ms)s::float8 IS NULL OR s.duration_ms >= %(min_ms)s::float8)"),
        sql.SQL("(%(max_ms)s::float8 IS NULL OR s.duration_ms <= %(max_ms)s::float8)"),
        sql.SQL("(%(execution)s::bigint IS NULL OR s.execution_id = %(execution)s::bigint)"),
    ]
    params: dict[str, Any] = {
        "since": since,
        "service": service,
        "operation": operation,
        "errors": bool(errors_only),
        "min_ms": None if min_ms is None else float(min_ms),
        "max_ms": None if max_ms is None else float(max_ms),
        "execution": execution_id,
        "limit": limit,
    }
    for i, (key, value) in enumerate((attributes or {}).items()):
        conditions.append(sql.SQL("s.metadata @> ANY({})").format(sql.Placeholder(f"attr{i}")))
        params[f"attr{i}"] = _attribute_candidates(str(key), str(value))
    statement = sql.SQL(
        """
        WITH hits AS (
            SELECT DISTINCT ON (s.trace_id) s.trace_id, s.span_id, s.service, s.operation,
                   s.duration_ms, s.status, s.status_message, s.started_at
              FROM {table} s
             WHERE {conditions}
             ORDER BY s.trace_id, s.started_at, s.span_id
        ),
        picked AS (SELECT * FROM hits ORDER BY started_at DESC, trace_id LIMIT %(limit)s)
        SELECT p.trace_id, whole.started_at,
               (extract(epoch FROM whole.completed_at - whole.started_at) * 1000)::float8
                   AS duration_ms,
               whole.spans, whole.error_spans, whole.services, whole.execution_id,
               root.service AS root_service, root.operation AS root_operation,
               p.span_id AS match_span_id, p.service AS match_service,
               p.operation AS match_operation, p.duration_ms AS match_duration_ms,
               p.status AS match_status, p.status_message AS match_status_message
          FROM picked p
          CROSS JOIN LATERAL (
              SELECT min(a.started_at) AS started_at, max(a.completed_at) AS completed_at,
                     count(*) AS spans, count(*) FILTER (WHERE a.status = 'error') AS error_spans,
                     array_agg(DISTINCT a.service ORDER BY a.service) AS services,
                     min(a.execution_id) AS execution_id
                FROM {table} a
               WHERE a.trace_id = p.trace_id
          ) AS whole
          CROSS JOIN LATERAL (
              SELECT r.service, r.operation
                FROM {table} r
               WHERE r.trace_id = p.trace_id
               ORDER BY (r.parent_span_id IS NULL) DESC, r.started_at, r.span_id
               LIMIT 1
          ) AS root
         ORDER BY p.started_at DESC, p.trace_id
        """
    ).format(table=table, conditions=sql.SQL("\n               AND ").join(conditions))
    rows = _read(conn, "search_traces", statement, params)
    return [TraceSummary(**row) for row in rows]


def get_span(
    conn: psycopg.Connection[Any], target: Target, trace_id: str, span_id: str
) -> SpanDetail:
    """One span with its attributes, events (exception stack traces), links, resource, scope
    and OpenTelemetry fields; NotFound when the trace has no such span."""
    trace_id = trace_id_of(trace_id)
    span_id = span_id_of(span_id)
    statement = sql.SQL(
        """
        SELECT trace_id, span_id, parent_span_id, service, operation, kind, started_at,
               completed_at, duration_ms, status, status_message, execution_id,
               metadata AS attributes, events, links, resource, scope, otel
          FROM {} WHERE trace_id = %s AND span_id = %s
        """
    ).format(target.relation())
    rows = _read(conn, "get_span", statement, (trace_id, span_id))
    if not rows:
        raise NotFound(f"no span {span_id} in trace {trace_id} in {target.table!r}")
    row = rows[0]
    for key, empty in (("attributes", {}), ("events", []), ("links", []), ("resource", {})):
        if not isinstance(row[key], type(empty)):
            row[key] = empty
    if not isinstance(row["otel"], dict):
        row["otel"] = {}
    return SpanDetail(**row)


def describe_table(conn: psycopg.Connection[Any], target: Target) -> TableDoc:
    """The spans table's columns (type and ``COMMENT``) and its query functions (signature,
    result and ``COMMENT``), from the catalogs; NotFound when the table does not exist."""
    rows = _read(
        conn,
        "describe_table",
        sql.SQL(
            """
            SELECT c.oid::regclass::text AS table, c.relnamespace AS schema_oid,
                   obj_description(c.oid, 'pg_class') AS comment
              FROM pg_class c WHERE c.oid = to_regclass(%s)
            """
        ),
        (target.relation().as_string(conn),),
    )
    if not rows:
        raise NotFound(f"no table {target.table!r}: run `otel-pg migrate`")
    found = rows[0]
    columns = _read(
        conn,
        "describe_table",
        sql.SQL(
            """
            SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
                   col_description(a.attrelid, a.attnum) AS comment
              FROM pg_attribute a
             WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum
            """
        ),
        (target.relation().as_string(conn),),
    )
    names = [function_name(target.table, base) for base in FUNCTIONS]
    functions = _read(
        conn,
        "describe_table",
        sql.SQL(
            """
            SELECT p.proname AS name, pg_get_function_arguments(p.oid) AS arguments,
                   pg_get_function_result(p.oid) AS returns,
                   obj_description(p.oid, 'pg_proc') AS comment
              FROM pg_proc p
             WHERE p.pronamespace = %s::oid AND p.proname = ANY(%s)
             ORDER BY array_position(%s, p.proname::text)
            """
        ),
        (found["schema_oid"], names, names),
    )
    return TableDoc(
        table=found["table"],
        comment=found["comment"],
        columns=[ColumnDoc(**column) for column in columns],
        functions=[FunctionDoc(**function) for function in functions],
    )
