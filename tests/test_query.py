"""The query functions against planted traces whose answers were worked out by hand.

Every function is read through ``otel_pg_exporter.query`` (typed rows) and once straight through
psycopg (the SQL on its own); a last test checks with EXPLAIN that each reads a few index pages,
not the table, among 60,000 other spans.
"""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from planted import (
    DEEP_LEVELS,
    EXECUTION_ID,
    INSERT,
    MISSING_PARENT,
    REMOTE_PARENT,
    SINCE,
    TRACE_A,
    TRACE_B,
    TRACE_BENCH,
    TRACE_C,
    TRACE_DEEP,
    TRACE_ERROR,
    TRACE_HOSTILE,
    TRACE_ORPHAN,
    TRACE_OVERLAP,
    TRACE_WIDE,
    TRACES_RPC,
    WIDE_CHILDREN,
    Planted,
    Trace,
    at,
    plant,
)
from psycopg import sql

from otel_pg_exporter import query
from otel_pg_exporter.errors import NotFound
from otel_pg_exporter.query.render import render_waterfall
from otel_pg_exporter.query.rows import ServiceEdge
from otel_pg_exporter.schema.table import index_name

TARGET = query.Target()
UNKNOWN_TRACE = "f" * 32


@pytest.fixture(scope="module")
def planted(module_database: str) -> Planted:
    """The module's database with every planted trace, inserted once."""
    return Planted(module_database, plant(module_database))


@pytest.fixture
def conn(planted: Planted) -> Iterator[psycopg.Connection[Any]]:
    """A query connection to the planted database."""
    with query.connect(planted.dsn) as connection:
        yield connection


# --- trace_tree, trace_gaps, critical_path on trace A ----------------------------------------


def test_trace_tree_of_trace_a(conn: psycopg.Connection[Any], planted: Planted) -> None:
    """Trace A comes back depth first with paths, offsets, durations and self times by hand."""
    spans = query.trace_tree(conn, TARGET, TRACE_A)

    ids = planted.ids
    assert [
        (ids["a.root"], None, 0, ["GET /checkout"], 0.0, 1000.0, 350.0, False),
        (ids["a.auth"], ids["a.root"], 1, ["GET /checkout", "auth"], 0.0, 100.0, 100.0, False),
        (ids["a.load"], ids["a.root"], 1, ["GET /checkout", "db.load"], 100.0, 300.0, 300.0, False),
        (
            ids["a.render"],
            ids["a.root"],
            1,
            ["GET /checkout", "render"],
            700.0,
            250.0,
            250.0,
            False,
        ),
    ] == [
        (
            s.span_id,
            s.parent_span_id,
            s.depth,
            s.path,
            s.offset_ms,
            s.duration_ms,
            s.self_ms,
            s.is_orphan,
        )
        for s in spans
    ]
    root = spans[0]
    assert (TRACE_A, "router", "server", "ok", at(0), at(0) + timedelta(seconds=1)) == (
        root.trace_id,
        root.service,
        root.kind,
        root.status,
        root.started_at,
        root.completed_at,
    )


def test_trace_gaps_of_trace_a(conn: psycopg.Connection[Any], planted: Planted) -> None:
    """The 300 ms gap between db.load and render comes first, then the 50 ms after render;
    auth starts with the root, so there is no gap before it."""
    gaps = query.trace_gaps(conn, TARGET, TRACE_A)

    root, load, render = (planted.ids[k] for k in ("a.root", "a.load", "a.render"))
    assert [
        (root, "router", "GET /checkout", 400.0, 300.0, load, "db.load", render, "render"),
        (root, "router", "GET /checkout", 950.0, 50.0, render, "render", None, None),
    ] == [
        (
            g.parent_span_id,
            g.parent_service,
            g.parent_operation,
            g.offset_ms,
            g.gap_ms,
            g.before_span_id,
            g.before_operation,
            g.after_span_id,
            g.after_operation,
        )
        for g in gaps
    ]
    start = at(0)
    assert [
        (start + timedelta(milliseconds=400), start + timedelta(milliseconds=700)),
        (start + timedelta(milliseconds=950), start + timedelta(milliseconds=1000)),
    ] == [(g.gap_start, g.gap_end) for g in gaps]


def test_trace_gaps_min_gap_ms_drops_the_smaller_gaps(conn: psycopg.Connection[Any]) -> None:
    """With min_gap_ms 100 only the 300 ms gap is left; with 300 still it, with 301 none."""
    assert [300.0] == [g.gap_ms for g in query.trace_gaps(conn, TARGET, TRACE_A, 100)]
    assert [300.0] == [g.gap_ms for g in query.trace_gaps(conn, TARGET, TRACE_A, 300)]
    assert [] == query.trace_gaps(conn, TARGET, TRACE_A, 301)


def test_critical_path_of_trace_a(conn: psycopg.Connection[Any], planted: Planted) -> None:
    """Walking back from the root's end: render, then db.load, then auth; the root contributes
    1000 - (250 + 300 + 100) = 350 ms and each child its whole duration."""
    path = query.critical_path(conn, TARGET, TRACE_A)

    ids = planted.ids
    assert [
        (ids["a.root"], "GET /checkout", 0.0, 1000.0, 350.0),
        (ids["a.auth"], "auth", 0.0, 100.0, 100.0),
        (ids["a.load"], "db.load", 100.0, 300.0, 300.0),
        (ids["a.render"], "render", 700.0, 250.0, 250.0),
    ] == [(p.span_id, p.operation, p.offset_ms, p.duration_ms, p.contribution_ms) for p in path]
    assert 1000.0 == sum(p.contribution_ms for p in path)


def test_critical_path_with_overlapping_critical_children(conn: psycopg.Connection[Any]) -> None:
    """A parent's contribution is its duration minus the time its critical children cover:
    1000 - (0-700) = 300 ms, not less than the 300 ms it spends alone after them."""
    path = {p.operation: p for p in query.critical_path(conn, TARGET, TRACE_OVERLAP)}

    assert {"fan-out", "first", "second"} == set(path)
    assert 300.0 == path["fan-out"].contribution_ms


# --- errors ----------------------------------------------------------------------------------


def test_error_traces_describes_a_trace_by_its_first_error(
    conn: psycopg.Connection[Any], planted: Planted
) -> None:
    """The payment trace's first error is charge (it ended first, though the root started
    first), with the exception type and message from its events and both errors counted."""
    (found,) = [e for e in query.error_traces(conn, TARGET, SINCE) if e.trace_id == TRACE_ERROR]

    assert (
        at(10) + timedelta(milliseconds=100),
        2,
        "payments",
        "charge",
        planted.ids["err.charge"],
        "card declined",
        "PaymentError",
        "card declined",
        None,
    ) == (
        found.first_error_at,
        found.error_spans,
        found.service,
        found.operation,
        found.span_id,
        found.status_message,
        found.exception_type,
        found.exception_message,
        found.execution_id,
    )


def test_error_traces_newest_first_and_by_service(conn: psycopg.Connection[Any]) -> None:
    """Every planted error trace is listed newest first; a service keeps only its own."""
    errors = query.error_traces(conn, TARGET, SINCE)

    assert [TRACE_HOSTILE, TRACES_RPC[-1], TRACE_ERROR] == [e.trace_id for e in errors]
    assert sorted((e.first_error_at for e in errors), reverse=True) == [
        e.first_error_at for e in errors
    ]
    assert [TRACE_ERROR] == [
        e.trace_id for e in query.error_traces(conn, TARGET, SINCE, "payments")
    ]
    assert [TRACE_HOSTILE] == [e.trace_id for e in query.error_traces(conn, TARGET, SINCE, limit=1)]
    assert [] == query.error_traces(conn, TARGET, datetime.now(timezone.utc))


# --- orphans ---------------------------------------------------------------------------------


def test_trace_tree_shows_orphans_as_extra_roots(
    conn: psycopg.Connection[Any], planted: Planted
) -> None:
    """Spans whose parent never arrived are roots (depth 0, is_orphan) after the real root's
    subtree, in start order, with their own children under them."""
    spans = query.trace_tree(conn, TARGET, TRACE_ORPHAN)

    ids = planted.ids
    assert [
        (ids["o.root"], "GET /orders", 0, None, False),
        (ids["o.load"], "load", 1, ids["o.root"], False),
        (ids["o.lost"], "process", 0, MISSING_PARENT, True),
        (ids["o.step"], "process.step", 1, ids["o.lost"], False),
        (ids["o.remote"], "process", 0, REMOTE_PARENT, True),
    ] == [(s.span_id, s.operation, s.depth, s.parent_span_id, s.is_orphan) for s in spans]
    assert ["process", "process.step"] == spans[3].path
    assert [0.0, 10.0, 150.0, 160.0, 200.0] == [s.offset_ms for s in spans]


def test_orphan_spans_counts_by_service_and_operation(
    conn: psycopg.Connection[Any], planted: Planted
) -> None:
    """The two 'process' orphans make one group with one remote parent; the example is the
    latest; a child of an orphan is no orphan itself."""
    groups = query.orphan_spans(conn, TARGET, SINCE)

    assert [("shop", "process", 2, 1, TRACE_ORPHAN, planted.ids["o.remote"])] == [
        (g.service, g.operation, g.spans, g.remote_parents, g.example_trace_id, g.example_span_id)
        for g in groups
    ]
    assert at(20) + timedelta(milliseconds=200) == groups[0].last_seen


def test_orphan_spans_by_service_and_window(conn: psycopg.Connection[Any]) -> None:
    """Another service, or a window after the orphans started, has none."""
    assert 1 == len(query.orphan_spans(conn, TARGET, SINCE, "shop"))
    assert [] == query.orphan_spans(conn, TARGET, SINCE, "router")
    assert [] == query.orphan_spans(conn, TARGET, at(21))


# --- execution_trace -------------------------------------------------------------------------


def test_execution_trace_crosses_traces_and_services(
    conn: psycopg.Connection[Any], planted: Planted
) -> None:
    """Execution 42 holds both marked spans and their unmarked children, in time order with
    depths below the marked span; the worker's span waited 500 - 200 = 300 ms."""
    spans = query.execution_trace(conn, TARGET, EXECUTION_ID)

    ids = planted.ids
    assert [
        (TRACE_B, ids["x.schedule"], "scheduler", "schedule", 0, 0.0, 200.0, None),
        (TRACE_B, ids["x.enqueue"], "scheduler", "enqueue", 1, 50.0, 100.0, None),
        (TRACE_C, ids["x.run"], "worker", "run job", 0, 500.0, 400.0, 300.0),
        (TRACE_C, ids["x.step1"], "worker", "step 1", 1, 500.0, 100.0, None),
        (TRACE_C, ids["x.step2"], "worker", "step 2", 1, 600.0, 250.0, None),
        (TRACE_C, ids["x.query"], "worker", "step 2.query", 2, 650.0, 150.0, None),
    ] == [
        (
            s.trace_id,
            s.span_id,
            s.service,
            s.operation,
            s.depth,
            s.offset_ms,
            s.duration_ms,
            s.gap_before_ms,
        )
        for s in spans
    ]


def test_unknown_execution_raises_not_found(conn: psycopg.Connection[Any]) -> None:
    """An execution id no span carries raises NotFound naming it."""
    with pytest.raises(NotFound, match="execution 4242"):
        query.execution_trace(conn, TARGET, 4242)


# --- big traces ------------------------------------------------------------------------------


def test_deep_trace_keeps_every_level(conn: psycopg.Connection[Any]) -> None:
    """A chain 61 spans long comes back whole: depth i, path of i + 1 names, offset i ms,
    and each level's self time is the 2 ms its child leaves uncovered."""
    spans = query.trace_tree(conn, TARGET, TRACE_DEEP)

    levels = range(DEEP_LEVELS)
    assert [(i, f"level {i}", float(i), 200.0 - 2 * i) for i in levels] == [
        (s.depth, s.operation, s.offset_ms, s.duration_ms) for s in spans
    ]
    assert [f"level {i}" for i in levels] == spans[-1].path
    assert [2.0] * (DEEP_LEVELS - 1) + [80.0] == [s.self_ms for s in spans]


def test_wide_trace_keeps_every_child_in_start_order(conn: psycopg.Connection[Any]) -> None:
    """A root with 2,000 children comes back whole, children at depth 1 in start order; they
    cover the root entirely, so its self time is 0."""
    spans = query.trace_tree(conn, TARGET, TRACE_WIDE)

    assert [(0, "import")] + [(1, "db.query")] * WIDE_CHILDREN == [
        (s.depth, s.operation) for s in spans
    ]
    # offset_ms is seconds * 1000 in double precision: 1.001 s gives 1000.9999999999999.
    assert pytest.approx([0.0] + [float(i) for i in range(WIDE_CHILDREN)]) == [
        s.offset_ms for s in spans
    ]
    assert 0.0 == spans[0].self_ms
    assert [] == query.trace_gaps(conn, TARGET, TRACE_WIDE)


def test_wide_trace_waterfall_is_collapsed(conn: psycopg.Connection[Any]) -> None:
    """The waterfall of the wide trace shows three children and one summary line."""
    spans = query.trace_tree(conn, TARGET, TRACE_WIDE)

    lines = render_waterfall(spans, width=100).splitlines()

    assert len(lines) <= 10, lines
    assert any("1,997 more 'db.query' spans" in line for line in lines), lines


# --- windows: service_map, slow_operations ---------------------------------------------------


def test_service_map_has_the_client_server_edge(conn: psycopg.Connection[Any]) -> None:
    """The router's client span calling the worker's server span is the only edge: 4 calls,
    1 error, p50 of 10/20/30/40 ms = 25, p95 = 38.5."""
    assert [ServiceEdge("router", "call worker", "worker", "GET /work", 4, 1, 25.0, 38.5)] == (
        query.service_map(conn, TARGET, SINCE)
    )


def test_slow_operations_percentiles(conn: psycopg.Connection[Any]) -> None:
    """Durations 1..100 ms give p50 50.5, p95 95.05, p99 99.01, max 100, total 5,050; rows
    are slowest p95 first."""
    rows = query.slow_operations(conn, TARGET, SINCE, "bench")

    assert [("bench", "bench.run", 1), ("bench", "bench.op", 100)] == [
        (r.service, r.operation, r.calls) for r in rows
    ]
    op = rows[1]
    assert pytest.approx((0, 50.5, 95.05, 99.01, 100.0, 5050.0)) == (
        op.errors,
        op.p50_ms,
        op.p95_ms,
        op.p99_ms,
        op.max_ms,
        op.total_ms,
    )


def test_slow_operations_counts_errors_and_honours_limit(conn: psycopg.Connection[Any]) -> None:
    """The worker's GET /work has 1 error in 4 calls; limit caps the rows."""
    rows = query.slow_operations(conn, TARGET, SINCE, "worker")
    (work,) = [r for r in rows if r.operation == "GET /work"]
    assert (4, 1, 25.0, 40.0, 100.0) == (
        work.calls,
        work.errors,
        work.p50_ms,
        work.max_ms,
        work.total_ms,
    )
    assert 2 == len(query.slow_operations(conn, TARGET, SINCE, limit=2))
    with pytest.raises(ValueError, match="limit"):
        query.slow_operations(conn, TARGET, SINCE, limit=0)


# --- ids and times ---------------------------------------------------------------------------


def test_unknown_trace_raises_not_found(conn: psycopg.Connection[Any]) -> None:
    """A well-formed trace id with no spans raises NotFound naming it."""
    with pytest.raises(NotFound, match=UNKNOWN_TRACE):
        query.trace_tree(conn, TARGET, UNKNOWN_TRACE)


@pytest.mark.parametrize(
    "text", ["xyz", "g" * 32, "a" * 31, "a" * 33, "", "a" * 15, "0x" + "a" * 30, "a1-" * 11]
)
def test_invalid_trace_id_raises_value_error(conn: psycopg.Connection[Any], text: str) -> None:
    """Anything but 32 (or 16) hex characters is a ValueError, before any query."""
    for read in (query.trace_tree, query.trace_gaps, query.critical_path):
        with pytest.raises(ValueError, match="32 hex"):
            read(conn, TARGET, text)


def test_sixteen_hex_trace_id_is_left_padded(conn: psycopg.Connection[Any]) -> None:
    """A 16-hex id (B3) is padded with 16 zeros on the left, as stored; case and blanks fold."""
    assert TRACE_BENCH == query.trace_id_of("BEEFbeefBEEFbeef")
    assert TRACE_A == query.trace_id_of(f"  {TRACE_A.upper()}\n")
    spans = query.trace_tree(conn, TARGET, "beefbeefbeefbeef")
    assert (TRACE_BENCH, "bench.run", 101) == (spans[0].trace_id, spans[0].operation, len(spans))


NOW = datetime(2026, 11, 30, 13, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("45s", NOW - timedelta(seconds=45)),
        ("10min", NOW - timedelta(minutes=10)),
        ("1h", NOW - timedelta(hours=1)),
        ("1.5h", NOW - timedelta(minutes=90)),
        (" 2D ", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-11-29T08:30:00", datetime(2026, 11, 29, 8, 30, tzinfo=timezone.utc)),
        ("2026-11-29T08:30:00Z", datetime(2026, 11, 29, 8, 30, tzinfo=timezone.utc)),
        ("2026-11-29 10:30:00+02:00", datetime(2026, 11, 29, 8, 30, tzinfo=timezone.utc)),
        ("2026-11-29", datetime(2026, 11, 29, tzinfo=timezone.utc)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    """Durations count back from now; ISO times without a zone are UTC."""
    moment = query.parse_since(text, now=NOW)
    assert expected == moment
    assert moment.tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "-1h", "1y", "h", "30 minutes", "2026-13-01"])
def test_parse_since_rejects_anything_else(text: str) -> None:
    """Anything else is a ValueError that says what --since takes."""
    with pytest.raises(ValueError, match="30m, 1h, 2d, 1w"):
        query.parse_since(text, now=NOW)


def test_parse_since_defaults_to_now() -> None:
    """Without ``now`` a duration counts back from the current time."""
    before = datetime.now(timezone.utc)
    moment = query.parse_since("1h")
    after = datetime.now(timezone.utc)
    assert before - timedelta(hours=1) <= moment <= after - timedelta(hours=1)


# --- the SQL on its own ----------------------------------------------------------------------


STANDALONE: list[tuple[str, str, tuple[Any, ...], list[tuple[Any, ...]]]] = [
    (
        "trace_tree",
        "SELECT operation, depth, self_ms FROM trace_tree(%s)",
        (TRACE_A,),
        [
            ("GET /checkout", 0, 350.0),
            ("auth", 1, 100.0),
            ("db.load", 1, 300.0),
            ("render", 1, 250.0),
        ],
    ),
    (
        "trace_gaps",
        "SELECT gap_ms, before_operation, after_operation FROM trace_gaps(%s)",
        (TRACE_A,),
        [(300.0, "db.load", "render"), (50.0, "render", None)],
    ),
    (
        "critical_path",
        "SELECT operation, contribution_ms FROM critical_path(%s)",
        (TRACE_A,),
        [("GET /checkout", 350.0), ("auth", 100.0), ("db.load", 300.0), ("render", 250.0)],
    ),
    (
        "orphan_spans",
        "SELECT service, operation, spans, remote_parents FROM orphan_spans(%s)",
        (SINCE,),
        [("shop", "process", 2, 1)],
    ),
    (
        "error_traces",
        "SELECT trace_id, operation, exception_type FROM error_traces(%s, 'payments')",
        (SINCE,),
        [(TRACE_ERROR, "charge", "PaymentError")],
    ),
    (
        "slow_operations",
        "SELECT operation, calls, max_ms FROM slow_operations(%s, 'bench')",
        (SINCE,),
        [("bench.run", 1, 200.0), ("bench.op", 100, 100.0)],
    ),
    (
        "execution_trace",
        "SELECT operation, depth, gap_before_ms FROM execution_trace(%s)",
        (EXECUTION_ID,),
        [
            ("schedule", 0, None),
            ("enqueue", 1, None),
            ("run job", 0, 300.0),
            ("step 1", 1, None),
            ("step 2", 1, None),
            ("step 2.query", 2, None),
        ],
    ),
    (
        "service_map",
        "SELECT caller_service, callee_service, calls, errors FROM service_map(%s)",
        (SINCE,),
        [("router", "worker", 4, 1)],
    ),
]


@pytest.mark.parametrize(
    ("statement", "arguments", "expected"),
    [case[1:] for case in STANDALONE],
    ids=[case[0] for case in STANDALONE],
)
def test_sql_function_on_its_own(
    planted: Planted, statement: str, arguments: tuple[Any, ...], expected: list[tuple[Any, ...]]
) -> None:
    """Each SQL function answers a plain psycopg query, without the Python layer."""
    with psycopg.connect(planted.dsn) as connection:
        assert expected == connection.execute(statement, arguments).fetchall()


# --- index use -------------------------------------------------------------------------------

BACKGROUND_ROWS = 60_000
# 6,000 traces of 10 spans, one span every 2 s from 35 h ago to 2 h ago: none in the last
# minute. created_at follows started_at, as it does for real, so its index is a full-size one.
FILL = """
    INSERT INTO trace_spans (trace_id, span_id, parent_span_id, service, operation, kind,
                             started_at, completed_at, duration_ms, status, status_message,
                             execution_id, metadata, otel, created_at)
    SELECT lpad(to_hex(g / 10), 32, '0'), lpad(to_hex(g), 16, '0'),
           CASE WHEN g %% 10 = 0 THEN NULL
                WHEN g %% 97 = 0 THEN 'ffffffffffffffff'
                ELSE lpad(to_hex(g - g %% 10), 16, '0') END,
           'svc' || g %% 7, 'op' || g %% 23,
           CASE WHEN g %% 10 = 0 THEN 'server' ELSE 'client' END,
           now() - interval '35 hours' + g * interval '2 s',
           now() - interval '35 hours' + g * interval '2 s' + interval '5 ms', 5,
           CASE WHEN g %% 50 = 0 THEN 'error' ELSE 'ok' END,
           CASE WHEN g %% 50 = 0 THEN 'failed' END,
           CASE WHEN g %% 10 = 0 THEN g END,
           jsonb_build_object('http.url', repeat('x', 200), 'n', g),
           '{"trace_flags": 1}',
           now() - interval '35 hours' + g * interval '2 s' + interval '1 s'
      FROM generate_series(1, %s) AS g
"""
RECENT_EXECUTION = 7


def _recent_trace(start: datetime) -> Trace:
    """A small trace in the last minute touching every function: a client → server call
    that fails with an exception, an orphan, an execution id."""
    t = Trace(0xEE, "e" * 32, start)
    root = t.span(
        "GET /recent", "router", None, 0, 100, kind="server", execution_id=RECENT_EXECUTION
    )
    call = t.span("call worker", "router", root, 10, 90, kind="client")
    events = [{"name": "exception", "attributes": {"exception.type": "Boom"}}]
    t.span("GET /work", "worker", call, 20, 80, kind="server", status="error", events=events)
    t.span("late", "worker", "0123456789abcdef", 30, 40)
    t.span("render", "router", root, 90, 95)
    return t


def _blocks(
    conn: psycopg.Connection[Any], function: str, arguments: Sequence[Any]
) -> tuple[int, int]:
    """Shared buffers (hit + read) the function's execution touched, and the rows it
    returned, from EXPLAIN ANALYZE of the query the query layer sends. The top plan node's
    counts include every node under it; planning is counted apart and left out."""
    statement = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM {}({})").format(
        sql.Identifier(function), sql.SQL(", ").join(sql.Placeholder() * len(arguments))
    )
    row = conn.execute(statement, list(arguments)).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"]), int(
        plan["Actual Rows"]
    )


def test_functions_read_a_few_pages_through_indexes(migrated_dsn: str) -> None:
    """Among 60,000 older spans, each function on one small trace (or on the last minute)
    touches under a quarter of the pages of the smallest full scan it could fall back to
    (the table, or any index holding every row); dropping the index it relies on sends it
    over that line."""
    recent = _recent_trace(datetime.now(timezone.utc) - timedelta(seconds=10))
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(FILL, (BACKGROUND_ROWS,))
        with conn.cursor() as cur:
            cur.executemany(INSERT, recent.rows)
        conn.execute("VACUUM ANALYZE trace_spans")
        # Sizes summed over the partitions, if any: a partitioned table and its indexes hold
        # no pages of their own (the partitioned layout, TEST_TABLE_LAYOUT=partitioned).
        sizes = conn.execute(
            """SELECT coalesce((SELECT sum(pg_relation_size(t.relid))
                                  FROM pg_partition_tree('trace_spans') AS t),
                               pg_relation_size('trace_spans')) / 8192,
                      min(coalesce((SELECT sum(pg_relation_size(t.relid))
                                      FROM pg_partition_tree(i.indexrelid) AS t),
                                   pg_relation_size(i.indexrelid)) / 8192)
                          FILTER (WHERE i.indpred IS NULL)
                 FROM pg_index i WHERE i.indrelid = 'trace_spans'::regclass"""
        ).fetchone()
        assert sizes is not None
        table_pages, smallest_index_pages = int(sizes[0]), int(sizes[1])
        limit = min(table_pages, smallest_index_pages) // 4
        assert table_pages > 1_000  # a seq scan would read every one of them
        assert limit >= 30

        since = datetime.now(timezone.utc) - timedelta(minutes=1)
        calls: dict[str, list[Any]] = {
            "trace_tree": [recent.trace_id],
            "trace_gaps": [recent.trace_id, 0.0],
            "critical_path": [recent.trace_id],
            "execution_trace": [RECENT_EXECUTION],
            "error_traces": [since, None],
            "orphan_spans": [since, None],
            "slow_operations": [since, None],
            "service_map": [since],
        }
        for function, arguments in calls.items():  # warm the caches: count steady-state reads
            _blocks(conn, function, arguments)
        measured = {function: _blocks(conn, function, args) for function, args in calls.items()}

        assert [] == [f for f, (_, rows) in measured.items() if rows == 0]  # all found their rows
        assert {} == {f: blocks for f, (blocks, _) in measured.items() if blocks >= limit}, (
            f"limit {limit} pages (table {table_pages}, smallest full index {smallest_index_pages})"
        )

        # Without the started_at indexes the windows are read by a full scan of something.
        with conn.transaction(force_rollback=True):
            for suffix in ("started_at", "errors_started_at"):
                conn.execute(
                    sql.SQL("DROP INDEX {}").format(
                        sql.Identifier(index_name("trace_spans", suffix))
                    )
                )
            windowed = ("error_traces", "orphan_spans", "slow_operations", "service_map")
            without = {f: _blocks(conn, f, calls[f])[0] for f in windowed}
        assert {} == {f: blocks for f, blocks in without.items() if blocks < limit}

        # Without the primary key a trace is found by reading the whole table.
        with conn.transaction(force_rollback=True):
            conn.execute("ALTER TABLE trace_spans DROP CONSTRAINT trace_spans_pkey")
            blocks, rows = _blocks(conn, "trace_tree", calls["trace_tree"])
        assert (5, True) == (rows, blocks >= table_pages)
