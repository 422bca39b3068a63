"""The example ASGI app traced by the bare SDK, for part 4's reference mode: a TracerProvider
with a BatchSpanProcessor and an exporter that drops every batch, and the same log
correlation ``configure()`` installs. Tracing on minus otel_pg_exporter, in other words.

    uvicorn benchmarks.bench_sdk_app:app
"""

from __future__ import annotations

import importlib
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from benchmarks.bench_hotpath import DropExporter
from otel_pg_exporter.integrations import logcorrelation

provider = TracerProvider(resource=Resource.create({}))
provider.add_span_processor(BatchSpanProcessor(DropExporter()))
trace.set_tracer_provider(provider)
logcorrelation.install()

# Imported only now (the tracer provider must be set first), and by name: mypy checks
# examples/ as top-level modules, so a static import would name the file twice.
app: Any = importlib.import_module("examples.asgi_app").app

__all__ = ["app"]
