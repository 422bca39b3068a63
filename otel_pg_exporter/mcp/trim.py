"""``get_trace`` for a model's context: a trace's depth-first span list cut to a page.

A span's subtree follows it in ``trace_tree`` order, so every rule here is one pass that skips
ahead: spans deeper than ``max_depth`` are counted, spans shorter than ``min_ms`` are folded
with their subtrees into one row per parent, a run of more than ``RUN_KEEP`` consecutive
siblings with the same service and operation keeps its first ones and folds the rest, and past
``max_spans`` shown spans the rest are counted. Error spans are never folded on their own (a
folded row counts the errors inside it). Every fold and count is reported, with the span id to
ask for next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_pg_exporter.errors import NotFound
from otel_pg_exporter.mcp.output import ms
from otel_pg_exporter.query.rows import TreeSpan

RUN_KEEP = 3
PATH_KEEP = 4  # a longer path shows its first name, an elision and its last names


@dataclass
class Trimmed:
    """The rows to show (spans and fold rows, depth first) and what was left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    shown: int = 0
    deeper: int = 0
    deeper_below: str | None = None  # a shown span whose children are hidden by max_depth
    left_out: int = 0
    resume_at: str | None = None  # the parent of the first span left out by max_spans


def path_of(names: Sequence[str]) -> list[str]:
    """Operation names from the root to the span, with the middle elided when long."""
    if len(names) <= PATH_KEEP:
        return list(names)
    return [names[0], f"…{len(names) - PATH_KEEP + 1} more…", *names[-(PATH_KEEP - 2) :]]


def span_row(span: TreeSpan) -> dict[str, Any]:
    row: dict[str, Any] = {
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "depth": span.depth,
        "path": path_of(span.path),
        "service": span.service,
        "operation": span.operation,
        "kind": span.kind,
        "offset_ms": ms(span.offset_ms),
        "duration_ms": ms(span.duration_ms),
        "self_ms": ms(span.self_ms),
        "status": span.status,
    }
    if span.status_message:
        row["status_message"] = span.status_message
    if span.execution_id is not None:
        row["execution_id"] = span.execution_id
    if span.is_orphan:
        row["orphan"] = True
    return row


def subtree(spans: Sequence[TreeSpan], span_id: str) -> list[TreeSpan]:
    """The span and everything under it; NotFound when the trace has no such span."""
    for start, span in enumerate(spans):
        if span.span_id == span_id:
            end = start + 1
            while end < len(spans) and spans[end].depth > span.depth:
                end += 1
            return list(spans[start:end])
    raise NotFound(f"no span {span_id} in this trace")


def _reason(span: TreeSpan, relative: int, repeats: int, min_ms: float) -> tuple[Any, ...] | None:
    """Why ``span`` (with its subtree) is folded, as a key of its fold row; None: shown."""
    if relative == 0 or span.status == "error":
        return None
    if min_ms > 0 and span.duration_ms < min_ms:
        return ("short", span.parent_span_id)
    if repeats > RUN_KEEP:
        return ("run", span.parent_span_id, span.service, span.operation)
    return None


def _fold_row(span: TreeSpan, reason: tuple[Any, ...], min_ms: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "folded_spans": 0,
        "parent_span_id": span.parent_span_id,
        "depth": span.depth,
    }
    if reason[0] == "short":
        row["why"] = f"shorter than {min_ms:g} ms"
    else:
        row["why"] = f"same service and operation as the {RUN_KEEP} siblings before"
        row.update(service=span.service, operation=span.operation, first_span_id=span.span_id)
    row.update(total_ms=0.0, max_ms=0.0, errors=0)
    return row


def trim(
    spans: Sequence[TreeSpan], *, max_spans: int, max_depth: int | None, min_ms: float
) -> Trimmed:
    """``spans`` (one trace or subtree, depth first) cut to at most ``max_spans`` span rows."""
    out = Trimmed()
    base = spans[0].depth if spans else 0
    folds: dict[tuple[Any, ...], dict[str, Any]] = {}
    last_sibling: dict[str | None, tuple[tuple[str, str], int]] = {}
    skip_below: int | None = None  # skip the subtree of the span at this depth
    fold: dict[str, Any] | None = None  # ... into this fold row (None: count it as left out)
    for span in spans:
        if skip_below is not None and span.depth > skip_below:
            if fold is None:
                out.left_out += 1
            else:
                fold["folded_spans"] += 1
                fold["errors"] += span.status == "error"
            continue
        skip_below, fold = None, None
        relative = span.depth - base
        if max_depth is not None and relative > max_depth:
            out.deeper += 1
            out.deeper_below = out.deeper_below or span.parent_span_id
            continue
        key = (span.service, span.operation)
        previous, repeats = last_sibling.get(span.parent_span_id, (None, 0))
        repeats = repeats + 1 if previous == key else 1
        last_sibling[span.parent_span_id] = (key, repeats)
        reason = _reason(span, relative, repeats, min_ms)
        if reason is not None:
            if reason not in folds:
                folds[reason] = _fold_row(span, reason, min_ms)
                out.rows.append(folds[reason])
            fold = folds[reason]
            fold["folded_spans"] += 1
            fold["total_ms"] = ms(fold["total_ms"] + span.duration_ms)
            fold["max_ms"] = ms(max(fold["max_ms"], span.duration_ms))
            skip_below = span.depth
            continue
        if out.shown >= max_spans:
            out.left_out += 1
            out.resume_at = out.resume_at or span.parent_span_id
            skip_below = span.depth
            continue
        out.rows.append(span_row(span))
        out.shown += 1
    return out
