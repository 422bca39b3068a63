"""``otel-pg``: thin commands over the package's modules.

Exit codes: 0 success, 1 database error (message on stderr, password redacted), 2 usage.
A new command is a ``_add_<name>(subcommands)`` function that registers its parser and sets
``run`` to a function of the parsed arguments returning the exit code; list it in _COMMANDS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO, TypeAlias

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter.errors import MigrationError
from otel_pg_exporter.schema.migrations import rollback, upgrade
from otel_pg_exporter.settings import ExporterSettings

EXIT_OK = 0
EXIT_DATABASE_ERROR = 1
EXIT_USAGE = 2

_Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _target_options() -> argparse.ArgumentParser:
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


def _settings(args: argparse.Namespace) -> ExporterSettings:
    """The one precedence chain: argument > our variable > standard variable > default."""
    return ExporterSettings.resolve(os.environ, dsn=args.dsn, schema=args.schema, table=args.table)


def _where(settings: ExporterSettings) -> str:
    table = f"{settings.schema}.{settings.table}" if settings.schema else settings.table
    database = redact_dsn(settings.dsn) if settings.dsn else "PG* defaults"
    return f"{table!r} ({database})"


def _run_migrate(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    started = time.perf_counter()
    result = upgrade(settings.dsn, schema=settings.schema, table=settings.table)
    elapsed = time.perf_counter() - started
    if result.recreated:
        print(
            f"Recreated {', '.join(result.recreated)}: recorded as migrated but missing "
            "(dropped by hand?)",
            file=out,
        )
    if result.applied:
        versions = ", ".join(str(version) for version in result.applied)
        print(f"Applied migration(s) {versions} to {_where(settings)} in {elapsed:.2f} s", file=out)
    elif not result.recreated:
        print(f"{_where(settings)} is up to date ({elapsed:.2f} s)", file=out)
    return EXIT_OK


def _add_migrate(subcommands: _Subcommands) -> None:
    parser = subcommands.add_parser(
        "migrate",
        parents=[_target_options()],
        help="create or upgrade the spans table (safe to repeat and to run concurrently)",
        description=(
            "Apply the pending migrations to the spans table. Creates only new objects; "
            "history is kept in otel_pg_schema_migrations in the table's schema."
        ),
    )
    parser.set_defaults(run=_run_migrate)


def _run_rollback(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    if not args.yes:
        print(
            f"otel-pg rollback: this drops {_where(settings)} with every span in it; "
            "run again with --yes to do it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    started = time.perf_counter()
    rollback(settings.dsn, schema=settings.schema, table=settings.table)
    elapsed = time.perf_counter() - started
    print(f"Dropped {_where(settings)} and its migration history in {elapsed:.2f} s", file=out)
    return EXIT_OK


def _add_rollback(subcommands: _Subcommands) -> None:
    parser = subcommands.add_parser(
        "rollback",
        parents=[_target_options()],
        help="drop the spans table, its indexes and its migration history",
        description=(
            "Undo every migration of the spans table: drop the table (all spans are lost), "
            "its rows in otel_pg_schema_migrations, and that table once it is empty."
        ),
    )
    parser.add_argument("--yes", action="store_true", help="confirm: really drop the table")
    parser.set_defaults(run=_run_rollback)


_COMMANDS: tuple[Callable[[_Subcommands], None], ...] = (
    _add_migrate,
    _add_rollback,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``otel-pg`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="otel-pg",
        description="Manage the PostgreSQL table that otel_pg_exporter writes spans into.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in _COMMANDS:
        add_command(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``otel-pg`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace, TextIO], int] = args.run
    try:
        return run(args, sys.stdout)
    except ValueError as exc:
        print(f"otel-pg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MigrationError as exc:
        print(f"otel-pg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATABASE_ERROR
    except KeyboardInterrupt:
        return 130
