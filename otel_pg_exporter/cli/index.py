"""``otel-pg index``: opt-in indexes for attribute search (add, drop, list)."""

from __future__ import annotations

import argparse
import json
import time
from typing import TextIO

from otel_pg_exporter.cli.common import EXIT_OK, Subcommands, settings_of, target_options
from otel_pg_exporter.schema import indexes


def _key(args: argparse.Namespace) -> str | None:
    if args.what == "attributes":
        if args.name is not None:
            raise ValueError("`attributes` takes no key name; use `key NAME` for one key")
        return None
    if not args.name:
        raise ValueError("`key` needs the attribute's name, e.g. `key conversation.id`")
    return str(args.name)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    if args.action == "list":
        found = indexes.list_indexes(settings.dsn, schema=settings.schema, table=settings.table)
        if args.json:
            print(json.dumps([index.__dict__ for index in found]), file=out)
        elif not found:
            print(f"{settings.table}: no attribute index", file=out)
        for index in [] if args.json else found:
            label = "all keys (GIN jsonb_path_ops)" if index.key is None else f"key {index.key!r}"
            state = "" if index.valid else "  (INVALID: run `otel-pg index add` again)"
            print(f"{index.name}: {label}, {index.bytes / 2**20:,.1f} MiB{state}", file=out)
        return EXIT_OK
    if args.what is None:
        raise ValueError(f"`index {args.action}` needs `attributes` or `key NAME`")
    key = _key(args)
    started = time.perf_counter()
    if args.action == "add":
        index = indexes.add_index(
            settings.dsn, key=key, schema=settings.schema, table=settings.table
        )
        print(
            f"{index.name} is ready on {settings.table} "
            f"({index.bytes / 2**20:,.1f} MiB, {time.perf_counter() - started:.1f} s; "
            "built concurrently, writers were not blocked)",
            file=out,
        )
    else:
        dropped = indexes.drop_index(
            settings.dsn, key=key, schema=settings.schema, table=settings.table
        )
        print("dropped" if dropped else "there was no such index", file=out)
    return EXIT_OK


def add_index(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "index",
        parents=[target_options()],
        help="add, drop or list opt-in indexes for attribute search",
        description=(
            "`index add attributes`: a GIN jsonb_path_ops index on metadata, for "
            'metadata @> \'{"key": "value"}\' on any key. `index add key NAME`: an index on '
            "metadata ->> 'NAME' alone (cheaper to keep up). Built CONCURRENTLY: writers are "
            "never blocked. `make bench` part 5 and `make bench-scale` measure what each costs "
            "the exporter."
        ),
    )
    parser.add_argument("action", choices=("add", "drop", "list"))
    parser.add_argument("what", nargs="?", choices=("attributes", "key"))
    parser.add_argument("name", nargs="?", help="the attribute key, with `key`")
    parser.add_argument("--json", action="store_true", help="list as JSON")
    parser.set_defaults(run=_run)
