"""An instrumented ASGI service: a job with nested spans (execution 404 fails in its store
step), a failing route, and a route that calls another service over HTTP with the trace
context propagated.

Zero code (the spans of installed auto-instrumentations included)::

    OTEL_TRACES_EXPORTER=postgres ENABLE_DB_TRACING=true OTEL_SERVICE_NAME=router \\
        opentelemetry-instrument uvicorn examples.asgi_app:app

One call: set ``EXAMPLE_CONFIGURE=1`` and the module calls ``otel_pg_exporter.configure()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.util.http import parse_excluded_urls
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import otel_pg_exporter

if os.environ.get("EXAMPLE_CONFIGURE") == "1":
    otel_pg_exporter.configure()

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s trace_id=%(trace_id)s span_id=%(span_id)s "
    "%(message)s",
)
log = logging.getLogger("examples.asgi_app")
tracer = trace.get_tracer("examples.asgi_app", "1.0")

JOB_STEPS = ("fetch", "transform", "store")


class ModelNotLoadedError(RuntimeError):
    """What the failing route raises, as an inference worker would."""


class StorageFullError(RuntimeError):
    """What a job's store step raises when its volume is full (execution 404 in the demo)."""


FAILING_EXECUTION = 404


def current_ids() -> dict[str, str]:
    context = trace.get_current_span().get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


async def run_job(request: Request) -> JSONResponse:
    """A job: one span per step under the job span, all carrying the execution id."""
    execution_id = int(request.path_params["execution_id"])
    with tracer.start_as_current_span("job.run", attributes={"execution.id": execution_id}):
        for step in JOB_STEPS:
            with tracer.start_as_current_span(
                f"job.{step}", attributes={"execution.id": execution_id, "job.step": step}
            ):
                await asyncio.sleep(0.002)
                if step == "store" and execution_id == FAILING_EXECUTION:
                    raise StorageFullError(f"no space left on /data for execution {execution_id}")
                log.info("execution %s: step %s done", execution_id, step)
        return JSONResponse({"execution_id": execution_id, **current_ids()})


async def fail(request: Request) -> JSONResponse:
    """Always fails: the server span ends with status error and an exception event."""
    with tracer.start_as_current_span("model.predict"):
        raise ModelNotLoadedError("inference model is not loaded")


async def chain(request: Request) -> JSONResponse:
    """Runs a job on the downstream service, continuing this trace there."""
    execution_id = int(request.path_params["execution_id"])
    downstream = os.environ.get("DOWNSTREAM_URL", "")
    if not downstream:
        return JSONResponse({"error": "DOWNSTREAM_URL is not set"}, status_code=500)
    with tracer.start_as_current_span(
        "downstream.run_job",
        kind=trace.SpanKind.CLIENT,
        attributes={"execution.id": execution_id, "peer.service": "downstream"},
    ):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(f"{downstream}/jobs/{execution_id}", headers=headers)
        return JSONResponse({"downstream": response.json(), **current_ids()})


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    """The 500 response; the server span gets the exception event and message too.

    Starlette answers before re-raising, and the ASGI middleware ends the server span with
    the response, so the exception must be recorded here, while the span is still open.
    """
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    return JSONResponse({"error": type(exc).__name__, **current_ids()}, status_code=500)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Server span names like ``GET /jobs/7`` instead of a bare method."""
    return f"{scope.get('method', 'HTTP')} {scope.get('path', '')}", {}


starlette_app = Starlette(
    routes=[
        Route("/jobs/{execution_id:int}", run_job),
        Route("/fail", fail),
        Route("/chain/{execution_id:int}", chain),
        Route("/health", health),
    ],
    exception_handlers={Exception: on_error},
)
# A parsed list: older opentelemetry-instrumentation-asgi releases (0.48b0) take no string.
app = OpenTelemetryMiddleware(
    starlette_app, default_span_details=span_details, excluded_urls=parse_excluded_urls("health")
)
