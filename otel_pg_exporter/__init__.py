"""OpenTelemetry spans into a PostgreSQL table you can query with SQL."""

from otel_pg_exporter.exporter import PostgresSpanExporter

__all__ = ["PostgresSpanExporter"]
