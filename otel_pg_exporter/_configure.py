"""The only global state: ``configure()`` and the ``Handle`` it returns."""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler

from otel_pg_exporter import settings
from otel_pg_exporter.export.exporter import PostgresSpanExporter
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor
from otel_pg_exporter.integrations import logcorrelation
from otel_pg_exporter.settings import BatchSettings, SentrySettings, report_once

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from otel_pg_exporter.integrations.sentry import SentryBridge

logger = logging.getLogger("otel_pg_exporter")

_lock = threading.RLock()
_handle: Handle | None = None


class Handle:
    """What ``configure()`` set up: flush it, shut it down, read its counters."""

    def __init__(
        self,
        *,
        enabled: bool,
        exporter: PostgresSpanExporter | None = None,
        processor: SpanProcessor | None = None,
        provider: TracerProvider | None = None,
        owns_provider: bool = False,
        owns_processor: bool = False,
        log_correlation: bool = False,
    ) -> None:
        self.enabled = enabled
        self.exporter = exporter
        self.processor = processor
        self.provider = provider
        self._owns_provider = owns_provider
        self._owns_processor = owns_processor
        self._log_correlation = log_correlation
        self._shutdown = False
        self._lock = threading.Lock()
        # False when adopted from opentelemetry-instrument: a first configure() call then
        # returns this handle without a warning.
        self.from_configure = True
        self.sentry: SentryBridge | None = None

    def __repr__(self) -> str:
        return f"Handle(enabled={self.enabled}, exporter={self.exporter!r})"

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Export every finished span now; True when all are stored in PostgreSQL.

        ``timeout`` (seconds) is one deadline for everything: the Sentry bridge, the span
        processor and the exporter share it, none spends it again. False after shutdown."""
        deadline = time.monotonic() + timeout
        if self._shutdown:
            return False
        if self.sentry is not None:
            self.sentry.force_flush(_left(deadline))
        if self.processor is None:
            return True
        return bool(self.processor.force_flush(int(_left(deadline) * 1000)))

    def flush_or_spool(self, timeout: float) -> bool:
        """Flush within ``timeout`` seconds, then spool at once whatever is not stored yet (or
        count it dropped when the spool is off): nothing is left only in memory. True when
        every span was stored in time. The return comes within ``timeout`` plus the time
        to append the rest to the spool file (milliseconds)."""
        deadline = time.monotonic() + timeout
        if self._shutdown:
            return False
        exporter = self.exporter
        if exporter is None:
            return self.force_flush(timeout)
        with exporter.export_by(deadline):
            stored = self.force_flush(_left(deadline))
        if not stored:
            exporter.spool_in_hand()
        return stored

    def shutdown(self, timeout: float = 30.0) -> None:
        """Flush, stop the export thread and close the pool within ``timeout`` seconds in
        all (what is not stored by then is spooled); idempotent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if self.sentry is not None:
            self.sentry.shutdown(_left(deadline))
        if self.processor is not None and (self._owns_provider or self._owns_processor):
            # Ours first, with the deadline; the provider's own shutdown then finds it done.
            _shutdown_processor(self.processor, _left(deadline))
            if self._owns_provider and self.provider is not None:
                self.provider.shutdown()
        if self._log_correlation:
            logcorrelation.uninstall()

    def stats(self) -> dict[str, Any]:
        """Counters of the exporter, plus whether tracing to the database is on."""
        counters: dict[str, Any] = {"enabled": self.enabled}
        if self.exporter is not None:
            counters.update(self.exporter.stats())
            counters["fast_path"] = self.exporter.fast_path_status
        return counters


def configure(
    *,
    enabled: bool | None = None,
    dsn: str | None = None,
    schema: str | None = None,
    table: str | None = None,
    timeout: float | None = None,
    pool_max: int | None = None,
    pool: ConnectionPool[Any] | None = None,
    pool_wait: int | None = None,
    execution_id_attribute: str | None = None,
    max_value_chars: int | None = None,
    max_span_chars: int | None = None,
    spool_dir: str | None = None,
    spool_max_mb: int | None = None,
    retention_days: int | None = None,
    fast_path: bool | None = None,
    service_name: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    sampler: Sampler | None = None,
    schedule_delay_millis: int | None = None,
    max_queue_size: int | None = None,
    max_export_batch_size: int | None = None,
    log_correlation: bool | None = None,
    scrub: bool | None = None,
    scrub_patterns: Sequence[str] | None = None,
    scrub_allow: Sequence[str] | None = None,
    sentry_dsn: str | None = None,
    sentry_environment: str | None = None,
    sentry_release: str | None = None,
    sentry_traces_sample_rate: float | None = None,
    sentry_ignore_errors: Sequence[str | type[BaseException]] | None = None,
    sentry_ignore_messages: Sequence[str] | None = None,
    sentry_before_send: Callable[..., Any] | None = None,
) -> Handle:
    """Send every span of this process to PostgreSQL; returns the (single) ``Handle``.

    Each option falls back to its environment variable, then to its default. Nothing touches
    the database unless ``enabled=True`` or ``ENABLE_DB_TRACING`` is true. An SDK
    ``TracerProvider`` already installed is joined, never replaced; a second call warns and
    returns the first handle. With ``sentry_dsn`` (or ``SENTRY_DSN``) set, or sentry-sdk
    already initialised, Sentry error events carry the ids of the span they happened in.
    """
    options = dict(locals())  # every keyword argument, None when not given
    global _handle  # noqa: PLW0603
    with _lock:
        if _handle is not None:
            if _handle.from_configure:
                logger.warning("configure() was already called; returning the first handle")
            return _handle
        environ = os.environ
        # Each option once through settings.py's chain: a bad explicit one raises
        # ValueError naming it, before anything is set up.
        is_enabled: bool = settings.resolve("enabled", enabled, environ)
        correlate: bool = settings.resolve("log_correlation", log_correlation, environ)
        batch = BatchSettings.resolve(environ, **_subset(options, BatchSettings))
        for name in ("service_name", "resource_attributes", "sampler"):
            settings.resolve(name, options[name], environ)
        exporter = PostgresSpanExporter(**_subset(options, PostgresSpanExporter))
        sentry = SentrySettings.resolve(environ, **_subset(options, SentrySettings, "sentry_"))
        if sentry_dsn is not None:
            _check_sentry_dsn(sentry_dsn)
        handle = _pipeline(
            exporter,
            batch,
            log_correlation=correlate,
            service_name=service_name,
            resource_attributes=resource_attributes,
            sampler=sampler,
        )
        handle.sentry = _attach_sentry(
            sentry, handle.provider, exporter.scrubber, explicit=sentry_dsn is not None
        )
        _handle = handle
        return handle


def current_handle() -> Handle | None:
    """The handle ``configure()`` (or ``opentelemetry-instrument``) set up, if any."""
    return _handle


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _shutdown_processor(processor: SpanProcessor, timeout_s: float) -> None:
    if isinstance(processor, CountingBatchSpanProcessor):
        processor.shutdown(timeout_millis=int(timeout_s * 1000))
    else:
        processor.shutdown()


def _subset(options: Mapping[str, Any], target: Any, prefix: str = "") -> dict[str, Any]:
    """The options that ``target`` (a settings dataclass whose fields are the settings
    ``prefix + field``, or a class's ``__init__``) takes, by their ``configure()`` names."""
    if dataclasses.is_dataclass(target):
        names = [prefix + field.name for field in dataclasses.fields(target)]
    else:
        names = list(inspect.signature(target).parameters)
    return {name: options[name] for name in names if name in options}


def _pipeline(
    exporter: PostgresSpanExporter,
    batch_options: BatchSettings,
    *,
    log_correlation: bool,
    service_name: str | None,
    resource_attributes: Mapping[str, Any] | None,
    sampler: Sampler | None,
) -> Handle:
    """Join or install the tracer provider with a PostgreSQL processor; the handle for it."""
    correlate = log_correlation
    if not exporter.enabled:
        # Log correlation touches no database and keeps %(trace_id)s format strings
        # valid, so it stays on with the switch off.
        handle = Handle(enabled=False, log_correlation=correlate)
        if correlate:
            logcorrelation.install()
        return handle

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        existing = find_postgres_processor(current)
        if existing is not None:  # e.g. set up by opentelemetry-instrument
            exporter.shutdown()
            return _adopt(current, *existing, log_correlation=correlate)
        processor = _batch_processor(exporter, batch_options)
        current.add_span_processor(processor)
        handle = Handle(
            enabled=True,
            exporter=exporter,
            processor=processor,
            provider=current,
            owns_processor=True,
            log_correlation=correlate,
        )
    else:
        attributes = dict(resource_attributes or {})
        if service_name is not None:
            attributes[SERVICE_NAME] = service_name
        provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
        processor = _batch_processor(exporter, batch_options)
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            logger.warning(
                "A tracer provider that is not the OpenTelemetry SDK's is installed; "
                "spans of the global tracer will not reach PostgreSQL. Use "
                "handle.provider.get_tracer(...) or install the SDK's TracerProvider."
            )
        handle = Handle(
            enabled=True,
            exporter=exporter,
            processor=processor,
            provider=provider,
            owns_provider=True,
            log_correlation=correlate,
        )
    _activate(handle)
    return handle


def adopt_instrument_pipeline() -> Handle | None:
    """Under ``opentelemetry-instrument``: take over the SDK pipeline holding our exporter.

    Adds log correlation (and the Sentry bridge) exactly as ``configure()`` would; a later
    ``configure()`` call returns this handle instead of exporting twice.
    """
    global _handle  # noqa: PLW0603
    with _lock:
        if _handle is not None:
            return _handle
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            return None
        existing = find_postgres_processor(provider)
        if existing is None:
            return None
        correlate: bool = settings.resolve("log_correlation", None)
        handle = _adopt(provider, *existing, log_correlation=correlate)
        try:
            handle.sentry = _attach_sentry(
                SentrySettings.resolve(os.environ), provider, existing[1].scrubber, explicit=False
            )
        except Exception as exc:  # under opentelemetry-instrument, never stop the app
            logger.warning("The Sentry bridge is off: %s", exc)
        _handle = handle
        return handle


def _adopt(
    provider: TracerProvider,
    processor: SpanProcessor,
    exporter: PostgresSpanExporter,
    *,
    log_correlation: bool,
) -> Handle:
    handle = Handle(
        enabled=exporter.enabled,
        exporter=exporter,
        processor=processor,
        provider=provider,
        log_correlation=log_correlation,
    )
    handle.from_configure = False
    _activate(handle)
    return handle


def _activate(handle: Handle) -> None:
    if handle._log_correlation:
        logcorrelation.install()
    atexit.register(handle.shutdown)
    _flush_forked_children_at_exit(handle)


def find_postgres_processor(
    provider: TracerProvider,
) -> tuple[SpanProcessor, PostgresSpanExporter] | None:
    """The span processor of ``provider`` that feeds a PostgresSpanExporter, if any."""
    multi = getattr(provider, "_active_span_processor", None)
    for processor in getattr(multi, "_span_processors", ()):
        exporter = getattr(processor, "span_exporter", None)
        if isinstance(exporter, PostgresSpanExporter):
            return processor, exporter
    return None


def _flush_forked_children_at_exit(handle: Handle) -> None:
    # multiprocessing children end with os._exit, which skips atexit, and they clear the
    # finalizers inherited from the parent: register the flush from multiprocessing's own
    # after-fork hook, so it runs at the child's exit.
    from multiprocessing import util

    util.register_after_fork(handle, _flush_at_child_exit)


def _flush_at_child_exit(handle: Handle) -> None:
    from multiprocessing import util

    util.Finalize(handle, handle.force_flush, exitpriority=0)


def _batch_processor(exporter: PostgresSpanExporter, batch: BatchSettings) -> BatchSpanProcessor:
    return CountingBatchSpanProcessor(
        exporter,
        max_queue_size=batch.max_queue_size,
        schedule_delay_millis=batch.schedule_delay_millis,
        max_export_batch_size=batch.max_export_batch_size,
    )


def _check_sentry_dsn(dsn: str) -> None:
    """Raise now, before anything is set up, for an unusable explicit ``sentry_dsn``."""
    from otel_pg_exporter.integrations import sentry  # ImportError with the pip install line

    problem = sentry.check_dsn(dsn)
    if problem is not None:
        raise ValueError(f"sentry_dsn: {problem}")


def _attach_sentry(
    options: SentrySettings, provider: TracerProvider | None, scrubber: Any, *, explicit: bool
) -> SentryBridge | None:
    """Start the bridge when a DSN is set or sentry-sdk already runs, or wait for the
    application's own ``sentry_sdk.init`` when sentry-sdk is installed; else None.

    A bad SENTRY_DSN (or a missing extra) is reported and leaves tracing running."""
    already_running = "sentry_sdk" in sys.modules and _sentry_client_active()
    if not options.dsn and not already_running and importlib.util.find_spec("sentry_sdk") is None:
        return None
    try:
        from otel_pg_exporter.integrations import sentry
    except ImportError as exc:
        if explicit:
            raise
        if options.dsn or already_running:
            logger.warning("SENTRY_DSN is set but the Sentry bridge is off: %s", exc)
        return None
    if options.dsn and not already_running:
        problem = sentry.check_dsn(options.dsn)
        if problem is not None:
            report_once("SENTRY_DSN", options.dsn, f"{problem}; the Sentry bridge is off")
            return None
    return sentry.attach(
        provider,
        dsn=options.dsn,
        environment=options.environment,
        release=options.release,
        traces_sample_rate=options.traces_sample_rate,
        ignore_errors=options.ignore_errors,
        ignore_messages=options.ignore_messages,
        before_send=options.before_send,
        scrubber=scrubber,
    )


def _sentry_client_active() -> bool:
    import sentry_sdk

    return bool(sentry_sdk.get_client().is_active())


def reset_for_tests() -> None:
    """Shut down and forget the global handle (test fixture helper)."""
    global _handle  # noqa: PLW0603
    with _lock:
        if _handle is not None:
            _handle.shutdown(timeout=5.0)
        _handle = None
        logcorrelation.uninstall()
