"""Terminal drawing behind ``query.render``: text made safe, styled lines, the trace waterfall.

Nothing here reads the environment or writes anywhere: every function takes rows and options
and returns text. Span data is hostile input, so every field passes through ``clean`` before it
is placed on a line, and the only escape sequences in any output are the ``SGR_CODES`` below,
added by ``Line.render`` when the caller asks for colour.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from otel_pg_exporter.query.rows import Gap, TreeSpan

MIN_WIDTH = 40
ELLIPSIS = "…"
RESET = "\x1b[0m"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
RED = "\x1b[31m"
YELLOW = "\x1b[33m"
SGR_CODES = (RESET, BOLD, DIM, RED, YELLOW)  # every escape sequence a renderer emits

_SHOWN_AS = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Cc: C0, DEL and C1 (ESC, CSI, NUL, backspace...); Cf: bidi embeddings, overrides and isolates,
# zero-width and other invisible format characters; Cs: lone surrogates, which cannot even be
# encoded for output; Zl, Zp: line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_BAR = "█"
_GAP_BAR = "┄"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHOWN_AS:
        return _SHOWN_AS[char]
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def clean(text: str | None, max_chars: int | None = None) -> str:
    """``text`` safe for a terminal: every control, format and separator character is shown as
    a visible escape (``\\x1b``, ``\\n``, ``\\u202e``), so no escape sequence, carriage return or
    bidi override reaches the screen; ``None`` is empty. With ``max_chars`` the result is cut
    to that many characters, the last one an ellipsis."""
    if not text:
        return ""
    safe = _NOT_PRINTABLE_ASCII.sub(_escape, text)
    return safe if max_chars is None else cut(safe, max_chars)


def cut(text: str, max_chars: int) -> str:
    """``text`` in at most ``max_chars`` characters, ending in an ellipsis when shortened."""
    if len(text) <= max_chars:
        return text
    return text[: max_chars - 1] + ELLIPSIS if max_chars > 0 else ""


def plural(count: int, word: str) -> str:
    """``1 span``, ``1,996 spans``."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def ms(value: float) -> str:
    """Milliseconds with one decimal: ``1,000.0``."""
    return f"{value:,.1f}"


@dataclass
class Line:
    """One output line as (text, style) parts: styles become SGR codes only with colour, so a
    line's width is the same either way. Parts hold clean text only."""

    parts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, text: str, style: str = "") -> Line:
        if text:
            self.parts.append((text, style))
        return self

    def render(self, width: int, color: bool) -> str:
        """The line cut to ``width`` characters (an ellipsis where cut), trailing blanks
        dropped, with SGR codes around styled parts when ``color``."""
        total = sum(len(text) for text, _ in self.parts)
        room = width if total <= width else width - 1
        kept: list[tuple[str, str]] = []
        for text, style in self.parts:
            piece = text[: max(room, 0)]
            room -= len(piece)
            if piece:
                kept.append((piece, style))
        if total > width:
            kept.append((ELLIPSIS, kept[-1][1] if kept else ""))
        while kept and not kept[-1][0].rstrip():
            kept.pop()
        if kept:
            kept[-1] = (kept[-1][0].rstrip(), kept[-1][1])
        if not color:
            return "".join(text for text, _ in kept)
        return "".join(f"{style}{text}{RESET}" if style else text for text, style in kept)


# --- the waterfall ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GapRow:
    gap: Gap
    depth: int


@dataclass
class _Collapsed:
    """Siblings beyond ``collapse_after`` in a run of the same service and operation."""

    depth: int
    operation: str
    count: int = 0
    nested: int = 0  # descendants hidden with them
    total_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0


_Entry = TreeSpan | _GapRow | _Collapsed


@dataclass
class _Selection:
    entries: list[_Entry] = field(default_factory=list)
    deeper: int = 0
    short: int = 0
    short_errors: int = 0


@dataclass(frozen=True)
class _Layout:
    width: int
    name: int
    service: int
    bar: int
    dur: int  # the duration number, right-aligned
    self_: int  # " (self 2.1)", left-aligned; 0 when there is no room for it
    status: int  # 0 when no span has a status worth showing or there is no room
    t0: float
    total: float


def is_error(span: TreeSpan) -> bool:
    return span.status.lower() == "error"


def _status(span: TreeSpan) -> str:
    return "" if span.status.lower() in {"", "unset"} else clean(span.status.upper(), 6)


def _tree(spans: Sequence[TreeSpan]) -> tuple[list[int], list[int]]:
    """For each span, where its subtree ends (exclusive) and its parent's index (-1: a root),
    from the depths of the depth-first order."""
    ends = [len(spans)] * len(spans)
    parents = [-1] * len(spans)
    stack: list[int] = []
    for i, span in enumerate(spans):
        while stack and spans[stack[-1]].depth >= span.depth:
            ends[stack.pop()] = i
        parents[i] = stack[-1] if stack else -1
        stack.append(i)
    return ends, parents


def _gap_slots(
    spans: Sequence[TreeSpan], ends: list[int], gaps: Sequence[Gap], min_gap_ms: float
) -> dict[int, list[tuple[int, Gap]]]:
    """Gaps by the span index they are shown before: the child that follows the gap, else the
    end of the child that precedes it, else just under the parent."""
    index = {span.span_id: i for i, span in enumerate(spans)}
    slots: dict[int, list[tuple[int, Gap]]] = {}
    for gap in sorted(gaps, key=lambda gap: gap.offset_ms):
        parent = index.get(gap.parent_span_id)
        if parent is None or gap.gap_ms < min_gap_ms:
            continue
        after = index.get(gap.after_span_id) if gap.after_span_id else None
        before = index.get(gap.before_span_id) if gap.before_span_id else None
        if after is not None:
            slot = after
        elif before is not None:
            slot = ends[before]
        else:
            slot = parent + 1
        slots.setdefault(slot, []).append((parent, gap))
    return slots


def _select(
    spans: Sequence[TreeSpan],
    gaps: Sequence[Gap],
    *,
    min_gap_ms: float,
    max_depth: int | None,
    min_ms: float | None,
    collapse_after: int,
) -> _Selection:
    """What goes on screen, in order: spans, gap lines and collapse summaries."""
    ends, parents = _tree(spans)
    slots = _gap_slots(spans, ends, gaps, min_gap_ms)
    sel = _Selection()
    shown: set[int] = set()
    runs: dict[int, tuple[tuple[str, str], int, _Collapsed | None]] = {}  # by parent index
    i = 0
    while i <= len(spans):
        for parent, gap in slots.get(i, ()):
            if parent in shown:
                sel.entries.append(_GapRow(gap, spans[parent].depth + 1))
                runs.pop(parent, None)  # a gap line interrupts a run of siblings
        if i == len(spans):
            break
        span = spans[i]
        if max_depth is not None and span.depth > max_depth:
            sel.deeper += 1
            i += 1
            continue
        if min_ms is not None and span.duration_ms < min_ms:
            for hidden in spans[i : ends[i]]:
                if max_depth is not None and hidden.depth > max_depth:
                    sel.deeper += 1
                else:
                    sel.short += 1
                    sel.short_errors += is_error(hidden)
            i = ends[i]
            continue
        key = (span.service, span.operation)
        run_key, count, summary = runs.get(parents[i], (None, 0, None))
        count, summary = (count + 1, summary) if run_key == key else (1, None)
        if count > max(collapse_after, 1):
            if summary is None:
                summary = _Collapsed(span.depth, span.operation)
                sel.entries.append(summary)
            summary.count += 1
            summary.nested += ends[i] - i - 1
            summary.total_ms += span.duration_ms
            summary.max_ms = max(summary.max_ms, span.duration_ms)
            summary.errors += sum(is_error(hidden) for hidden in spans[i : ends[i]])
            runs[parents[i]] = (key, count, summary)
            i = ends[i]
            continue
        runs[parents[i]] = (key, count, None)
        sel.entries.append(span)
        shown.add(i)
        i += 1
    return sel


def _layout(entries: Sequence[_Entry], width: int, t0: float, total: float) -> _Layout:
    """Column widths: marker, name, service, bar, duration (self), status. Narrow widths drop
    the self time, then the status column (errors still get their own line)."""
    spans = [entry for entry in entries if isinstance(entry, TreeSpan)]
    name_need = max((2 * s.depth + len(clean(s.operation)) for s in spans), default=4)
    service_need = max((len(clean(s.service)) for s in spans), default=0)
    dur = max((len(ms(s.duration_ms)) for s in spans), default=3)
    self_ = max((len(f" (self {ms(s.self_ms)})") for s in spans), default=0)
    status = max((len(_status(s)) for s in spans), default=0)
    body = 0
    for with_self, with_status in ((True, True), (False, True), (False, False)):
        self_ = self_ if with_self else 0
        status = status if with_status else 0
        right = dur + 3 + self_ + (status + 1 if status else 0)
        body = width - 2 - 3 - right  # marker, three separators, the right part
        if body >= 30:
            break
    bar = max(10, body * 2 // 5)
    rest = max(body - bar, 2)
    service = min(max(service_need, len("service")), max(4, rest // 3))
    name = max(rest - service, 1)
    if name > name_need:
        bar += name - name_need
        name = name_need
    return _Layout(width, name, service, bar, dur, self_, status, t0, total)


def _cells(lay: _Layout, offset_ms: float, duration_ms: float) -> tuple[int, int]:
    """The bar cells [start, end) of an interval: to scale, at least one cell."""
    scale = lay.bar / lay.total if 0 < lay.total < math.inf else 0.0
    first = (offset_ms - lay.t0) * scale
    last = first + max(duration_ms, 0.0) * scale
    first, last = (first, last) if math.isfinite(first + last) else (0.0, 0.0)
    start = min(max(int(first + 1e-9), 0), lay.bar - 1)
    return start, min(max(round(last), start + 1), lay.bar)


def _indent(lay: _Layout, depth: int) -> str:
    return " " * min(2 * depth, max(lay.name - 6, 0))


def _bar(line: Line, lay: _Layout, span: TreeSpan | Gap, glyph: str, style: str) -> Line:
    duration = span.gap_ms if isinstance(span, Gap) else span.duration_ms
    start, end = _cells(lay, span.offset_ms, duration)
    return line.add(" " * start).add(glyph * (end - start), style).add(" " * (lay.bar - end))


def _span_lines(span: TreeSpan, lay: _Layout, critical: Collection[str]) -> list[Line]:
    error, on_path = is_error(span), span.span_id in critical
    style = (BOLD if on_path else "") + (RED if error else YELLOW if span.is_orphan else "")
    name = cut(_indent(lay, span.depth) + clean(span.operation), lay.name)
    service = clean(span.service, lay.service)
    line = Line().add("* " if on_path else "  ", BOLD if on_path else "")
    line.add(name, style).add(" " * (lay.name - len(name) + 1))
    line.add(service).add(" " * (lay.service - len(service) + 1))
    _bar(line, lay, span, _BAR, RED if error else "").add(f" {ms(span.duration_ms):>{lay.dur}} ms")
    if lay.self_:
        line.add(f" (self {ms(span.self_ms)})".ljust(lay.self_))
    if lay.status:
        line.add(" ").add(_status(span), RED if error else "")
    lines = [line]
    below = "  " + _indent(lay, span.depth + 1)
    if error:
        message = clean(span.status_message, lay.width) or "error"
        lines.append(Line().add(below).add(f"✗ {message}", RED))
    if span.is_orphan:
        parent = clean(span.parent_span_id, 32)
        lines.append(
            Line().add(below).add(f"⚠ parent missing ({parent or 'no parent id'})", YELLOW)
        )
    return lines


def _gap_line(row: _GapRow, lay: _Layout) -> Line:
    """``┄ gap`` under the parent and a dotted bar where the gap is, labelled beside it (after
    it, or before it when there is more room there) with its length and neighbours."""
    gap = row.gap
    before = clean(gap.before_operation, 40) if gap.before_span_id else ""
    after = clean(gap.after_operation, 40) if gap.after_span_id else ""
    if before or after:
        where = f"{f'after {before}' if before else 'at start'}, "
        where += f"before {after}" if after else "at end"
    else:
        where = "whole span"
    text = f"{ms(gap.gap_ms)} ms ({where})"
    label = cut(f"{_indent(lay, row.depth)}{_GAP_BAR} gap", lay.name + 1 + lay.service)
    line = Line().add("  ").add(label.ljust(lay.name + lay.service + 2), DIM)
    start, end = _cells(lay, gap.offset_ms, gap.gap_ms)
    room_after = lay.width - (4 + lay.name + lay.service + end) - 1
    if len(text) <= room_after or room_after >= start - 1:
        line.add(" " * start).add(_GAP_BAR * (end - start), DIM)
        return line.add(" " + cut(text, room_after), DIM)
    text = cut(text, start - 1)
    line.add(" " * (start - len(text) - 1)).add(text + " ", DIM)
    return line.add(_GAP_BAR * (end - start), DIM)


def _collapsed_line(run: _Collapsed, lay: _Layout) -> Line:
    spans = "span" if run.count == 1 else "spans"
    text = f"… {run.count:,} more '{clean(run.operation, 40)}' {spans}"
    text += f", total {ms(run.total_ms)} ms, max {ms(run.max_ms)} ms"
    if run.nested:
        text += f", {plural(run.nested, 'nested span')}"
    if run.errors:
        text += f", {plural(run.errors, 'error')}"
    return Line().add("  " + _indent(lay, run.depth)).add(text, DIM)


def _header(spans: Sequence[TreeSpan], total: float, width: int) -> list[Line]:
    """Trace id, duration, span, error and service counts, packed into as few lines as fit."""
    trace_ids = list(dict.fromkeys(span.trace_id for span in spans))
    services = sorted({clean(span.service, 30) for span in spans})
    errors = sum(is_error(span) for span in spans)
    more = f" (+{plural(len(trace_ids) - 1, 'more trace')})" if len(trace_ids) > 1 else ""
    parts = [f"trace {clean(trace_ids[0], 32)}{more}", f"{ms(total)} ms"]
    parts.append(plural(len(spans), "span"))
    if errors:
        parts.append(plural(errors, "error"))
    parts.append(f"{plural(len(services), 'service')}: {', '.join(services)}")
    texts: list[str] = []
    for part in parts:
        if texts and len(texts[-1]) + 3 + len(part) <= width:
            texts[-1] += f" · {part}"
        else:
            texts.append(part)
    return [Line().add(text, BOLD) for text in texts]


def _ruler(lay: _Layout) -> Line:
    """Column headings, with the bar area labelled from 0 ms to the trace's duration (and at
    half of it when there is room)."""
    first, last, half = "0 ms", f"{ms(lay.total)} ms", ms(lay.total / 2)
    room = lay.bar - len(first) - len(last)
    scale = first + " " * room + last if room >= 1 else cut(last, lay.bar).rjust(lay.bar)
    middle = lay.bar // 2
    if middle >= len(first) + 2 and middle + len(half) + 2 <= lay.bar - len(last):
        scale = scale[:middle] + half + scale[middle + len(half) :]
    heads = f"  {cut('span', lay.name):<{lay.name}} {cut('service', lay.service):<{lay.service}} "
    return Line().add(f"{heads}{scale} duration", DIM)


def waterfall(
    spans: Sequence[TreeSpan],
    *,
    width: int,
    color: bool,
    gaps: Sequence[Gap],
    min_gap_ms: float,
    critical: Collection[str],
    max_depth: int | None,
    min_ms: float | None,
    collapse_after: int,
) -> str:
    """See ``query.render.render_waterfall``."""
    width = max(width, MIN_WIDTH)
    if not spans:
        return "no spans"
    t0 = min(span.offset_ms for span in spans)
    total = max(span.offset_ms + max(span.duration_ms, 0.0) for span in spans) - t0
    sel = _select(
        spans,
        gaps,
        min_gap_ms=min_gap_ms,
        max_depth=max_depth,
        min_ms=min_ms,
        collapse_after=collapse_after,
    )
    lay = _layout(sel.entries, width, t0, total)
    on_path = frozenset(critical)
    lines = [*_header(spans, total, width), _ruler(lay)]
    for entry in sel.entries:
        if isinstance(entry, TreeSpan):
            lines.extend(_span_lines(entry, lay, on_path))
        elif isinstance(entry, _GapRow):
            lines.append(_gap_line(entry, lay))
        else:
            lines.append(_collapsed_line(entry, lay))
    if sel.deeper:
        note = f"… {plural(sel.deeper, 'deeper span')} hidden (max depth {max_depth})"
        lines.append(Line().add(note, DIM))
    if sel.short:
        note = f"… {plural(sel.short, 'span')} shorter than {min_ms:g} ms hidden"
        if sel.short_errors:
            note += f", {plural(sel.short_errors, 'error')} among them"
        lines.append(Line().add(note, DIM))
    return "\n".join(line.render(width, color) for line in lines)
