"""The read commands (show, errors, gaps, orphans, slow, services) against planted traces:
text and JSON output, colour and width, hostile span data, exit codes and messages."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import json
import socket
from typing import Any

import psycopg
import pytest
from planted import (
    EXECUTION_ID,
    HOSTILE_MESSAGE,
    HOSTILE_NAME,
    HOSTILE_TYPE,
    SINCE,
    TRACE_A,
    TRACE_B,
    TRACE_BENCH,
    TRACE_C,
    TRACE_DEEP,
    TRACE_ERROR,
    TRACE_HOSTILE,
    TRACE_ORPHAN,
    TRACE_WIDE,
    TRACES_RPC,
    Planted,
    plant,
)

from otel_pg_exporter.cli import main
from otel_pg_exporter.query.render import SGR_CODES

SECRET = "Hunter2-Secret"
UNKNOWN_TRACE = "f" * 32
BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}

# Every command with its arguments, for the checks that apply to all of them.
COMMANDS = {
    "show": ["show", TRACE_A],
    "show --execution": ["show", "--execution", str(EXECUTION_ID)],
    "errors": ["errors"],
    "gaps": ["gaps", TRACE_A],
    "orphans": ["orphans"],
    "slow": ["slow"],
    "services": ["services"],
}


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their database and colour: nothing leaks in from the developer's shell."""
    for name in (
        "OTEL_EXPORTER_POSTGRES_DSN",
        "DATABASE_URL",
        "OTEL_EXPORTER_POSTGRES_SCHEMA",
        "OTEL_EXPORTER_POSTGRES_TABLE",
        "NO_COLOR",
        "TERM",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def planted(module_database: str) -> Planted:
    """The module's database with every planted trace, inserted once."""
    return Planted(module_database, plant(module_database))


def run(capsys: pytest.CaptureFixture[str], planted: Planted, *argv: str) -> tuple[int, str, str]:
    """``otel-pg argv --dsn <planted>``: exit code, stdout, stderr."""
    code = main([*argv, "--dsn", planted.dsn])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys: pytest.CaptureFixture[str], planted: Planted, *argv: str) -> str:
    """The output of a command that must succeed silently on stderr."""
    code, out, err = run(capsys, planted, *argv)
    assert (0, "") == (code, err), out
    return out


def ok_json(capsys: pytest.CaptureFixture[str], planted: Planted, *argv: str) -> Any:
    """The parsed --json output of a command that must succeed."""
    return json.loads(ok(capsys, planted, *argv, "--json"))


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


def line_with(output: str, text: str) -> str:
    """The single line of ``output`` holding ``text``."""
    found = [line for line in output.splitlines() if text in line]
    assert 1 == len(found), output
    return found[0]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- show ------------------------------------------------------------------------------------


def test_show_draws_trace_a(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`show` lists trace A's spans in tree order, each marked critical, with the 300 ms gap
    between db.load and render and the 50 ms one after render."""
    lines = ok(capsys, planted, "show", TRACE_A, "--width", "120").splitlines()

    assert lines[0].startswith(f"trace {TRACE_A} · 1,000.0 ms · 4 spans")
    body = lines[2:]
    assert [
        "* GET /checkout",
        "*   auth",
        "*   db.load",
        "    ┄ gap",
        "*   render",
        "    ┄ gap",
    ] == [line[:15].rstrip() for line in body]
    assert body[3].endswith("300.0 ms (after db.load, before render)")
    assert "50.0 ms (after render, at end)" in body[5]
    assert "1,000.0 ms (self 350.0) OK" in body[0]


def test_show_error_trace_shows_the_messages(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """Each error span of the payment trace is followed by its status message."""
    out = ok(capsys, planted, "show", TRACE_ERROR, "--width", "120")

    assert "2 errors" in out.splitlines()[0]
    assert line_with(out, "*   charge").endswith("200.0 ms (self 200.0) ERROR")
    assert "✗ card declined" == line_with(out, "card declined").strip()
    assert "✗ 502" == line_with(out, "✗ 502").strip()


def test_show_orphans_say_their_parent_is_missing(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """Both orphans are drawn as roots with a 'parent missing' line naming the lost id."""
    out = ok(capsys, planted, "show", TRACE_ORPHAN, "--width", "120")

    assert "⚠ parent missing (dead00000000beef)" == line_with(out, "beef)").strip()
    assert "⚠ parent missing (dead00000000cafe)" == line_with(out, "cafe)").strip()


def test_show_depth_and_min_ms_hide_spans(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """--depth and --min-ms hide spans of the 61-level chain and say how many."""
    out = ok(capsys, planted, "show", TRACE_DEEP, "--depth", "3", "--width", "120")
    assert ["level 0", "level 1", "level 2", "level 3"] == [
        " ".join(line[2:].split()[:2])
        for line in out.splitlines()
        if line[2:].strip().startswith("level")
    ]
    assert "… 57 deeper spans hidden (max depth 3)" == out.splitlines()[-1]

    out = ok(capsys, planted, "show", TRACE_DEEP, "--min-ms", "195", "--width", "120")
    assert "… 58 spans shorter than 195 ms hidden" == out.splitlines()[-1]


def test_show_json(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`show --json` holds the trace id, the spans, the gaps and the critical path."""
    document = ok_json(capsys, planted, "show", TRACE_A)

    assert {"trace_id", "spans", "gaps", "critical_path"} == set(document)
    assert TRACE_A == document["trace_id"]
    assert [
        ("GET /checkout", 0, 350.0),
        ("auth", 1, 100.0),
        ("db.load", 1, 300.0),
        ("render", 1, 250.0),
    ] == [(s["operation"], s["depth"], s["self_ms"]) for s in document["spans"]]
    assert [(300.0, "db.load", "render"), (50.0, "render", None)] == [
        (g["gap_ms"], g["before_operation"], g["after_operation"]) for g in document["gaps"]
    ]
    assert [350.0, 100.0, 300.0, 250.0] == [p["contribution_ms"] for p in document["critical_path"]]
    assert document["spans"][0]["started_at"].endswith("+00:00")


def test_show_pads_a_sixteen_hex_trace_id(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """A 16-hex trace id finds the trace stored under its zero-padded 32-hex form."""
    assert TRACE_BENCH == ok_json(capsys, planted, "show", "BEEFBEEFBEEFBEEF")["trace_id"]


def test_show_execution(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`show --execution 42` draws both traces' spans, top-level spans as roots, then the
    300 ms the worker waited between schedule and run job."""
    out = ok(capsys, planted, "show", "--execution", str(EXECUTION_ID), "--width", "120")

    lines = out.splitlines()
    assert "execution 42: 6 spans in 2 trace(s)" == lines[0]
    assert f"trace {TRACE_B} (+1 more trace)" in lines[1]
    header = next(line for line in lines if line.startswith("  span "))
    column = header.index("service")
    body = [line for line in lines[2:] if line.startswith("  ") and line is not header]
    assert [
        "schedule",
        "  enqueue",
        "run job",
        "  step 1",
        "  step 2",
        "    step 2.query",
    ] == [line[2:column].rstrip() for line in body[:-1]]
    assert body[-1].startswith("  ┄ idle 300.0 ms")
    assert body[-1].endswith("between schedule (scheduler) and run job (worker)")


def test_show_execution_header_names_only_real_services(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """The execution's header counts its two services, without an empty name."""
    out = ok(capsys, planted, "show", "--execution", str(EXECUTION_ID), "--width", "120")

    assert "2 services: scheduler, worker" in "\n".join(out.splitlines()[:2])


def test_show_execution_json(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`show --execution 42 --json` lists the execution's spans in time order."""
    spans = ok_json(capsys, planted, "show", "--execution", str(EXECUTION_ID))

    assert [
        (TRACE_B, "schedule", 0, None),
        (TRACE_B, "enqueue", 1, None),
        (TRACE_C, "run job", 0, 300.0),
        (TRACE_C, "step 1", 1, None),
        (TRACE_C, "step 2", 1, None),
        (TRACE_C, "step 2.query", 2, None),
    ] == [(s["trace_id"], s["operation"], s["depth"], s["gap_before_ms"]) for s in spans]


# --- the tables ------------------------------------------------------------------------------


def test_errors(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`errors` lists the three error traces newest first; the payment one with its first
    error, exception type and message."""
    out = ok(capsys, planted, "errors", "--width", "200")

    rows = out.splitlines()[2:]
    assert [TRACE_HOSTILE, TRACES_RPC[-1], TRACE_ERROR] == [row.split()[0] for row in rows]
    assert ["2", "payments", "charge", "PaymentError", "card", "declined"] == (
        line_with(out, TRACE_ERROR).split()[3:]
    )


def test_errors_json_service_limit_and_window(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """`errors --json` carries every field; --service, --limit and --since narrow it."""
    (payment,) = ok_json(capsys, planted, "errors", "--service", "payments")
    assert (TRACE_ERROR, 2, "charge", "card declined", "PaymentError", "card declined") == (
        payment["trace_id"],
        payment["error_spans"],
        payment["operation"],
        payment["status_message"],
        payment["exception_type"],
        payment["exception_message"],
    )
    assert [TRACE_HOSTILE] == [
        e["trace_id"] for e in ok_json(capsys, planted, "errors", "--limit", "1")
    ]
    assert [] == ok_json(capsys, planted, "errors", "--since", "1s")
    assert "no rows" == ok(capsys, planted, "errors", "--since", "1s").strip()


def test_gaps(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`gaps` lists trace A's two gaps, largest first, with the children around them."""
    out = ok(capsys, planted, "gaps", TRACE_A, "--width", "120")

    root = planted.ids["a.root"]
    assert [
        [root, "400.0", "300.0", "router", "GET", "/checkout", "db.load", "render"],
        [root, "950.0", "50.0", "router", "GET", "/checkout", "render", "-"],
    ] == [line.split() for line in out.splitlines()[2:]]
    assert [300.0] == [
        g["gap_ms"] for g in ok_json(capsys, planted, "gaps", TRACE_A, "--min-ms", "100")
    ]


def test_orphans(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`orphans` shows one group: two 'process' spans of shop, one with a remote parent."""
    out = ok(capsys, planted, "orphans", "--width", "120")
    assert [TRACE_ORPHAN, "2", "1"] == line_with(out, TRACE_ORPHAN).split()[:3]
    assert line_with(out, TRACE_ORPHAN).split()[-2:] == ["shop", "process"]

    (group,) = ok_json(capsys, planted, "orphans")
    assert ("shop", "process", 2, 1, TRACE_ORPHAN, planted.ids["o.remote"]) == (
        group["service"],
        group["operation"],
        group["spans"],
        group["remote_parents"],
        group["example_trace_id"],
        group["example_span_id"],
    )
    assert [] == ok_json(capsys, planted, "orphans", "--service", "router")


def test_slow(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`slow --service bench` shows the 100 bench.op calls' percentiles."""
    out = ok(capsys, planted, "slow", "--service", "bench", "--width", "120")
    assert ["bench", "bench.op", "100", "0", "50.5"] == line_with(out, "bench.op").split()[:5]
    assert line_with(out, "bench.op").endswith("100.0   5,050.0")

    rows = ok_json(capsys, planted, "slow", "--service", "bench")
    assert ["bench.run", "bench.op"] == [r["operation"] for r in rows]
    assert pytest.approx((100, 50.5, 95.05, 99.01, 100.0)) == (
        rows[1]["calls"],
        rows[1]["p50_ms"],
        rows[1]["p95_ms"],
        rows[1]["p99_ms"],
        rows[1]["max_ms"],
    )
    assert 3 == len(ok_json(capsys, planted, "slow", "--limit", "3"))


def test_services(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """`services` shows the router → worker edge; --service keeps edges touching it."""
    out = ok(capsys, planted, "services", "--width", "120")
    assert ["router", "call", "worker", "worker", "GET", "/work", "4", "1", "25.0", "38.5"] == (
        line_with(out, "call worker").split()
    )

    edge = {
        "caller_service": "router",
        "caller_operation": "call worker",
        "callee_service": "worker",
        "callee_operation": "GET /work",
        "calls": 4,
        "errors": 1,
        "p50_ms": 25.0,
        "p95_ms": 38.5,
    }
    assert [edge] == ok_json(capsys, planted, "services")
    assert [edge] == ok_json(capsys, planted, "services", "--service", "worker")
    assert [] == ok_json(capsys, planted, "services", "--service", "shop")


# --- colour and width ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_color_always_colours(
    capsys: pytest.CaptureFixture[str], planted: Planted, command: list[str]
) -> None:
    """--color always adds SGR codes, and no other escape sequence."""
    out = ok(capsys, planted, *command, "--color", "always")

    assert "\x1b[" in out
    for code in SGR_CODES:
        out = out.replace(code, "")
    assert "\x1b" not in out


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("no_color", [True, False], ids=["NO_COLOR", "not a tty"])
def test_color_auto_is_plain_without_a_terminal_or_with_no_color(
    capsys: pytest.CaptureFixture[str],
    planted: Planted,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    no_color: bool,
) -> None:
    """--color auto (the default) writes no escape when NO_COLOR is set or stdout is no tty."""
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in ok(capsys, planted, *command)
    assert "\x1b" not in ok(capsys, planted, *command, "--color", "auto")


# The width checks add the traces that are hardest to fit: deep, wide, hostile, orphaned.
WIDE_COMMANDS = {
    **COMMANDS,
    "show deep": ["show", TRACE_DEEP],
    "show wide": ["show", TRACE_WIDE],
    "show hostile": ["show", TRACE_HOSTILE],
    "show orphans": ["show", TRACE_ORPHAN],
    "show errors": ["show", TRACE_ERROR],
}


@pytest.mark.parametrize("command", WIDE_COMMANDS.values(), ids=WIDE_COMMANDS.keys())
@pytest.mark.parametrize("color", ["never", "always"])
def test_width_40_holds_every_line(
    capsys: pytest.CaptureFixture[str], planted: Planted, command: list[str], color: str
) -> None:
    """--width 40 keeps every line within 40 characters (escape codes aside)."""
    out = ok(capsys, planted, *command, "--width", "40", "--color", color)
    for code in SGR_CODES:
        out = out.replace(code, "")

    assert [] == [line for line in out.splitlines() if len(line) > 40]


def test_width_below_40_is_40(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """A width under 40 is taken as 40."""
    assert ok(capsys, planted, "show", TRACE_A, "--width", "10") == ok(
        capsys, planted, "show", TRACE_A, "--width", "40"
    )


# --- hostile span data -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["show", TRACE_HOSTILE], ["errors"], ["slow", "--service", "hostile"]],
    ids=["show", "errors", "slow"],
)
@pytest.mark.parametrize("color", ["never", "always"])
def test_hostile_span_data_reaches_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], planted: Planted, command: list[str], color: str
) -> None:
    """A span name holding OSC 52 and clear-screen, a status message holding CR and a bidi
    override, an exception type holding CSI: shown as visible escapes, never raw."""
    out = ok(capsys, planted, *command, "--width", "250", "--color", color)
    for code in SGR_CODES:
        out = out.replace(code, "")

    assert [] == unsafe(out)
    assert "\\x1b]52;c;ZXZpbA==\\x07evil\\x1b[2J" in out
    if command[0] != "slow":
        assert "bad\\r\\u202eeulav" in out


def test_hostile_span_data_in_json_is_escaped(
    capsys: pytest.CaptureFixture[str], planted: Planted
) -> None:
    """--json writes controls as \\u escapes and reads back to the stored text."""
    for argv in (["show", TRACE_HOSTILE], ["errors", "--service", "hostile"]):
        out = ok(capsys, planted, *argv, "--json")
        assert [] == unsafe(out)
    (error,) = json.loads(out)
    assert (HOSTILE_NAME, HOSTILE_MESSAGE, HOSTILE_TYPE) == (
        error["operation"],
        error["status_message"],
        error["exception_type"],
    )


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["show", UNKNOWN_TRACE], f"trace {UNKNOWN_TRACE}"),
        (["show", "--execution", "4242"], "execution 4242"),
    ],
    ids=["trace", "execution"],
)
def test_show_unknown_exits_1_naming_it(
    capsys: pytest.CaptureFixture[str], planted: Planted, argv: list[str], named: str
) -> None:
    """An unknown trace or execution exits 1 with one line on stderr naming it."""
    code, out, err = run(capsys, planted, *argv)

    assert (1, "") == (code, out)
    assert [f"otel-pg show: error: no spans of {named} in 'trace_spans'"] == err.splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "not-a-trace-id"], "a trace id is 32 hex characters, not 'not-a-trace-id'"),
        (["show", "a" * 31], "a trace id is 32 hex characters"),
        (["gaps", "xyz"], "a trace id is 32 hex characters, not 'xyz'"),
        (["show"], "give a TRACE_ID or --execution N"),
        (["show", TRACE_A, "--execution", "42"], "give a TRACE_ID or --execution N"),
        (["errors", "--since", "yesterday"], "--since takes 30m, 1h, 2d, 1w"),
        (["slow", "--limit", "0"], "limit must be a positive integer"),
        (["show", "--execution", "x"], "invalid int value"),
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], planted: Planted, argv: list[str], message: str
) -> None:
    """A malformed trace id, --since, --limit or argument exits 2 with the reason on stderr."""
    code, out, err = run(capsys, planted, *argv)

    assert (2, "") == (code, out)
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_database_down_exits_1_without_the_password(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A server that does not answer exits 1 with one line on stderr: the DSN with its
    password redacted, no traceback."""
    dsn = f"postgresql://reader:{SECRET}@127.0.0.1:{_closed_port()}/spans"

    code = main([*command, "--dsn", dsn])

    captured = capsys.readouterr()
    assert (1, "") == (code, captured.out)
    assert captured.err.startswith(
        f"otel-pg {command[0]}: error: cannot connect to 'postgresql://reader:***@127.0.0.1:"
    )
    assert 1 == len(captured.err.splitlines())
    assert "Traceback" not in captured.err
    assert SECRET not in captured.err


def test_functions_not_installed_exit_1_saying_migrate(
    migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the table but not the query functions, every command exits 1 and says to run
    `otel-pg migrate`."""
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(
            "DROP FUNCTION trace_tree, trace_gaps, critical_path, orphan_spans, error_traces,"
            " slow_operations, execution_trace, service_map"
        )

    for command in COMMANDS.values():
        code = main([*command, "--dsn", migrated_dsn])
        captured = capsys.readouterr()
        assert (1, "") == (code, captured.out), command
        assert f"otel-pg {command[0]}: error: " in captured.err
        assert "run `otel-pg migrate`" in captured.err
        assert "Traceback" not in captured.err


def test_since_iso_time(capsys: pytest.CaptureFixture[str], planted: Planted) -> None:
    """--since takes an ISO time: one before the planted spans finds them all."""
    rows = ok_json(capsys, planted, "orphans", "--since", SINCE.isoformat())
    assert [2] == [r["spans"] for r in rows]
