"""The only global state: ``configure()`` and the ``Handle`` it returns."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter.export.exporter import PostgresSpanExporter
from otel_pg_exporter.export.processor import DEFAULT_MAX_QUEUE_SIZE, CountingBatchSpanProcessor
from otel_pg_exporter.integrations import logcorrelation
from otel_pg_exporter.settings import (
    env_value,
    explicit_value,
    report_once,
    resolve_enabled,
    resolve_flag,
)

if TYPE_CHECKING:
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
        """Export every finished span now; True when all are stored in PostgreSQL."""
        if self._shutdown:
            return True
        if self.sentry is not None:
            self.sentry.force_flush(timeout)
        if self.processor is None:
            return True
        return bool(self.processor.force_flush(int(timeout * 1000)))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Flush, stop the export thread and close the pool; idempotent."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if self.processor is not None:
            if self._owns_provider and self.provider is not None:
                self.provider.shutdown()
            elif self._owns_processor:
                self.processor.shutdown()
        if self.sentry is not None:
            self.sentry.shutdown()
        if self._log_correlation:
            logcorrelation.uninstall()

    def stats(self) -> dict[str, Any]:
        """Counters of the exporter, plus whether tracing to the database is on."""
        counters: dict[str, Any] = {"enabled": self.enabled}
        if self.exporter is not None:
            counters.update(self.exporter.stats())
        return counters


def configure(
    *,
    enabled: bool | None = None,
    dsn: str | None = None,
    schema: str | None = None,
    table: str | None = None,
    timeout: float | None = None,
    pool_max: int | None = None,
    execution_id_attribute: str | None = None,
    max_value_chars: int | None = None,
    max_span_chars: int | None = None,
    spool_dir: str | None = None,
    spool_max_mb: int | None = None,
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
    global _handle  # noqa: PLW0603
    with _lock:
        if _handle is not None:
            if _handle.from_configure:
                logger.warning("configure() was already called; returning the first handle")
            return _handle
        environ = os.environ
        is_enabled = resolve_enabled(enabled, environ)
        correlate = resolve_flag(
            "log_correlation",
            log_correlation,
            ev.OTEL_EXPORTER_POSTGRES_LOG_CORRELATION,
            environ,
            True,
        )
        batch_options = _BatchOptions.resolve(
            environ,
            schedule_delay_millis=schedule_delay_millis,
            max_queue_size=max_queue_size,
            max_export_batch_size=max_export_batch_size,
        )
        if service_name is not None:
            explicit_value("service_name", service_name, _non_empty, str)
        if resource_attributes is not None and not (
            isinstance(resource_attributes, Mapping)
            and all(isinstance(key, str) and key for key in resource_attributes)
        ):
            raise ValueError("resource_attributes must be a mapping with non-empty str keys")
        if sampler is not None and not isinstance(sampler, Sampler):
            raise ValueError(f"sampler must be a Sampler, got {type(sampler).__name__}")
        # Validates every exporter option (ValueError naming it) before anything is set up.
        exporter = PostgresSpanExporter(
            dsn,
            enabled=is_enabled,
            table=table,
            schema=schema,
            timeout=timeout,
            pool_max=pool_max,
            execution_id_attribute=execution_id_attribute,
            max_value_chars=max_value_chars,
            max_span_chars=max_span_chars,
            spool_dir=spool_dir,
            spool_max_mb=spool_max_mb,
            scrub=scrub,
            scrub_patterns=scrub_patterns,
            scrub_allow=scrub_allow,
        )
        sentry_options = SentryOptions.resolve(
            environ,
            dsn=sentry_dsn,
            environment=sentry_environment,
            release=sentry_release,
            traces_sample_rate=sentry_traces_sample_rate,
            ignore_errors=sentry_ignore_errors,
            ignore_messages=sentry_ignore_messages,
            before_send=sentry_before_send,
        )
        sentry_options.check_explicit()
        handle = _pipeline(
            exporter,
            batch_options,
            log_correlation=correlate,
            service_name=service_name,
            resource_attributes=resource_attributes,
            sampler=sampler,
        )
        handle.sentry = sentry_options.attach(handle.provider, exporter.scrubber)
        _handle = handle
        return handle


def _pipeline(
    exporter: PostgresSpanExporter,
    batch_options: _BatchOptions,
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
        processor = batch_options.processor(exporter)
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
        processor = batch_options.processor(exporter)
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
        correlate = resolve_flag(
            "log_correlation",
            None,
            ev.OTEL_EXPORTER_POSTGRES_LOG_CORRELATION,
            os.environ,
            True,
        )
        handle = _adopt(provider, *existing, log_correlation=correlate)
        try:
            handle.sentry = SentryOptions.resolve(os.environ).attach(provider, existing[1].scrubber)
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


@dataclass(frozen=True)
class _BatchOptions:
    """BatchSpanProcessor options, resolved here so a bad OTEL_BSP_* value never raises."""

    schedule_delay_millis: int
    max_queue_size: int
    max_export_batch_size: int

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        *,
        schedule_delay_millis: int | None,
        max_queue_size: int | None,
        max_export_batch_size: int | None,
    ) -> _BatchOptions:
        def pick(name: str, value: int | None, variable: str, default: int) -> int:
            if value is not None:
                return explicit_value(name, value, _positive_int, int)
            return env_value(environ, (variable,), _positive_int, default)

        delay = pick("schedule_delay_millis", schedule_delay_millis, OTEL_BSP_SCHEDULE_DELAY, 5000)
        queue = pick(
            "max_queue_size", max_queue_size, OTEL_BSP_MAX_QUEUE_SIZE, DEFAULT_MAX_QUEUE_SIZE
        )
        batch = pick(
            "max_export_batch_size", max_export_batch_size, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512
        )
        if batch > queue:
            if max_export_batch_size is not None and max_queue_size is not None:
                raise ValueError("max_export_batch_size must not exceed max_queue_size")
            batch = queue  # one of them came from a default or the environment: fit it
        return cls(delay, queue, batch)

    def processor(self, exporter: PostgresSpanExporter) -> BatchSpanProcessor:
        return CountingBatchSpanProcessor(
            exporter,
            max_queue_size=self.max_queue_size,
            schedule_delay_millis=self.schedule_delay_millis,
            max_export_batch_size=self.max_export_batch_size,
        )


def _sample_rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a number from 0 to 1")
    return value


@dataclass(frozen=True)
class SentryOptions:
    """The Sentry bridge's settings, resolved once; ``attach`` imports sentry-sdk lazily."""

    dsn: str | None
    environment: str | None
    release: str | None
    traces_sample_rate: float | None
    ignore_errors: tuple[str | type[BaseException], ...]
    ignore_messages: tuple[str, ...]
    before_send: Callable[..., Any] | None
    explicit: bool

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        *,
        dsn: str | None = None,
        environment: str | None = None,
        release: str | None = None,
        traces_sample_rate: float | None = None,
        ignore_errors: Sequence[str | type[BaseException]] | None = None,
        ignore_messages: Sequence[str] | None = None,
        before_send: Callable[..., Any] | None = None,
    ) -> SentryOptions:
        for name, value in (
            ("sentry_dsn", dsn),
            ("sentry_environment", environment),
            ("sentry_release", release),
        ):
            if value is not None:
                explicit_value(name, value, _non_empty, str)
        if traces_sample_rate is not None:
            rate: float | None = explicit_value(
                "sentry_traces_sample_rate", traces_sample_rate, _sample_rate, float
            )
        else:
            rate = env_value(environ, (ev.SENTRY_TRACES_SAMPLE_RATE,), _sample_rate, None)
        if before_send is not None and not callable(before_send):
            raise ValueError("sentry_before_send must be callable")
        errors = _ignored_errors(ignore_errors, environ)
        messages = _ignored_messages(ignore_messages, environ)
        return cls(
            dsn=dsn or environ.get(ev.SENTRY_DSN, "").strip() or None,
            environment=environment or environ.get(ev.SENTRY_ENVIRONMENT, "").strip() or None,
            release=release or environ.get(ev.SENTRY_RELEASE, "").strip() or None,
            traces_sample_rate=rate,
            ignore_errors=errors,
            ignore_messages=messages,
            before_send=before_send,
            explicit=dsn is not None,
        )

    def check_explicit(self) -> None:
        """Raise now, before anything is set up, for an unusable explicit ``sentry_dsn``."""
        if not self.explicit or not self.dsn:
            return
        from otel_pg_exporter.integrations import sentry  # ImportError with the pip install line

        problem = sentry.check_dsn(self.dsn)
        if problem is not None:
            raise ValueError(f"sentry_dsn: {problem}")

    def attach(self, provider: TracerProvider | None, scrubber: Any) -> SentryBridge | None:
        """Start the bridge when a DSN is set or sentry-sdk already runs; else None.

        A bad SENTRY_DSN (or a missing extra) is reported and leaves tracing running."""
        already_running = "sentry_sdk" in sys.modules and _sentry_client_active()
        if not self.dsn and not already_running:
            return None
        try:
            from otel_pg_exporter.integrations import sentry
        except ImportError as exc:
            if self.explicit:
                raise
            logger.warning("SENTRY_DSN is set but the Sentry bridge is off: %s", exc)
            return None
        if self.dsn and not already_running:
            problem = sentry.check_dsn(self.dsn)
            if problem is not None:
                report_once(ev.SENTRY_DSN, self.dsn, f"{problem}; the Sentry bridge is off")
                return None
        return sentry.attach(
            provider,
            dsn=self.dsn,
            environment=self.environment,
            release=self.release,
            traces_sample_rate=self.traces_sample_rate,
            ignore_errors=self.ignore_errors,
            ignore_messages=self.ignore_messages,
            before_send=self.before_send,
            scrubber=scrubber,
        )


def _ignored_errors(
    value: Sequence[str | type[BaseException]] | None, environ: Mapping[str, str]
) -> tuple[str | type[BaseException], ...]:
    if value is None:
        return tuple(
            name.strip()
            for name in environ.get(ev.SENTRY_IGNORE_ERRORS, "").split(",")
            if name.strip()
        )
    if isinstance(value, str) or not all(
        isinstance(item, str) or (isinstance(item, type) and issubclass(item, BaseException))
        for item in value
    ):
        raise ValueError("sentry_ignore_errors must be a sequence of names or exception types")
    return tuple(value)


def _ignored_messages(value: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    if value is None:
        messages: tuple[str, ...] = ()
        for text in environ.get(ev.SENTRY_IGNORE_MESSAGES, "").split(";;"):
            if text and _compiles(text):
                messages += (text,)
            elif text:
                report_once(ev.SENTRY_IGNORE_MESSAGES, text, "not a regular expression")
        return messages
    if isinstance(value, str) or not all(
        isinstance(item, str) and _compiles(item) for item in value
    ):
        raise ValueError("sentry_ignore_messages must be a sequence of regular expressions")
    return tuple(value)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _sentry_client_active() -> bool:
    import sentry_sdk

    return bool(sentry_sdk.get_client().is_active())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def reset_for_tests() -> None:
    """Shut down and forget the global handle (test fixture helper)."""
    global _handle  # noqa: PLW0603
    with _lock:
        if _handle is not None:
            _handle.shutdown(timeout=5.0)
        _handle = None
        logcorrelation.uninstall()
