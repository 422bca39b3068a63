"""What every ``otel-pg`` command shares: exit codes, the --dsn/--schema/--table options and
their resolution through settings.py's one precedence chain."""

from __future__ import annotations

import argparse
import os
from typing import TypeAlias

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter.settings import ExporterSettings

EXIT_OK = 0
EXIT_DATABASE_ERROR = 1
EXIT_USAGE = 2

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def target_options() -> argparse.ArgumentParser:
    """--dsn, --schema, --table: shared by every command that talks to the spans table."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("database")
    group.add_argument(
        "--dsn",
        help=(
            f"libpq connection string or URL (default: ${ev.OTEL_EXPORTER_POSTGRES_DSN}, then "
            "$DATABASE_URL, then libpq's PG* variables); prefer the variables, since "
            "arguments are visible to other users in the process list"
        ),
    )
    group.add_argument(
        "--schema",
        help=f"schema of the spans table (default: ${ev.OTEL_EXPORTER_POSTGRES_SCHEMA}, "
        "then the connection's current schema)",
    )
    group.add_argument(
        "--table",
        help=f"spans table name (default: ${ev.OTEL_EXPORTER_POSTGRES_TABLE}, then trace_spans)",
    )
    return options


def settings_of(args: argparse.Namespace) -> ExporterSettings:
    """The one precedence chain: argument > our variable > standard variable > default."""
    return ExporterSettings.resolve(os.environ, dsn=args.dsn, schema=args.schema, table=args.table)


def where(settings: ExporterSettings) -> str:
    table = f"{settings.schema}.{settings.table}" if settings.schema else settings.table
    database = redact_dsn(settings.dsn) if settings.dsn else "PG* defaults"
    return f"{table!r} ({database})"
