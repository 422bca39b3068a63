"""``otel-pg cleanup``: retention now, in bounded batches that never stall the writers."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import TextIO

from otel_pg_exporter.cli.common import EXIT_OK, Subcommands, settings_of, target_options
from otel_pg_exporter.query.traces import parse_duration
from otel_pg_exporter.schema import maintenance


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` (the units of ``--since``); ValueError otherwise."""
    age = parse_duration(text)
    if age is None or age <= timedelta(0):
        raise ValueError(f"--older-than takes a positive age like 30d, 12h or 2w, not {text!r}")
    return age


def _run_cleanup(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    if args.older_than is None:
        if settings.retention_days <= 0:
            print(
                "Retention is off (OTEL_EXPORTER_POSTGRES_RETENTION_DAYS=0): nothing deleted. "
                "Pass --older-than to clean up anyway.",
                file=out,
            )
            return EXIT_OK
        older_than = timedelta(days=settings.retention_days)
    else:
        older_than = parse_age(args.older_than)
    live = not args.json and getattr(out, "isatty", lambda: False)()

    def progress(report: maintenance.CleanupReport) -> None:
        if live and report.batches % 10 == 0:
            print(f"\r  {report.rows:,} spans deleted in {report.batches:,} batches", end="")

    report = maintenance.cleanup(
        settings.dsn,
        older_than=older_than,
        schema=settings.schema,
        table=settings.table,
        batch_rows=args.batch_rows,
        pause_s=args.pause_ms / 1000,
        dry_run=args.dry_run,
        progress=progress,
    )
    if live:
        print("\r", end="", file=sys.stdout)
    if args.json:
        document = {
            "cutoff": report.cutoff.isoformat(),
            "dry_run": report.dry_run,
            "rows": report.rows,
            "batches": report.batches,
            "partitions": report.partitions,
            "lock_waits": report.lock_waits,
            "seconds": round(report.seconds, 3),
            "stopped": report.stopped,
        }
        print(json.dumps(document), file=out)
    else:
        print(f"{settings.table}: {report.summary()}", file=out)
    return EXIT_OK


def add_cleanup(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "cleanup",
        parents=[target_options()],
        help="delete spans older than the retention period now, without stalling writers",
        description=(
            "Delete the spans created before the cutoff: whole day partitions first "
            "(partitioned layout), then rows in batches through the created_at index, each "
            "batch its own transaction with a 100 ms lock_timeout, pausing between batches."
        ),
    )
    parser.add_argument(
        "--older-than",
        help="age of the spans to delete: 30d, 12h, 2w (default: "
        "$OTEL_EXPORTER_POSTGRES_RETENTION_DAYS days, 30)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=maintenance.DEFAULT_BATCH_ROWS,
        help=f"rows per batch (default {maintenance.DEFAULT_BATCH_ROWS})",
    )
    parser.add_argument(
        "--pause-ms",
        type=int,
        default=int(maintenance.DEFAULT_PAUSE_S * 1000),
        help="pause between batches (default 100)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=_run_cleanup)
