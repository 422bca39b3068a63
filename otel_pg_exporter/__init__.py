"""OpenTelemetry spans into a PostgreSQL table you can query with SQL.

The package, by where a span is on its way (see the README's module map):
``export/`` (span -> row -> PostgreSQL, and the failure path), ``schema/`` (the table's shape
and migrations), ``integrations/`` (Sentry, log correlation, propagator,
opentelemetry-instrument hooks), ``cli/`` (``otel-pg``); ``settings`` declares every option
and ``errors`` every error. Only the names below are imported here.
"""

from otel_pg_exporter._configure import Handle, configure
from otel_pg_exporter._flush_after import flush_after
from otel_pg_exporter.errors import (
    MigrationError,
    OtelPgError,
    SettingsError,
    SpoolError,
    WriteError,
)
from otel_pg_exporter.export.exporter import PostgresSpanExporter
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor

__all__ = [
    "CountingBatchSpanProcessor",
    "Handle",
    "MigrationError",
    "OtelPgError",
    "PostgresSpanExporter",
    "SettingsError",
    "SpoolError",
    "WriteError",
    "configure",
    "flush_after",
]
