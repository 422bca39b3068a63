"""The table layout the tests run against: plain, or partitioned by day (``TEST_TABLE_LAYOUT``).

``make test`` runs the suite on the plain table, then the layout-independent modules again with
``TEST_TABLE_LAYOUT=partitioned``: every fixture and test that creates a spans table goes through
``migrate_table`` (or passes ``migrate_args()`` to ``otel-pg migrate``), so the exporter, the SQL
functions and the commands are held to the same assertions on both layouts.
"""

from __future__ import annotations

import os

DEFAULT_TABLE = "trace_spans"

LAYOUTS = ("plain", "partitioned")
LAYOUT = os.environ.get("TEST_TABLE_LAYOUT", "").strip().lower() or "plain"
if LAYOUT not in LAYOUTS:
    raise RuntimeError(f"TEST_TABLE_LAYOUT must be one of {', '.join(LAYOUTS)}, not {LAYOUT!r}")
PARTITIONED = LAYOUT == "partitioned"


def migrate_table(dsn: str, *, schema: str | None = None, table: str = DEFAULT_TABLE) -> list[int]:
    """``migrate`` in the layout under test; the versions applied."""
    from otel_pg_exporter.schema.migrations import migrate

    return migrate(dsn, schema=schema, table=table, partitioned=PARTITIONED)


def migrate_args() -> list[str]:
    """The extra ``otel-pg migrate`` arguments of the layout under test."""
    return ["--partitioned"] if PARTITIONED else []
