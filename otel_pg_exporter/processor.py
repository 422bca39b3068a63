"""Kept so that ``from otel_pg_exporter.processor import CountingBatchSpanProcessor`` goes on
working; the processor lives in ``otel_pg_exporter.export.processor``, and the package root
exports it too."""

from otel_pg_exporter.export.processor import CountingBatchSpanProcessor

__all__ = ["CountingBatchSpanProcessor"]
