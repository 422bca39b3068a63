"""``otel-pg``: thin commands over the package's modules.

Exit codes: 0 success, 1 database error or a problem found (message on stderr, password
redacted), 2 usage. A command lives in a module of this package with an ``add_<name>
(subcommands)`` function that registers its parser and sets ``run`` to a function of the
parsed arguments and the output stream returning the exit code; list it in _COMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from otel_pg_exporter.cli.cleanup import add_cleanup
from otel_pg_exporter.cli.common import EXIT_DATABASE_ERROR, EXIT_OK, EXIT_USAGE, Subcommands
from otel_pg_exporter.cli.doctor import add_doctor
from otel_pg_exporter.cli.index import add_index
from otel_pg_exporter.cli.maintain import add_maintain
from otel_pg_exporter.cli.mcp import add_grant, add_mcp
from otel_pg_exporter.cli.migrate import add_migrate, add_rollback
from otel_pg_exporter.cli.query import COMMANDS as QUERY_COMMANDS
from otel_pg_exporter.cli.spool import add_spool
from otel_pg_exporter.errors import OtelPgError

_COMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    add_migrate,
    add_rollback,
    add_maintain,
    add_doctor,
    add_spool,
    add_cleanup,
    add_index,
    *QUERY_COMMANDS,
    add_mcp,
    add_grant,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``otel-pg`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="otel-pg",
        description="Manage and read the PostgreSQL table that otel_pg_exporter writes spans into.",
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
    except OtelPgError as exc:
        print(f"otel-pg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATABASE_ERROR
    except KeyboardInterrupt:
        return 130
