"""Traces whose answers are known, planted row by row into a migrated spans table.

Every span is given as (name, service, parent, start ms, end ms) relative to its trace's start,
which is a whole number of seconds after ``BASE``, so every offset, duration, gap and self time
below can be worked out by hand. ``BASE`` is an hour before the import, so the default
``--since 1d`` window of the commands holds every planted span.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

BASE = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
SINCE = BASE - timedelta(minutes=1)  # before every planted span

INSERT = """
    INSERT INTO trace_spans (trace_id, span_id, parent_span_id, service, operation, kind,
                             started_at, completed_at, duration_ms, status, status_message,
                             execution_id, metadata, events, otel)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

EXECUTION_ID = 42
MISSING_PARENT = "dead00000000beef"  # no span has this id: its children are orphans
REMOTE_PARENT = "dead00000000cafe"
HOSTILE_NAME = "\x1b]52;c;ZXZpbA==\x07evil\x1b[2J"
HOSTILE_MESSAGE = "bad\r\u202eeulav"
HOSTILE_TYPE = "Evil\x1b[31mError\x9b2J"
EXCEPTION = {
    "name": "exception",
    "time": "2026-01-01T00:00:00Z",
    "attributes": {
        "exception.type": "PaymentError",
        "exception.message": "card declined",
        "exception.stacktrace": 'Traceback (most recent call last):\n  File "pay.py"...',
    },
}


def trace_id(number: int) -> str:
    """A distinct 32-hex trace id per planted trace."""
    return f"{number:02x}" * 16


TRACE_A = trace_id(0xA1)  # GET /checkout: a 300 ms gap, the critical path
TRACE_ERROR = trace_id(0xA2)  # POST /pay: two error spans, the inner one with an exception
TRACE_ORPHAN = trace_id(0xA3)  # GET /orders, plus two spans whose parents never arrived
TRACE_B = trace_id(0xA4)  # execution 42, part 1 (scheduler)
TRACE_C = trace_id(0xA5)  # execution 42, part 2 (worker), 500 ms after B's start
TRACE_DEEP = trace_id(0xA6)  # a chain 61 spans long: depths 0 to 60
TRACE_WIDE = trace_id(0xA7)  # a root with 2,000 children
TRACES_RPC = tuple(trace_id(n) for n in (0xB1, 0xB2, 0xB3, 0xB4))  # router → worker calls
TRACE_HOSTILE = trace_id(0xA8)  # escape sequences, CR and bidi in span data
TRACE_OVERLAP = trace_id(0xA9)  # two critical children that overlap in time
TRACE_BENCH = "0" * 16 + "beefbeefbeefbeef"  # a 16-hex (B3) id, left-padded; 100 timed spans

DEEP_LEVELS = 61
WIDE_CHILDREN = 2_000
RPC_DURATIONS = (10.0, 20.0, 30.0, 40.0)  # GET /work: p50 25, p95 38.5; the 40 ms one fails


@dataclass
class Trace:
    """A trace being planted: spans get sequential ids, so a parent sorts before its children
    and siblings that start together sort in the order they were added."""

    number: int
    trace_id: str
    start: datetime
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def span(
        self,
        name: str,
        service: str,
        parent: str | None,
        start_ms: float,
        end_ms: float,
        *,
        kind: str = "internal",
        status: str = "unset",
        message: str | None = None,
        execution_id: int | None = None,
        events: list[dict[str, Any]] | None = None,
        otel: dict[str, Any] | None = None,
    ) -> str:
        """Add a span from ``start_ms`` to ``end_ms`` after the trace's start; its span id."""
        span_id = f"{self.number:04x}{len(self.rows) + 1:012x}"
        self.rows.append(
            (
                *(self.trace_id, span_id, parent, service, name, kind),
                self.start + timedelta(milliseconds=start_ms),
                self.start + timedelta(milliseconds=end_ms),
                *(end_ms - start_ms, status, message, execution_id, Jsonb({})),
                Jsonb(events) if events is not None else None,
                Jsonb(otel) if otel is not None else None,
            )
        )
        return span_id


def at(seconds: int) -> datetime:
    """A trace start ``seconds`` after BASE."""
    return BASE + timedelta(seconds=seconds)


def _checkout() -> tuple[Trace, dict[str, str]]:
    """Root 0-1000 ms with children auth 0-100, db.load 100-400, (gap 400-700), render
    700-950, (gap 950-1000): self time of the root 1000 - 650 = 350 ms."""
    t = Trace(1, TRACE_A, at(0))
    root = t.span("GET /checkout", "router", None, 0, 1000, kind="server", status="ok")
    auth = t.span("auth", "router", root, 0, 100)
    load = t.span("db.load", "router", root, 100, 400)
    render = t.span("render", "router", root, 700, 950)
    return t, {"a.root": root, "a.auth": auth, "a.load": load, "a.render": render}


def _payment() -> tuple[Trace, dict[str, str]]:
    """Two error spans: the root (started first, ended last) and charge, which ended first."""
    t = Trace(2, TRACE_ERROR, at(10))
    root = t.span(
        "POST /pay", "payments", None, 0, 500, kind="server", status="error", message="502"
    )
    charge = t.span(
        "charge",
        "payments",
        root,
        100,
        300,
        kind="client",
        status="error",
        message="card declined",
        events=[EXCEPTION],
    )
    return t, {"err.root": root, "err.charge": charge}


def _orphans() -> tuple[Trace, dict[str, str]]:
    """A root with one child, and two 'process' spans whose parents never arrived (one of
    them remote), the first with a child of its own."""
    t = Trace(3, TRACE_ORPHAN, at(20))
    root = t.span("GET /orders", "shop", None, 0, 300, kind="server")
    load = t.span("load", "shop", root, 10, 100)
    lost = t.span("process", "shop", MISSING_PARENT, 150, 250)
    step = t.span("process.step", "shop", lost, 160, 200)
    remote = t.span(
        "process", "shop", REMOTE_PARENT, 200, 280, kind="server", otel={"parent_is_remote": True}
    )
    return t, {
        "o.root": root,
        "o.load": load,
        "o.lost": lost,
        "o.step": step,
        "o.remote": remote,
    }


def _execution() -> tuple[list[Trace], dict[str, str]]:
    """Execution 42: 'schedule' (scheduler, 0-200 ms, trace B) and 'run job' (worker,
    500-900 ms, trace C); only those two carry the id, their children do not."""
    b = Trace(4, TRACE_B, at(30))
    schedule = b.span("schedule", "scheduler", None, 0, 200, execution_id=EXECUTION_ID)
    enqueue = b.span("enqueue", "scheduler", schedule, 50, 150)
    c = Trace(5, TRACE_C, at(30))
    run = c.span("run job", "worker", None, 500, 900, kind="consumer", execution_id=EXECUTION_ID)
    step1 = c.span("step 1", "worker", run, 500, 600)
    step2 = c.span("step 2", "worker", run, 600, 850)
    query = c.span("step 2.query", "worker", step2, 650, 800, kind="client")
    return [b, c], {
        "x.schedule": schedule,
        "x.enqueue": enqueue,
        "x.run": run,
        "x.step1": step1,
        "x.step2": step2,
        "x.query": query,
    }


def _deep() -> Trace:
    """level i runs from i to 200 - i ms under level i - 1."""
    t = Trace(6, TRACE_DEEP, at(40))
    parent = None
    for level in range(DEEP_LEVELS):
        parent = t.span(f"level {level}", "deep", parent, level, 200 - level)
    return t


def _wide() -> Trace:
    """'import' 0-2000 ms with 2,000 back-to-back 'db.query' children of 1 ms each."""
    t = Trace(7, TRACE_WIDE, at(50))
    root = t.span("import", "loader", None, 0, WIDE_CHILDREN)
    for i in range(WIDE_CHILDREN):
        t.span("db.query", "loader", root, i, i + 1, kind="client")
    return t


def _rpc() -> list[Trace]:
    """router 'GET /api' → router 'call worker' (client) → worker 'GET /work' (server)."""
    traces = []
    for i, (tid, duration) in enumerate(zip(TRACES_RPC, RPC_DURATIONS, strict=True)):
        t = Trace(0x10 + i, tid, at(60 + i))
        root = t.span("GET /api", "router", None, 0, 100, kind="server")
        call = t.span("call worker", "router", root, 10, 90, kind="client")
        failed = duration == max(RPC_DURATIONS)
        t.span(
            "GET /work",
            "worker",
            call,
            20,
            20 + duration,
            kind="server",
            status="error" if failed else "ok",
            message="boom" if failed else None,
        )
        traces.append(t)
    return traces


def _hostile() -> tuple[Trace, dict[str, str]]:
    """An error span whose name, message and exception type hold terminal controls."""
    t = Trace(8, TRACE_HOSTILE, at(70))
    root = t.span(
        HOSTILE_NAME,
        "hostile",
        None,
        0,
        100,
        status="error",
        message=HOSTILE_MESSAGE,
        events=[
            {
                "name": "exception",
                "attributes": {"exception.type": HOSTILE_TYPE, "exception.message": "x\r\u202e"},
            }
        ],
    )
    return t, {"h.root": root}


def _bench() -> Trace:
    """'bench.run' 0-200 ms with 100 'bench.op' children lasting 1, 2, ..., 100 ms."""
    t = Trace(9, TRACE_BENCH, at(80))
    root = t.span("bench.run", "bench", None, 0, 200)
    for duration in range(1, 101):
        t.span("bench.op", "bench", root, 0, duration)
    return t


def _overlap() -> tuple[Trace, dict[str, str]]:
    """'fan-out' 0-1000 ms with 'first' 0-500 and 'second' 400-700: both on the critical
    path, and the root alone for the last 300 ms."""
    t = Trace(10, TRACE_OVERLAP, at(90))
    root = t.span("fan-out", "overlap", None, 0, 1000)
    first = t.span("first", "overlap", root, 0, 500)
    second = t.span("second", "overlap", root, 400, 700)
    return t, {"v.root": root, "v.first": first, "v.second": second}


def plant(dsn: str) -> dict[str, str]:
    """Insert every planted trace into ``dsn``'s spans table; the span ids by role."""
    ids: dict[str, str] = {}
    traces: list[Trace] = []
    for build in (_checkout, _payment, _orphans, _hostile, _overlap):
        trace, named = build()
        traces.append(trace)
        ids.update(named)
    execution, named = _execution()
    traces.extend(execution)
    ids.update(named)
    traces.extend([_deep(), _wide(), *_rpc(), _bench()])
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(INSERT, [row for trace in traces for row in trace.rows])
        cur.execute("ANALYZE trace_spans")
    return ids


@dataclass(frozen=True)
class Planted:
    """A database holding the planted traces, and their span ids by role."""

    dsn: str
    ids: dict[str, str]
