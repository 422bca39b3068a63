"""query.render without a database: the waterfall, tables, JSON and hostile span text."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_pg_exporter.query import rows
from otel_pg_exporter.query.render import (
    CRITICAL_PATH_COLUMNS,
    ERROR_COLUMNS,
    EXECUTION_COLUMNS,
    GAP_COLUMNS,
    ORPHAN_COLUMNS,
    SERVICE_MAP_COLUMNS,
    SGR_CODES,
    SLOW_COLUMNS,
    clean,
    render_table,
    render_waterfall,
    to_json,
)
from otel_pg_exporter.query.rows import ErrorTrace, Gap, TreeSpan

T0 = datetime(2026, 11, 30, 13, 4, 5, 250_000, tzinfo=timezone.utc)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT, AUTH, FETCH, QUERY, STORE, RETRY = (c * 16 for c in "abcdef")
MISSING = "9" * 16
RED = "\x1b[31m"
HOSTILE = (
    "\x1b]52;c;ZXZpbA==\x07",  # OSC 52: write the clipboard
    "\x1b[2J",  # CSI: clear the screen
    "\r",  # overwrite the line
    "\u202e",  # right-to-left override
    "\x9b31m",  # single-byte CSI
    "\x00",
    "\x08",
    "\u2066",
    "\u2028",
)
BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


def span(
    span_id: str,
    parent: str | None,
    depth: int,
    service: str,
    operation: str,
    offset_ms: float,
    duration_ms: float,
    self_ms: float,
    *,
    status: str = "unset",
    message: str | None = None,
    orphan: bool = False,
) -> TreeSpan:
    """A trace_tree row starting ``offset_ms`` after T0."""
    start = T0 + timedelta(milliseconds=offset_ms)
    return TreeSpan(
        *(TRACE, span_id, parent, depth, [operation], service, operation, "internal"),
        *(start, start + timedelta(milliseconds=duration_ms), offset_ms, duration_ms, self_ms),
        *(status, message, None, orphan),
    )


PLANTED = [
    span(ROOT, None, 0, "api", "GET /orders", 0, 1000, 450, status="ok"),
    span(AUTH, ROOT, 1, "api", "auth.check", 10, 50, 50),
    span(FETCH, ROOT, 1, "worker", "job.fetch", 100, 100, 40),
    span(QUERY, FETCH, 2, "postgres", "db.query", 120, 60, 60),
    span(STORE, ROOT, 1, "worker", "job.store", 500, 400, 400, status="error", message="disk full"),
    span(RETRY, MISSING, 0, "worker", "job.retry", 950, 40, 40, orphan=True),
]
PLANTED_GAP = Gap(
    *(TRACE, ROOT, "api", "GET /orders"),
    *(T0 + timedelta(milliseconds=200), T0 + timedelta(milliseconds=500), 200.0, 300.0),
    *(FETCH, "job.fetch", STORE, "job.store"),
)
CRITICAL = (ROOT, STORE)


def planted(
    width: int = 100,
    color: bool = False,
    *,
    max_depth: int | None = None,
    min_ms: float | None = None,
) -> str:
    """The planted trace with its gap and critical path."""
    return render_waterfall(
        PLANTED,
        width=width,
        color=color,
        gaps=[PLANTED_GAP],
        critical=CRITICAL,
        max_depth=max_depth,
        min_ms=min_ms,
    )


def line_with(output: str, text: str) -> str:
    """The single line of ``output`` holding ``text``."""
    found = [line for line in output.splitlines() if text in line]
    assert 1 == len(found), output
    return found[0]


def strip_own_codes(text: str) -> str:
    """``text`` without the SGR codes the renderers emit."""
    for code in SGR_CODES:
        text = text.replace(code, "")
    return text


def unsafe(text: str) -> list[str]:
    """Characters a terminal would act on: C0 but line breaks, DEL, C1, bidi, separators."""
    return [
        c
        for c in text
        if (ord(c) < 0x20 and c != "\n")
        or 0x7F <= ord(c) <= 0x9F
        or c in BIDI
        or c in "\u2028\u2029"
    ]


def test_planted_header_and_tree_order() -> None:
    """The header names trace, duration and counts; spans follow in depth-first order,
    indented two spaces per depth, with the gap line between the children it separates."""
    lines = planted().splitlines()
    assert [
        f"trace {TRACE} · 1,000.0 ms · 6 spans · 1 error",
        "3 services: api, postgres, worker",
    ] == lines[:2]
    assert lines[2].startswith("  span         service  0 ms")
    assert lines[2].endswith("1,000.0 ms duration")
    prefixes = [
        "GET /orders ",
        "  auth.check ",
        "  job.fetch ",
        "    db.query ",
        "  ┄ gap ",
        "  job.store ",
        "    ✗ disk full",
        "job.retry ",
        "  ⚠ parent missing (9999999999999999)",
    ]
    assert 3 + len(prefixes) == len(lines)
    assert prefixes == [line[2 : 2 + len(p)] for line, p in zip(lines[3:], prefixes, strict=True)]


def test_planted_bars_are_to_scale() -> None:
    """Each bar starts at offset / total of the bar area and is as long as its duration."""
    output = planted()
    root = line_with(output, " GET /orders ")
    bar_start, cells = root.index("█"), root.count("█")
    for name, offset, duration in [
        ("auth.check", 10, 50),
        ("job.fetch", 100, 100),
        ("db.query", 120, 60),
        ("job.store", 500, 400),
        ("job.retry", 950, 40),
    ]:
        line = line_with(output, f" {name} ")
        start = math.floor(offset / 1000 * cells + 1e-9)
        assert (name, start) == (name, line.index("█") - bar_start)
        length = max(1, round((offset + duration) / 1000 * cells) - start)
        assert (name, length) == (name, line.count("█"))
    assert cells // 2 == line_with(output, " job.store ").index("█") - bar_start
    gap = line_with(output, "┄ gap")
    assert math.floor(0.2 * cells) == gap.index("┄┄") - bar_start
    assert round(0.3 * cells) == gap.count("┄") - 1  # the label's own ┄ is not bar


def test_planted_status_error_gap_orphan_and_critical_marks() -> None:
    """Durations with self time, the error's status and message, the gap with its neighbours,
    the orphan's missing parent and the critical path marker are all on screen."""
    output = planted()
    root, store = line_with(output, " GET /orders "), line_with(output, " job.store ")
    assert root.endswith("1,000.0 ms (self 450.0) OK")
    assert store.endswith("400.0 ms (self 400.0) ERROR")
    assert line_with(output, " auth.check ").endswith("50.0 ms (self 50.0)")
    assert "      ✗ disk full" == line_with(output, "disk full")
    assert line_with(output, "┄ gap").endswith("300.0 ms (after job.fetch, before job.store)")
    assert "    ⚠ parent missing (9999999999999999)" == line_with(output, "parent missing")
    marked = [line.split()[1] for line in output.splitlines() if line.startswith("* ")]
    assert ["GET", "job.store"] == marked


@pytest.mark.parametrize("width", [10, 40, 60, 80, 100, 200])
def test_width_is_respected(width: int) -> None:
    """No line is longer than the width, or than 40 below 40, with or without colour."""
    limit = max(width, 40)
    for color in (False, True):
        output = strip_own_codes(planted(width, color))
        assert [] == [line for line in output.splitlines() if len(line) > limit]
    assert 40 == max(len(line) for line in planted(10).splitlines())


def test_color_only_adds_sgr_codes() -> None:
    """Without colour there is no escape at all; with it, removing the renderer's own SGR codes
    gives exactly the plain output, and errors are red."""
    plain, coloured = planted(color=False), planted(color=True)
    assert "\x1b" not in plain
    assert plain == strip_own_codes(coloured)
    assert RED in coloured
    assert "\x1b[1m* \x1b[0m" in coloured  # the critical marker in bold
    assert "\x1b[2m" in line_with(coloured, "┄ gap")


def wide_trace(children: int = 1999) -> list[TreeSpan]:
    """A root with ``children`` consecutive 'db.query' children of 0.4 ms, one of them failed."""
    root = span(ROOT, None, 0, "api", "POST /import", 0, 1000, 200)
    return [root] + [
        span(f"{i:016x}", ROOT, 1, "db", "db.query", 1 + i * 0.4, 0.4, 0.4, status=s)
        for i in range(children)
        for s in ["error" if i == 1000 else "unset"]
    ]


def test_wide_trace_collapses_identical_siblings() -> None:
    """A 2,000-span trace fits on a screen: three 'db.query' lines and one summary line
    counting the other 1,996 with their total, maximum and errors."""
    output = render_waterfall(wide_trace())
    lines = output.splitlines()
    assert len(lines) < 60
    assert 3 == sum("db.query   db" in line for line in lines)
    assert "    … 1,996 more 'db.query' spans, total 798.4 ms, max 0.4 ms, 1 error" == lines[-1]
    assert 1 == render_waterfall(wide_trace(), collapse_after=1).count("db.query   db")


def test_gap_line_interrupts_a_run() -> None:
    """A gap between collapsed siblings still shows, and the run restarts after it."""
    spans = wide_trace(10)
    gap = dataclasses.replace(
        PLANTED_GAP,
        before_span_id=spans[6].span_id,
        after_span_id=spans[7].span_id,
        before_operation="db.query",
        after_operation="db.query",
        offset_ms=3.0,
        gap_ms=0.0,
    )
    lines = render_waterfall(spans, gaps=[gap]).splitlines()
    assert "    … 3 more 'db.query' spans, total 1.2 ms, max 0.4 ms" == lines[6]
    assert "┄ gap" in lines[7]
    assert "… 1 more 'db.query' span, total 0.4 ms, max 0.4 ms" == lines[-1].strip()
    assert "┄ gap" not in render_waterfall(spans, gaps=[gap], min_gap_ms=0.5)


def test_max_depth_and_min_ms_notes() -> None:
    """max_depth hides deeper spans and min_ms shorter ones, each counted in a closing note."""
    deep = planted(max_depth=1)
    assert "db.query" not in deep
    assert "… 1 deeper span hidden (max depth 1)" == deep.splitlines()[-1]
    short = planted(min_ms=70)
    assert [] == [name for name in ("auth.check", "db.query", "job.retry") if name in short]
    assert "… 3 spans shorter than 70 ms hidden" == short.splitlines()[-1]
    failed = render_waterfall(PLANTED, min_ms=500).splitlines()[-1]
    assert "… 5 spans shorter than 500 ms hidden, 1 error among them" == failed


def test_no_spans() -> None:
    """No spans give a one-line message."""
    assert "no spans" == render_waterfall([])


def test_clean_examples() -> None:
    """Controls, escapes and bidi characters become visible escapes; max_chars cuts with '…'."""
    assert "" == clean(None)
    assert "a\\x1b[2Jb" == clean("a\x1b[2Jb")
    assert "\\r\\n\\t\\x00\\x9b31m" == clean("\r\n\t\x00\x9b31m")
    assert "\\u202eabc\\u2066" == clean("\u202eabc\u2066")
    assert "naïve 日本 ✓" == clean("naïve 日本 ✓")
    assert "abcd…" == clean("abcdefgh", 5)
    assert "abc" == clean("abc", 3)
    assert "\\ud800\\u200b\\U000e0041" == clean("\ud800\u200b\U000e0041")


@given(st.text(), st.none() | st.integers(min_value=0, max_value=50))
def test_clean_is_always_safe(text: str, max_chars: int | None) -> None:
    """Any text comes out with no character a terminal acts on, within max_chars."""
    safe = clean(text, max_chars)
    assert [] == unsafe(safe)
    assert "\n" not in safe
    if max_chars is not None:
        assert len(safe) <= max_chars


def test_hostile_names_never_reach_the_output() -> None:
    """OSC, CSI, carriage return, bidi override, C1 CSI and NUL in every text field of spans,
    gaps and table rows are printed escaped, in plain and coloured output."""
    evil = "x" + "y".join(HOSTILE)
    spans = [
        span(ROOT, None, 0, evil, evil, 0, 100, 50, status=evil),
        span(STORE, ROOT, 1, evil, evil, 60, 40, 40, status="error", message=evil, orphan=True),
    ]
    gap = dataclasses.replace(
        PLANTED_GAP, before_span_id=None, before_operation=evil, after_operation=evil
    )
    error = ErrorTrace(TRACE, T0, 1, evil, evil, STORE, evil, evil, evil, None)
    for color in (False, True):
        outputs = [
            render_waterfall(spans, color=color, gaps=[gap], critical=[ROOT]),
            render_table([error], ERROR_COLUMNS, color=color, width=300),
        ]
        for output in outputs:
            assert [] == [raw for raw in HOSTILE if raw in output]
            assert "\x1b" not in strip_own_codes(output)
            assert [] == unsafe(strip_own_codes(output))
    assert "\\x1b]52;c;ZXZpbA==\\x07" in render_table([error], ERROR_COLUMNS, width=300)


hostile_text = st.lists(st.text() | st.sampled_from(HOSTILE), max_size=6).map("".join)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            hostile_text, hostile_text, hostile_text | st.just("error"), st.none() | hostile_text
        ),
        min_size=1,
        max_size=5,
    ),
    st.booleans(),
    st.integers(min_value=0, max_value=160),
)
def test_any_span_text_renders_safely(
    fields: list[tuple[str, str, str, str | None]], color: bool, width: int
) -> None:
    """Whatever the span and gap texts, output has no escape but the renderer's own SGR codes
    (and none without colour), no control character but line breaks, and respects the width."""
    spans = [
        span(f"{i:016x}", None, min(i, 1), service, operation, i * 10.0, 5.0, 5.0)
        for i, (service, operation, _, _) in enumerate(fields)
    ]
    spans = [
        dataclasses.replace(s, status=status, status_message=message, is_orphan=i % 2 == 1)
        for i, (s, (_, _, status, message)) in enumerate(zip(spans, fields, strict=True))
    ]
    service, operation, _, message = fields[-1]
    gap = Gap(
        *(TRACE, spans[0].span_id, service, operation, T0, T0, 1.0, 2.0),
        *(spans[-1].span_id, message, "f" * 16, operation),
    )
    output = render_waterfall(
        spans, width=width, color=color, gaps=[gap], critical=[spans[0].span_id]
    )
    table = render_table([*spans, gap], EXECUTION_COLUMNS + GAP_COLUMNS, width=width, color=color)
    assert [] == unsafe(to_json([*spans, gap]))
    for text in (output, table):
        plain = strip_own_codes(text)
        assert "\x1b" not in (plain if color else text)
        assert [] == unsafe(plain)
        assert [] == [line for line in plain.splitlines() if len(line) > max(width, 40)]


def errors(message: str | None = "timeout talking to payments") -> list[ErrorTrace]:
    """Two error_traces rows, the second with nothing optional."""
    return [
        ErrorTrace(TRACE, T0, 3, "checkout", "POST /pay", ROOT, message, "TimeoutError", "", 7),
        ErrorTrace("0" * 31 + "1", T0, 1, "api", "GET /", AUTH, None, None, None, None),
    ]


def test_table_shape_and_formats() -> None:
    """A header, a rule and one line per row; times in UTC seconds, None as '-', numbers
    right-aligned, columns as wide as their content."""
    lines = render_table(errors(), ERROR_COLUMNS, width=200).splitlines()
    assert [
        "trace id                          first error           errors  service   operation"
        "  exception     message",
        "────────────────────────────────  ────────────────────  ──────  ────────  ─────────"
        "  ────────────  ───────────────────────────",
        f"{TRACE}  2026-11-30 13:04:05Z       3  checkout  POST /pay"
        "  TimeoutError  timeout talking to payments",
        "00000000000000000000000000000001  2026-11-30 13:04:05Z       1  api       GET /    "
        "  -             -",
    ] == lines


@pytest.mark.parametrize("width", [40, 80, 100])
def test_table_shrinks_text_never_ids(width: int) -> None:
    """A long message is cut with '…' to fit the width; the 32-hex trace id stays whole."""
    output = render_table(errors("x" * 500), ERROR_COLUMNS, width=width)
    assert [] == [line for line in output.splitlines() if len(line) > width]
    assert TRACE in output
    assert "…" in output.splitlines()[2]


def test_table_floats_and_empty() -> None:
    """Floats have one decimal with thousands separators; no rows gives 'no rows'."""
    slow = rows.SlowOperation("db", "SELECT", 1234, 0, 1.25, 9.0, 10.04, 12.5, 1543.21)
    line = render_table([slow], SLOW_COLUMNS).splitlines()[2]
    assert "db       SELECT     1,234       0     1.2     9.0    10.0    12.5   1,543.2" == line
    assert "no rows" == render_table([], SLOW_COLUMNS)


@pytest.mark.parametrize(
    ("columns", "row_type"),
    [
        (ERROR_COLUMNS, rows.ErrorTrace),
        (GAP_COLUMNS, rows.Gap),
        (ORPHAN_COLUMNS, rows.OrphanGroup),
        (SLOW_COLUMNS, rows.SlowOperation),
        (SERVICE_MAP_COLUMNS, rows.ServiceEdge),
        (EXECUTION_COLUMNS, rows.ExecutionSpan),
        (CRITICAL_PATH_COLUMNS, rows.PathSpan),
    ],
)
def test_column_sets_name_fields_of_their_row(
    columns: tuple[tuple[str, str], ...], row_type: type
) -> None:
    """Every ready-made column set names fields of its row type, each once."""
    fields = {f.name for f in dataclasses.fields(row_type)}
    assert [] == [attribute for _, attribute in columns if attribute not in fields]
    assert len(columns) == len({attribute for _, attribute in columns})


def test_json_round_trip() -> None:
    """json.loads gives back every field, datetimes as ISO 8601 with offset, and the text is
    ASCII with control and bidi characters escaped."""
    rows_ = [*errors("boom\x1b[2J\u202e"), *errors()]
    text = to_json(rows_)
    assert text.isascii()
    assert "\x1b" not in text
    loaded = json.loads(text)
    expected = [
        {**dataclasses.asdict(row), "first_error_at": "2026-11-30T13:04:05.250000+00:00"}
        for row in rows_
    ]
    assert expected == loaded
    assert [PLANTED[0].path] == [json.loads(to_json(PLANTED[:1]))[0]["path"]]
    assert "[]" == to_json([])
    with pytest.raises(TypeError):
        to_json([{"not": "a dataclass"}])
