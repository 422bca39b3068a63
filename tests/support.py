"""Plain helpers shared by the tests that run scripts, servers and queries."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg.rows import dict_row

_TRACING_PREFIXES = (
    "OTEL_",
    "ENABLE_DB_TRACING",
    "DATABASE_URL",
    "SENTRY_",
    "EXAMPLE_",
    "DOWNSTREAM_",
)


_KEPT = ("OTEL_EXPORTER_POSTGRES_SPOOL_DIR",)  # the test's own spool folder, not ~/.cache


def clean_environ(**overrides: str) -> dict[str, str]:
    """The test process's environment without any tracing settings, plus ``overrides``."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(_TRACING_PREFIXES) or k in _KEPT
    }
    environ.update(overrides)
    return environ


def query(dsn: str, statement: str) -> list[dict[str, Any]]:
    """Rows of ``statement`` as dicts."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(statement).fetchall()
