"""PostgresSpanExporter: mapping plus writer behind the SpanExporter interface; never raises."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.config import ExporterSettings, resolve_enabled, resolve_scrubber
from otel_pg_exporter.mapping import SpanMapper
from otel_pg_exporter.rows import Row
from otel_pg_exporter.writer import SpanWriter, WriteError, describe

logger = logging.getLogger("otel_pg_exporter")

WARNING_INTERVAL_S = 60.0

_ADVICE = {
    "DatabaseUnavailable": "check that the database is up and the DSN, user and password "
    "are right (OTEL_EXPORTER_POSTGRES_DSN or DATABASE_URL)",
    "WriteTimeout": "the database is slow or the table is locked; "
    "OTEL_EXPORTER_POSTGRES_TIMEOUT sets the seconds one export may take",
    "SchemaProblem": "run `otel-pg migrate` against this database, "
    "or check OTEL_EXPORTER_POSTGRES_SCHEMA / _TABLE and the user's privileges",
    "ConfigurationProblem": "fix OTEL_EXPORTER_POSTGRES_DSN (or DATABASE_URL)",
    "RowRejected": "the rest of the batch was stored; please report the cause",
}


_said_off = threading.Event()


def _say_tracing_is_off() -> None:
    if not _said_off.is_set():
        _said_off.set()
        logger.info(
            "ENABLE_DB_TRACING is off: spans are not written to PostgreSQL. "
            "Set ENABLE_DB_TRACING=true (or pass enabled=True) to turn it on."
        )


class _RateLimitedWarnings:
    """One warning per cause per interval; the count of suppressed repeats goes with it."""

    def __init__(self, interval_s: float = WARNING_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(kind, (-self._interval_s, 0))
            if now - last < self._interval_s:
                self._last[kind] = (last, suppressed + 1)
                return
            self._last[kind] = (now, 0)
        if suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, suppressed)
        logger.warning(message, *args)


@dataclass
class ExporterStats:
    """Counters since the exporter was created."""

    spans_exported: int = 0
    spans_duplicate: int = 0
    spans_rejected: int = 0
    spans_failed: int = 0
    export_calls: int = 0
    export_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PostgresSpanExporter(SpanExporter):
    """Writes finished spans to a PostgreSQL table, one COPY per batch.

    Nothing connects to the database unless ``enabled=True`` or ``ENABLE_DB_TRACING`` is
    true; while off, spans are accepted and dropped. Every other argument falls back to its
    environment variable (see ``environment_variables``), then to its default. Construction
    never touches the network and never raises on a bad environment value; ``export`` never
    raises and returns FAILURE when the batch could not be stored.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        enabled: bool | None = None,
        table: str | None = None,
        schema: str | None = None,
        timeout: float | None = None,
        pool_max: int | None = None,
        execution_id_attribute: str | None = None,
        max_value_chars: int | None = None,
        max_span_chars: int | None = None,
        scrub: bool | None = None,
        scrub_patterns: Sequence[str] | None = None,
        scrub_allow: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.enabled = resolve_enabled(enabled, env)
        self.settings = ExporterSettings.resolve(
            env,
            dsn=dsn,
            schema=schema,
            table=table,
            timeout=timeout,
            pool_max=pool_max,
            execution_id_attribute=execution_id_attribute,
            max_value_chars=max_value_chars,
            max_span_chars=max_span_chars,
        )
        self.scrubber = resolve_scrubber(scrub, scrub_patterns, scrub_allow, env)
        self._mapper = SpanMapper(
            scrubber=self.scrubber,
            execution_id_attribute=self.settings.execution_id_attribute,
            max_value_chars=self.settings.max_value_chars,
            max_span_chars=self.settings.max_span_chars,
        )
        self._writer = SpanWriter(
            dsn=self.settings.dsn,
            table=self.settings.table,
            schema=self.settings.schema,
            pool_max=self.settings.pool_max,
            timeout_s=self.settings.timeout_s,
        )
        self._warnings = _RateLimitedWarnings()
        self._stats = ExporterStats()
        self._stats_lock = threading.Lock()
        self._shutdown = False
        if not self.enabled:
            _say_tracing_is_off()

    def __repr__(self) -> str:
        return f"PostgresSpanExporter({self.settings!r})"

    def stats(self) -> dict[str, int]:
        """A snapshot of the exporter's counters."""
        with self._stats_lock:
            return self._stats.as_dict()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Store ``spans``; SUCCESS when every span is in the table (or was already)."""
        if self._shutdown:
            return SpanExportResult.FAILURE
        if not spans or not self.enabled:
            return SpanExportResult.SUCCESS
        deadline = time.monotonic() + self.settings.timeout_s
        with untraced():
            try:
                return self._export(spans, deadline)
            except Exception as exc:  # export() must never raise into the SDK
                self._warnings.warn(
                    "unexpected", "Dropped %d spans: unexpected %s", len(spans), describe(exc)
                )
                self._count(failed=len(spans), failure=True)
                return SpanExportResult.FAILURE

    def _export(self, spans: Sequence[ReadableSpan], deadline: float) -> SpanExportResult:
        rows = self._map(spans)
        try:
            outcome = self._writer.write(rows, deadline)
        except WriteError as exc:
            kind = type(exc).__name__
            self._warnings.warn(
                kind,
                "Could not store %d spans in PostgreSQL: %s; %s",
                len(spans),
                exc.cause,
                _ADVICE.get(kind, "see the cause above"),
            )
            self._count(failed=len(spans), failure=True)
            return SpanExportResult.FAILURE
        rejected = len(outcome.rejected) + len(spans) - len(rows)
        with self._stats_lock:
            self._stats.export_calls += 1
            self._stats.spans_exported += outcome.inserted
            self._stats.spans_duplicate += outcome.duplicates
            self._stats.spans_rejected += rejected
            if rejected:
                self._stats.export_failures += 1
        if outcome.rejected:
            self._warnings.warn(
                "RowRejected",
                "PostgreSQL refused %d of %d spans (first: %s); %s",
                len(outcome.rejected),
                len(spans),
                outcome.rejected[0][1],
                _ADVICE["RowRejected"],
            )
        return SpanExportResult.FAILURE if rejected else SpanExportResult.SUCCESS

    def _map(self, spans: Sequence[ReadableSpan]) -> list[Row]:
        to_row = self._mapper.to_row
        try:
            return [to_row(span) for span in spans]
        except Exception:  # noqa: S110 - one odd span must not cost its batch: redo one by one
            pass
        rows: list[Row] = []
        for span in spans:
            try:
                rows.append(to_row(span))
            except Exception as exc:
                self._warnings.warn("unmappable", "Skipped a span: %s", describe(exc))
        return rows

    def _count(self, *, failed: int, failure: bool) -> None:
        with self._stats_lock:
            self._stats.export_calls += 1
            self._stats.spans_failed += failed
            if failure:
                self._stats.export_failures += 1

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered between calls: every export() has finished when it returns."""
        return not self._shutdown

    def shutdown(self) -> None:
        """Close the connection pool; idempotent. Later exports return FAILURE."""
        if self._shutdown:
            return
        self._shutdown = True
        self._writer.close()
