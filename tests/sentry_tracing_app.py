"""An ASGI app that also runs Sentry's own tracing, for the Sentry bridge tests.

Chosen by ``SENTRY_TRACING_MODE`` (the tests' own variable):

- ``before``: ``sentry_sdk.init(traces_sample_rate=1.0)`` by the app, then ``configure()``;
- ``after``: ``configure()``, then the app's ``sentry_sdk.init(traces_sample_rate=1.0)``;
- ``configure``: ``configure(sentry_dsn=...)`` alone;
- ``instrument``: run under ``opentelemetry-instrument`` with ``SENTRY_DSN``; nothing here;
- ``instrument-init``: under ``opentelemetry-instrument``, plus the app's own
  ``sentry_sdk.init(traces_sample_rate=1.0)``.

``SENTRY_TRACING_LAYOUT=inside`` adds OpenTelemetry's ASGI middleware inside Starlette (as
FastAPI apps do, so Sentry's Starlette integration wraps it); ``outside`` wraps the app.
The app's own ``before_send`` tags every event ``app_hook=yes``.
"""

from __future__ import annotations

import os
from typing import Any

import sentry_sdk
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import otel_pg_exporter

MODE = os.environ["SENTRY_TRACING_MODE"]
LAYOUT = os.environ.get("SENTRY_TRACING_LAYOUT", "outside")
tracer = trace.get_tracer("tests.sentry_tracing_app")


def tag_event(event: Any, hint: dict[str, Any]) -> Any:
    event.setdefault("tags", {})["app_hook"] = "yes"
    return event


def init_sentry_with_its_own_tracing() -> None:
    sentry_sdk.init(dsn=os.environ["APP_SENTRY_DSN"], traces_sample_rate=1.0, before_send=tag_event)


if MODE == "before":
    init_sentry_with_its_own_tracing()
    otel_pg_exporter.configure()
elif MODE == "after":
    otel_pg_exporter.configure()
    init_sentry_with_its_own_tracing()
elif MODE == "configure":
    otel_pg_exporter.configure(
        sentry_dsn=os.environ["APP_SENTRY_DSN"], sentry_before_send=tag_event
    )
elif MODE == "instrument-init":
    init_sentry_with_its_own_tracing()


class CheckoutError(RuntimeError):
    """What the failing routes raise."""


async def fail(request: Request) -> JSONResponse:
    with tracer.start_as_current_span("checkout.charge"):
        raise CheckoutError("card declined")


async def manual(request: Request) -> JSONResponse:
    """A Sentry transaction started by hand inside an OpenTelemetry span."""
    with (
        tracer.start_as_current_span("report.build"),
        sentry_sdk.start_transaction(name="manual-report", op="task"),
    ):
        try:
            raise CheckoutError("report failed")
        except CheckoutError as exc:
            sentry_sdk.capture_exception(exc)
    return JSONResponse({"ok": False})


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    """The 500 response, as most apps answer; the server span records the exception."""
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    return JSONResponse({"error": type(exc).__name__}, status_code=500)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"{scope.get('method', 'HTTP')} {scope.get('path', '')}", {}


routes = [Route("/fail", fail), Route("/manual", manual), Route("/health", health)]
app: Any
if LAYOUT == "inside":
    app = Starlette(
        routes=routes,
        exception_handlers={Exception: on_error},
        middleware=[
            Middleware(
                OpenTelemetryMiddleware,
                default_span_details=span_details,
                excluded_urls="health",
            )
        ],
    )
else:
    app = OpenTelemetryMiddleware(
        Starlette(routes=routes, exception_handlers={Exception: on_error}),
        default_span_details=span_details,
        excluded_urls="health",
    )
