"""The read-side commands: ``show`` (a waterfall), ``errors``, ``gaps``, ``orphans``, ``slow``
and ``services``. Each queries through ``otel_pg_exporter.query`` and renders through
``query.render``; ``--json`` prints the same rows for scripts."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from otel_pg_exporter import query
from otel_pg_exporter.cli.common import EXIT_OK, Subcommands, settings_of, target_options
from otel_pg_exporter.query import render
from otel_pg_exporter.query.rows import ExecutionSpan, TreeSpan

DEFAULT_SINCE = "1d"
DEFAULT_LIMIT = 50
DEFAULT_WIDTH = 100


def _output_options(*, window: bool) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print the rows as JSON")
    group.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour: on a terminal unless NO_COLOR is set (auto, the default), always, never",
    )
    group.add_argument(
        "--width", type=int, help="columns to fit (default: the terminal's, else 100)"
    )
    if window:
        group.add_argument(
            "--since",
            default=DEFAULT_SINCE,
            help=f"spans started since: 30m, 1h, 2d, 1w or an ISO time (default {DEFAULT_SINCE})",
        )
        group.add_argument("--service", help="only this service")
        group.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            help=f"at most this many rows (default {DEFAULT_LIMIT})",
        )
    return options


def _color(args: argparse.Namespace, out: TextIO) -> bool:
    if args.color != "auto":
        return bool(args.color == "always")
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def _width(args: argparse.Namespace) -> int:
    if args.width is not None:
        return max(int(args.width), 40)
    return max(shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns, 40)


def _print(out: TextIO, text: str) -> None:
    out.write(text if text.endswith("\n") else text + "\n")


# --- show -----------------------------------------------------------------------------------


def _run_show(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    target = query.Target(settings.schema, settings.table)
    if (args.trace_id is None) == (args.execution is None):
        raise ValueError("give a TRACE_ID or --execution N (one of them)")
    with query.connect(settings.dsn) as conn:
        if args.execution is not None:
            execution = query.execution_trace(conn, target, args.execution)
            if args.json:
                _print(out, render.to_json(execution))
                return EXIT_OK
            _print(out, _execution_waterfall(execution, args, out))
            return EXIT_OK
        spans = query.trace_tree(conn, target, args.trace_id)
        gaps = query.trace_gaps(conn, target, args.trace_id, args.gap_ms)
        path = query.critical_path(conn, target, args.trace_id)
    if args.json:
        document = {
            "trace_id": spans[0].trace_id,
            "spans": json.loads(render.to_json(spans)),
            "gaps": json.loads(render.to_json(gaps)),
            "critical_path": json.loads(render.to_json(path)),
        }
        _print(out, json.dumps(document, indent=2, ensure_ascii=True))
        return EXIT_OK
    _print(
        out,
        render.render_waterfall(
            spans,
            width=_width(args),
            color=_color(args, out),
            gaps=gaps,
            min_gap_ms=args.gap_ms,
            critical=[span.span_id for span in path],
            max_depth=args.depth,
            min_ms=args.min_ms,
        ),
    )
    return EXIT_OK


def _execution_waterfall(
    execution: Sequence[ExecutionSpan], args: argparse.Namespace, out: TextIO
) -> str:
    """The execution's spans as one waterfall (its top-level spans are the roots), then the
    idle time between top-level spans, the gaps no trace of its own can show."""
    spans = [
        TreeSpan(
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_span_id=span.parent_span_id,
            depth=span.depth,
            path=[],
            service=span.service,
            operation=span.operation,
            kind="internal",
            started_at=span.started_at,
            completed_at=span.completed_at,
            offset_ms=span.offset_ms,
            duration_ms=span.duration_ms,
            self_ms=span.duration_ms,
            status=span.status,
            status_message=span.status_message,
            execution_id=args.execution,
            is_orphan=False,
        )
        for span in execution
    ]
    text = render.render_waterfall(
        spans,
        width=_width(args),
        color=_color(args, out),
        max_depth=args.depth,
        min_ms=args.min_ms,
    )
    traces = len({span.trace_id for span in execution})
    lines = [f"execution {args.execution}: {len(execution)} spans in {traces} trace(s)", text]
    previous: ExecutionSpan | None = None
    for span in execution:
        if span.depth != 0:
            continue
        if previous is not None and span.gap_before_ms and span.gap_before_ms >= args.gap_ms:
            lines.append(
                render.clean(
                    f"  ┄ idle {span.gap_before_ms:,.1f} ms between {previous.operation} "
                    f"({previous.service}) and {span.operation} ({span.service})",
                    _width(args),
                )
            )
        previous = span
    return "\n".join(lines)


def add_show(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "show",
        parents=[target_options(), _output_options(window=False)],
        help="a trace (or a job execution) as a waterfall in the terminal",
        description=(
            "Draw one trace as a waterfall: the span tree, a time bar per span to scale, "
            "duration and self time, errors with their message, gaps inside spans, and the "
            "critical path (marked *)."
        ),
    )
    parser.add_argument("trace_id", nargs="?", metavar="TRACE_ID", help="32-hex trace id")
    parser.add_argument("--execution", type=int, metavar="N", help="a job execution instead")
    parser.add_argument("--depth", type=int, help="hide spans deeper than this")
    parser.add_argument("--min-ms", type=float, help="hide spans shorter than this (ms)")
    parser.add_argument(
        "--gap-ms", type=float, default=1.0, help="mark gaps of at least this (ms, default 1)"
    )
    parser.set_defaults(run=_run_show)


# --- the tables -----------------------------------------------------------------------------


def _table_command(
    name: str,
    help_text: str,
    fetch: Callable[[Any, query.Target, argparse.Namespace], Sequence[Any]],
    columns: Sequence[tuple[str, str]],
    *,
    window: bool = True,
) -> Callable[[Subcommands], argparse.ArgumentParser]:
    def run(args: argparse.Namespace, out: TextIO) -> int:
        settings = settings_of(args)
        target = query.Target(settings.schema, settings.table)
        if window:
            args.since_at = query.parse_since(args.since)
        with query.connect(settings.dsn) as conn:
            rows = fetch(conn, target, args)
        if args.json:
            _print(out, render.to_json(rows))
        else:
            _print(
                out, render.render_table(rows, columns, width=_width(args), color=_color(args, out))
            )
        return EXIT_OK

    def add(subcommands: Subcommands) -> argparse.ArgumentParser:
        parser = subcommands.add_parser(
            name,
            parents=[target_options(), _output_options(window=window)],
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
        )
        parser.set_defaults(run=run)
        return parser

    return add


def add_errors(subcommands: Subcommands) -> None:
    _table_command(
        "errors",
        "traces with an error, newest first, each with its first error and exception",
        lambda conn, target, args: query.error_traces(
            conn, target, args.since_at, args.service, limit=args.limit
        ),
        render.ERROR_COLUMNS,
    )(subcommands)


def add_gaps(subcommands: Subcommands) -> None:
    parser = _table_command(
        "gaps",
        "time inside a trace's spans covered by none of their children, largest first",
        lambda conn, target, args: query.trace_gaps(conn, target, args.trace_id, args.min_ms),
        render.GAP_COLUMNS,
        window=False,
    )(subcommands)
    parser.add_argument("trace_id", metavar="TRACE_ID", help="32-hex trace id")
    parser.add_argument("--min-ms", type=float, default=0.0, help="only gaps of at least this (ms)")


def add_orphans(subcommands: Subcommands) -> None:
    _table_command(
        "orphans",
        "spans whose parent never arrived, by service and operation",
        lambda conn, target, args: query.orphan_spans(
            conn, target, args.since_at, args.service, limit=args.limit
        ),
        render.ORPHAN_COLUMNS,
    )(subcommands)


def add_slow(subcommands: Subcommands) -> None:
    _table_command(
        "slow",
        "duration percentiles by service and operation, slowest p95 first",
        lambda conn, target, args: query.slow_operations(
            conn, target, args.since_at, args.service, limit=args.limit
        ),
        render.SLOW_COLUMNS,
    )(subcommands)


def add_services(subcommands: Subcommands) -> None:
    _table_command(
        "services",
        "the service map: calls between services with counts, errors and p95",
        lambda conn, target, args: [
            edge
            for edge in query.service_map(conn, target, args.since_at, limit=args.limit)
            if args.service is None or args.service in (edge.caller_service, edge.callee_service)
        ],
        render.SERVICE_MAP_COLUMNS,
    )(subcommands)


COMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    add_show,
    add_errors,
    add_gaps,
    add_orphans,
    add_slow,
    add_services,
)
