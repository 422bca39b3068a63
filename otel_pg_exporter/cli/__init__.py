"""``otel-pg``: thin commands over ``schema/`` (and, later, ``query/``)."""

from otel_pg_exporter.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
