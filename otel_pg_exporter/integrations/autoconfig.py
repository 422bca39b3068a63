"""Hooks for ``opentelemetry-instrument``: no code change in the application.

``opentelemetry-instrument`` sets up no SDK unless a configurator entry point does it:
``PostgresConfigurator`` is that configurator (the SDK's own behaviour: every
``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER`` ... honoured), plus what ``configure()``
adds on top. ``post_instrument`` does the same when another configurator (for example
``opentelemetry-distro``'s) ran instead.
"""

from __future__ import annotations

import inspect
from typing import Any

from opentelemetry.sdk._configuration import _initialize_components, _OTelSDKConfigurator

from otel_pg_exporter._configure import adopt_instrument_pipeline
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor


class PostgresConfigurator(_OTelSDKConfigurator):
    """The SDK's configurator, then log correlation for the PostgreSQL pipeline."""

    def _configure(self, **kwargs: Any) -> None:
        # The SDK builds one processor per exporter from this class: ours counts queue drops.
        if "export_span_processor" in inspect.signature(_initialize_components).parameters:
            kwargs.setdefault("export_span_processor", CountingBatchSpanProcessor)
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]  # the SDK's is untyped
        adopt_instrument_pipeline()


def post_instrument() -> None:
    """``opentelemetry_post_instrument`` hook: adopt the pipeline whoever configured it."""
    adopt_instrument_pipeline()
