"""``otel-pg maintain``: the day partitions of a partitioned spans table, made ahead."""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from otel_pg_exporter.cli.common import EXIT_OK, Subcommands, settings_of, target_options, where
from otel_pg_exporter.schema.partitions import DAYS_AHEAD, DAYS_BEHIND, maintain


def _run_maintain(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    started = time.perf_counter()
    result = maintain(
        settings.dsn,
        schema=settings.schema,
        table=settings.table,
        days_ahead=args.days_ahead,
        days_behind=args.days_behind,
    )
    elapsed = time.perf_counter() - started
    if not result.partitioned:
        print(
            f"{where(settings)} is not partitioned: nothing to maintain ({elapsed:.2f} s)",
            file=out,
        )
        return EXIT_OK
    if result.managed_by:
        print(
            f"{where(settings)} is maintained by {result.managed_by}: nothing to do "
            f"({elapsed:.2f} s)",
            file=out,
        )
        return EXIT_OK
    for partition in result.created:
        moved = (
            f", {partition.rows_moved} row(s) moved in from the default partition"
            if partition.rows_moved
            else ""
        )
        print(f"created {partition.name} for {partition.day:%Y-%m-%d}{moved}", file=out)
    if result.created:
        print(
            f"Created {len(result.created)} partition(s) of {where(settings)}, moved "
            f"{result.rows_moved} row(s) out of the default partition, in {elapsed:.2f} s",
            file=out,
        )
    else:
        print(
            f"{where(settings)} has its partitions from {args.days_behind} day(s) ago to "
            f"{args.days_ahead} day(s) ahead and nothing to move out of the default "
            f"partition ({elapsed:.2f} s)",
            file=out,
        )
    return EXIT_OK


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"0 or more days, not {value}")
    return value


def add_maintain(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "maintain",
        parents=[target_options()],
        help="create the day partitions ahead and empty the default partition "
        "(partitioned tables; safe to repeat)",
        description=(
            "For a table made with `otel-pg migrate --partitioned`: create the missing day "
            "partitions (UTC days) from --days-behind days ago to --days-ahead days ahead, and "
            "move the spans found in the default partition into partitions of their own. "
            "Does nothing for a plain table. Writers are not held up; run it at least daily "
            "(the exporter's background job runs it hourly)."
        ),
    )
    parser.add_argument(
        "--days-ahead",
        type=_days,
        default=DAYS_AHEAD,
        metavar="N",
        help=f"make partitions up to N days after today (default {DAYS_AHEAD})",
    )
    parser.add_argument(
        "--days-behind",
        type=_days,
        default=DAYS_BEHIND,
        metavar="N",
        help=f"make partitions from N days before today (default {DAYS_BEHIND})",
    )
    parser.set_defaults(run=_run_maintain)
