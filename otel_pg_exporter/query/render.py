"""Query rows as text: a trace waterfall and tables for a terminal, JSON for programs.

Rendering is separate from querying: every function takes rows (``query.rows``) and options
and returns a ``str``; nothing here touches a database, reads the environment or writes
anywhere, so the caller decides the width and whether to colour. Span data is written by
whoever sends requests to a traced service, so every field goes through ``clean`` before it is
placed on a line: the only escape sequences in any output are the ``SGR_CODES`` the renderers
add themselves, and only when ``color=True``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from typing import Any

from otel_pg_exporter.query._draw import (
    BOLD,
    DIM,
    MIN_WIDTH,
    SGR_CODES,
    Line,
    clean,
    cut,
    waterfall,
)
from otel_pg_exporter.query.rows import Gap, TreeSpan

__all__ = [
    "CRITICAL_PATH_COLUMNS",
    "ERROR_COLUMNS",
    "EXECUTION_COLUMNS",
    "GAP_COLUMNS",
    "MIN_WIDTH",
    "ORPHAN_COLUMNS",
    "SERVICE_MAP_COLUMNS",
    "SGR_CODES",
    "SLOW_COLUMNS",
    "Columns",
    "clean",
    "render_table",
    "render_waterfall",
    "to_json",
]

Columns = tuple[tuple[str, str], ...]  # (header, attribute name) pairs

# Ready-made column sets, one per row type. Id columns are never cut (a trace id is 32 hex
# characters you copy into the next command): text columns shrink instead, so the ids come first.
ERROR_COLUMNS: Columns = (
    ("trace id", "trace_id"),
    ("first error", "first_error_at"),
    ("errors", "error_spans"),
    ("service", "service"),
    ("operation", "operation"),
    ("exception", "exception_type"),
    ("message", "status_message"),
)
GAP_COLUMNS: Columns = (
    ("parent span", "parent_span_id"),
    ("at ms", "offset_ms"),
    ("gap ms", "gap_ms"),
    ("service", "parent_service"),
    ("parent", "parent_operation"),
    ("after", "before_operation"),
    ("before", "after_operation"),
)
ORPHAN_COLUMNS: Columns = (
    ("example trace", "example_trace_id"),
    ("spans", "spans"),
    ("remote", "remote_parents"),
    ("last seen", "last_seen"),
    ("service", "service"),
    ("operation", "operation"),
)
SLOW_COLUMNS: Columns = (
    ("service", "service"),
    ("operation", "operation"),
    ("calls", "calls"),
    ("errors", "errors"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("total ms", "total_ms"),
)
SERVICE_MAP_COLUMNS: Columns = (
    ("caller", "caller_service"),
    ("caller operation", "caller_operation"),
    ("callee", "callee_service"),
    ("callee operation", "callee_operation"),
    ("calls", "calls"),
    ("errors", "errors"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
)
EXECUTION_COLUMNS: Columns = (
    ("span", "span_id"),
    ("at ms", "offset_ms"),
    ("ms", "duration_ms"),
    ("idle before", "gap_before_ms"),
    ("depth", "depth"),
    ("service", "service"),
    ("operation", "operation"),
    ("status", "status"),
    ("message", "status_message"),
)
CRITICAL_PATH_COLUMNS: Columns = (
    ("span", "span_id"),
    ("at ms", "offset_ms"),
    ("on path ms", "contribution_ms"),
    ("ms", "duration_ms"),
    ("service", "service"),
    ("operation", "operation"),
    ("status", "status"),
)

_MIN_TEXT_COLUMN = 4  # "ab…" and a blank: narrower says nothing


def render_waterfall(
    spans: Sequence[TreeSpan],
    *,
    width: int = 100,
    color: bool = False,
    gaps: Sequence[Gap] = (),
    min_gap_ms: float = 0.0,
    critical: Collection[str] = (),
    max_depth: int | None = None,
    min_ms: float | None = None,
    collapse_after: int = 3,
) -> str:
    """A trace as a terminal waterfall: one line per span in the given depth-first order.

    Each line holds a critical-path marker (``*``, for the span ids in ``critical``), the
    operation indented two spaces per depth, the service, a bar drawn to scale against the
    trace's duration (at least one cell), the duration with self time and the status. An error
    span is followed by a line with its status message, a span whose parent never arrived by
    ``⚠ parent missing``. ``gaps`` of at least ``min_gap_ms`` get a line under their parent,
    between the children they separate, with a dotted bar where the gap is. Above: a header
    (trace id, duration, counts, services) and a time ruler.

    For big traces: ``max_depth`` hides deeper spans, ``min_ms`` hides shorter spans with their
    subtrees (each counted in a note at the end), and a run of more than ``collapse_after``
    consecutive siblings with the same service and operation shows its first ``collapse_after``
    and one summary line. No line is longer than ``width`` (at least 40); SGR codes only with
    ``color``. No spans: a one-line message.
    """
    return waterfall(
        spans,
        width=width,
        color=color,
        gaps=gaps,
        min_gap_ms=min_gap_ms,
        critical=critical,
        max_depth=max_depth,
        min_ms=min_ms,
        collapse_after=collapse_after,
    )


def render_table(
    rows: Sequence[Any],
    columns: Sequence[tuple[str, str]],
    *,
    width: int = 100,
    color: bool = False,
) -> str:
    """``rows`` as an aligned table of ``columns`` ((header, attribute name) pairs; the module
    has one set per row type): a header, a rule, one line per row.

    Floats have one decimal, datetimes read ``2026-11-30 13:04:05Z`` (UTC), None is ``-``,
    numbers are right-aligned and every text is cleaned. Columns are as wide as their content;
    while a line would be wider than ``width`` (at least 40), the widest text column loses a
    character (cut with ``…``). Id columns (``*_id``), numbers and times are never cut; when even
    that is too wide, the lines are cut at ``width`` on the right. No rows: ``no rows``.
    """
    width = max(width, MIN_WIDTH)
    if not rows or not columns:
        return "no rows"
    attributes = [attribute for _, attribute in columns]
    values = [[getattr(row, attribute, None) for attribute in attributes] for row in rows]
    cells = [[_cell(v, a, width) for v, a in zip(row, attributes, strict=True)] for row in values]
    heads = [clean(header, width) for header, _ in columns]
    numeric = [all(_is_number(row[i]) for row in values) for i in range(len(columns))]
    shrinkable = [
        not attribute.endswith("_id") and all(_is_text(row[i]) for row in values)
        for i, attribute in enumerate(attributes)
    ]
    widths = [max(len(heads[i]), *(len(row[i]) for row in cells)) for i in range(len(columns))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        candidates = [i for i, ok in enumerate(shrinkable) if ok and widths[i] > _MIN_TEXT_COLUMN]
        if not candidates:
            break
        widths[max(candidates, key=widths.__getitem__)] -= 1
        excess -= 1
    lines = [
        Line().add(_aligned(heads, widths, numeric), BOLD),
        Line().add("  ".join("─" * w for w in widths), DIM),
        *(Line().add(_aligned(row, widths, numeric)) for row in cells),
    ]
    return "\n".join(line.render(width, color) for line in lines)


def to_json(rows: Sequence[Any]) -> str:
    """``rows`` (dataclass instances) as a JSON array of objects, field for field, in the given
    order; datetimes as ISO 8601 with their offset (UTC when they have none). ASCII only: every
    control, bidi or other non-ASCII character is a ``\\u`` escape, so the text is safe to print.
    """
    objects = []
    for row in rows:
        if not dataclasses.is_dataclass(row) or isinstance(row, type):
            raise TypeError(f"to_json takes dataclass rows, not {type(row).__name__}")
        objects.append(dataclasses.asdict(row))
    return json.dumps(objects, default=_json_value, ensure_ascii=True, indent=2)


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _is_number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_text(value: object) -> bool:
    return value is None or isinstance(value, str | list | tuple)


def _cell(value: object, attribute: str, limit: int) -> str:
    """One value as table text, at most ``limit`` characters."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value) if attribute.endswith("_id") else f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, datetime):
        return _aware(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list | tuple):
        return clean(" > ".join(str(item) for item in value), limit)
    return clean(str(value), limit)


def _aligned(texts: Sequence[str], widths: Sequence[int], numeric: Sequence[bool]) -> str:
    return "  ".join(
        cut(text, w).rjust(w) if right else cut(text, w).ljust(w)
        for text, w, right in zip(texts, widths, numeric, strict=True)
    )
