"""``otel-pg mcp`` (the MCP server for an editor's agent, or ``--check``) and ``otel-pg grant
reader NAME`` (the least-privilege role its ``query`` tool needs)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO
from urllib.parse import quote

from otel_pg_exporter import query
from otel_pg_exporter.cli.common import (
    EXIT_DATABASE_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Subcommands,
    settings_of,
    target_options,
)
from otel_pg_exporter.mcp.reader import READER_STATEMENT_TIMEOUT, Check, grant_reader, readiness
from otel_pg_exporter.mcp.sandbox import Limits

INSTALL = "pip install 'otel_pg_exporter[mcp]'"
DEFAULT_PORT = 8765


def _sdk_version() -> str | None:
    """The installed ``mcp`` SDK's version, or None when it cannot be imported."""
    try:
        import mcp.server.mcpserver  # noqa: F401 - imported to prove it imports
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp")
    except PackageNotFoundError:
        return "unknown version"


def _run_mcp(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    target = query.Target(settings.schema, settings.table)
    sdk = _sdk_version()
    if args.check:
        result = readiness(settings.dsn, target)
        result.checks.append(
            Check("mcp SDK", sdk is not None, f"mcp {sdk}" if sdk else f"missing: {INSTALL}")
        )
        for check in result.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<12} {check.detail}", file=out)
        return EXIT_OK if result.ok else EXIT_DATABASE_ERROR
    if sdk is None:
        print(f"otel-pg mcp: the MCP SDK is not installed: {INSTALL}", file=sys.stderr)
        return EXIT_USAGE
    if args.query_timeout <= 0 or not 0 < args.port < 65536:
        raise ValueError("--query-timeout takes seconds above 0; --port 1 to 65535")
    from otel_pg_exporter.mcp.server import serve
    from otel_pg_exporter.mcp.tools import Config

    limits = Limits(timeout_ms=int(args.query_timeout * 1000))
    serve(Config(settings.dsn, target, limits), "http" if args.http else "stdio", args.port)
    return EXIT_OK


def add_mcp(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "mcp",
        parents=[target_options()],
        help="an MCP server over the spans table, for the agent in your editor",
        description=(
            "Serve the read tools (search_traces, recent_errors, get_trace, get_span, "
            "find_gaps, critical_path, execution_trace, slow_operations, service_map, schema, "
            "query) to an MCP client over stdio, or over streamable HTTP on 127.0.0.1 with "
            f"--http. Needs {INSTALL}. The query tool runs only when the DSN's role is a "
            "least-privilege reader (otel-pg grant reader NAME)."
        ),
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="print whether the database, table, functions, reader role and SDK are ready",
    )
    parser.add_argument("--http", action="store_true", help="streamable HTTP on 127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--query-timeout",
        type=float,
        default=Limits().timeout_ms / 1000,
        metavar="SECONDS",
        help="statement timeout of the query tool (default %(default)g)",
    )
    parser.set_defaults(run=_run_mcp)


def _run_grant(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    password = None
    if args.password_from_env is not None:
        password = os.environ.get(args.password_from_env)
        if not password:
            raise ValueError(f"${args.password_from_env} is empty or not set")
    granted = grant_reader(
        settings.dsn, query.Target(settings.schema, settings.table), args.name, password
    )
    info = granted.conninfo
    user = quote(granted.role, safe="")
    secret = f":<${args.password_from_env}, percent-encoded>" if password is not None else ""
    host = str(info.get("host") or "localhost")
    where = (
        f"{quote(host, safe='')}:{info.get('port', '5432')}/{quote(str(info['dbname']), safe='')}"
        if not host.startswith("/")
        else f"/{quote(str(info['dbname']), safe='')}?host={quote(host, safe='')}"
    )
    verb = "Created" if granted.created else "Updated"
    print(
        f"{verb} role {granted.role!r}: LOGIN, default_transaction_read_only = on, "
        f"statement_timeout = {READER_STATEMENT_TIMEOUT}; SELECT on {granted.table}, EXECUTE on "
        f"{len(granted.functions)} query function(s), USAGE on its schema.",
        file=out,
    )
    if password is None:
        print(
            "No password set (give one with --password-from-env VAR, or let pg_hba.conf "
            "decide how it logs in).",
            file=out,
        )
    print(
        "Give otel-pg mcp this DSN (in the MCP client's env):\n"
        f"  OTEL_EXPORTER_POSTGRES_DSN=postgresql://{user}{secret}@{where}",
        file=out,
    )
    return EXIT_OK


def add_grant(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "grant",
        parents=[target_options()],
        help="create the least-privilege reader role the MCP query tool needs",
        description=(
            "otel-pg grant reader NAME: create (if missing) a LOGIN role with SELECT on the "
            "spans table, EXECUTE on its query functions, USAGE on its schema, "
            "default_transaction_read_only = on and a statement timeout; an existing role "
            "that could write the table or is privileged is refused. Run it with an admin DSN."
        ),
    )
    parser.add_argument("kind", choices=("reader",), help="the kind of role: reader")
    parser.add_argument("name", metavar="NAME", help="the role's name")
    parser.add_argument(
        "--password-from-env",
        metavar="VAR",
        help="set the role's password from this environment variable (sent hashed)",
    )
    parser.set_defaults(run=_run_grant)
