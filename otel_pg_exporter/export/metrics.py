"""The exporter's own counters: kept in-process for ``stats()`` and reported through the
OpenTelemetry metrics API (meter ``otel_pg_exporter``), which costs nothing until the
application installs a MeterProvider."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

METER_NAME = "otel_pg_exporter"


class ExporterMetrics:
    """Counters updated once per export call or spool record, never per span."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        # Per-span drop counts bumped on application threads: [reason, counter, reads, seen].
        self._drop_sources: list[list[Any]] = []
        meter = metrics.get_meter(METER_NAME)
        self._exported = meter.create_counter(
            "otel_pg_exporter.spans.exported", unit="{span}", description="Spans stored"
        )
        self._spooled = meter.create_counter(
            "otel_pg_exporter.spans.spooled",
            unit="{span}",
            description="Spans written to the disk spool while the database was unavailable",
        )
        self._replayed = meter.create_counter(
            "otel_pg_exporter.spans.replayed",
            unit="{span}",
            description="Spooled spans stored once the database was back",
        )
        self._dropped = meter.create_counter(
            "otel_pg_exporter.spans.dropped",
            unit="{span}",
            description="Spans lost, by reason (queue_full, spool_full, rejected, no_spool)",
        )
        self._failures = meter.create_counter(
            "otel_pg_exporter.export.failures",
            unit="{export}",
            description="Export attempts that failed, by cause",
        )
        self._latency = meter.create_histogram(
            "otel_pg_exporter.export.duration", unit="s", description="Time of one export call"
        )
        self._connection_wait = meter.create_histogram(
            "otel_pg_exporter.connection.wait",
            unit="s",
            description="Time spent waiting for a database connection, per batch",
        )

    def exported(self, spans: int, duplicates: int = 0) -> None:
        self._add("spans_exported", spans)
        self._add("spans_duplicate", duplicates)
        self._exported.add(spans)

    def spans_failed(self, spans: int) -> None:
        """Spans of a batch the database did not take (spooled or dropped after)."""
        self._add("spans_failed", spans)

    def spooled(self, spans: int) -> None:
        self._add("spans_spooled", spans)
        self._spooled.add(spans)

    def replayed(self, spans: int) -> None:
        self._add("spans_replayed", spans)
        self._replayed.add(spans)

    def dropped(self, spans: int, reason: str) -> None:
        if spans:
            self._add(f"spans_dropped_{reason}", spans)
            self._dropped.add(spans, {"reason": reason})

    def drop_counter(self, reason: str) -> Callable[[], object]:
        """A per-span drop count for application threads, added to ``spans_dropped_<reason>``
        by ``collect_drops()``: each call is one C-level ``next()`` on an ``itertools.count``,
        atomic under the GIL and without a lock, so a span dropped costs tens of nanoseconds."""
        counter = itertools.count()
        with self._lock:
            self._drop_sources.append([reason, counter, 0, 0])
        return counter.__next__

    def collect_drops(self) -> dict[str, int]:
        """Move what the drop counters counted since the last call into the counters; the
        new drops by reason."""
        new: dict[str, int] = {}
        with self._lock:
            for source in self._drop_sources:
                reason, counter, reads, seen = source
                # Reading an itertools.count advances it: every read is subtracted again.
                total = next(counter) - reads
                source[2] = reads + 1
                if total > seen:
                    source[3] = total
                    new[reason] = new.get(reason, 0) + total - seen
                    self._counts[f"spans_dropped_{reason}"] += total - seen
        for reason, spans in new.items():
            self._dropped.add(spans, {"reason": reason})
        return new

    def failed(self, cause: str) -> None:
        self._add("export_failures", 1)
        self._add(f"export_failures_{cause}", 1)
        self._failures.add(1, {"cause": cause})

    def export_took(self, seconds: float) -> None:
        self._add("export_calls", 1)
        self._latency.record(seconds)
        with self._lock:
            self._counts["export_time_total_us"] += round(seconds * 1e6)
            self._counts["export_time_max_us"] = max(
                self._counts["export_time_max_us"], round(seconds * 1e6)
            )

    def connection_waited(self, seconds: float) -> None:
        """One wait for a connection (own pool or shared), in ``connection_wait_*_us``."""
        self._connection_wait.record(seconds)
        with self._lock:
            self._counts["connection_waits"] += 1
            self._counts["connection_wait_total_us"] += round(seconds * 1e6)
            self._counts["connection_wait_max_us"] = max(
                self._counts["connection_wait_max_us"], round(seconds * 1e6)
            )

    def _add(self, name: str, value: int) -> None:
        if value:
            with self._lock:
                self._counts[name] += value

    def snapshot(self) -> dict[str, int]:
        if self._drop_sources:
            self.collect_drops()
        with self._lock:
            return dict(self._counts)
