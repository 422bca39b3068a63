"""Plain helpers shared by the tests that run scripts, servers and queries."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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


def wait_until(
    predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05, message: str = ""
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it is true; if it is still false
    after ``timeout`` seconds, raise AssertionError naming ``message`` and the timeout.

    The predicate is checked once more at the deadline, so a slow check never fails early.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            waited_for = message or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {waited_for}")
        time.sleep(min(interval, remaining))
