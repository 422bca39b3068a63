"""OpenTelemetry spans into a PostgreSQL table you can query with SQL."""

from otel_pg_exporter._configure import Handle, configure
from otel_pg_exporter.export.exporter import PostgresSpanExporter

__all__ = ["Handle", "PostgresSpanExporter", "configure"]
