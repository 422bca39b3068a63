"""``otel-pg migrate`` and ``otel-pg rollback``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from otel_pg_exporter.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    Subcommands,
    settings_of,
    target_options,
    where,
)
from otel_pg_exporter.schema.migrations import rollback, upgrade


def _run_migrate(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    started = time.perf_counter()
    result = upgrade(
        settings.dsn,
        schema=settings.schema,
        table=settings.table,
        partitioned=args.partitioned,
    )
    elapsed = time.perf_counter() - started
    if result.recreated:
        print(
            f"Recreated {', '.join(result.recreated)}: recorded as migrated but missing "
            "(dropped by hand?)",
            file=out,
        )
    if result.applied:
        versions = ", ".join(str(version) for version in result.applied)
        layout = ", partitioned by day on started_at," if result.partitioned else ""
        print(
            f"Applied migration(s) {versions} to {where(settings)}{layout} in {elapsed:.2f} s",
            file=out,
        )
    elif not result.recreated:
        print(f"{where(settings)} is up to date ({elapsed:.2f} s)", file=out)
    return EXIT_OK


def add_migrate(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "migrate",
        parents=[target_options()],
        help="create or upgrade the spans table (safe to repeat and to run concurrently)",
        description=(
            "Apply the pending migrations to the spans table. Creates only new objects; "
            "history is kept in otel_pg_schema_migrations in the table's schema."
        ),
    )
    parser.add_argument(
        "--partitioned",
        action="store_true",
        help=(
            "create the table partitioned by day on started_at (primary key trace_id, "
            "span_id, started_at), with its first partitions; run `otel-pg maintain` daily. "
            "Only for a new table: an existing one keeps its layout"
        ),
    )
    parser.set_defaults(run=_run_migrate)


def _run_rollback(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    if not args.yes:
        print(
            f"otel-pg rollback: this drops {where(settings)} with every span in it; "
            "run again with --yes to do it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    started = time.perf_counter()
    rollback(settings.dsn, schema=settings.schema, table=settings.table)
    elapsed = time.perf_counter() - started
    print(f"Dropped {where(settings)} and its migration history in {elapsed:.2f} s", file=out)
    return EXIT_OK


def add_rollback(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "rollback",
        parents=[target_options()],
        help="drop the spans table, its indexes and its migration history",
        description=(
            "Undo every migration of the spans table: drop the table (all spans are lost), "
            "its rows in otel_pg_schema_migrations, and that table once it is empty."
        ),
    )
    parser.add_argument("--yes", action="store_true", help="confirm: really drop the table")
    parser.set_defaults(run=_run_rollback)
