"""PostgresSpanExporter: mapping plus writer behind the SpanExporter interface; never raises."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from otel_pg_exporter import settings
from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import SpoolError, SpoolRefused, WriteError
from otel_pg_exporter.export import forks
from otel_pg_exporter.export.fastpath import (
    FastRow,
    copy_encoder,
    fast_path_status,
    fast_to_row,
)
from otel_pg_exporter.export.late_attributes import LATE_ATTRIBUTES
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.export.metrics import ExporterMetrics
from otel_pg_exporter.export.replay import Replayer
from otel_pg_exporter.export.retention import RetentionJob
from otel_pg_exporter.export.scrubbing import resolve_scrubber
from otel_pg_exporter.export.sender import Sender
from otel_pg_exporter.export.spool import Spool
from otel_pg_exporter.export.writer import SpanWriter, describe
from otel_pg_exporter.schema.table import Row
from otel_pg_exporter.settings import ExporterSettings

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
    "PoolBusy": "the application's pool had no free connection within "
    "OTEL_EXPORTER_POSTGRES_POOL_WAIT_MS; the spans are spooled and replayed later",
    "SenderBusy": "PostgreSQL has not finished the earlier batches; "
    "they are stored or spooled once it answers or OTEL_EXPORTER_POSTGRES_TIMEOUT passes",
    "FlushBudgetPassed": "they were not stored within the flush_after() budget; "
    "the replay stores them once the database answers",
}


class SenderBusy(WriteError):
    """The sender is still waiting on PostgreSQL for earlier batches."""

    transient = False


class FlushBudgetPassed(WriteError):
    """A flush budget (``flush_after``) passed before the batch was stored."""

    transient = False


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


# Old stats() keys and the keys that replaced them.
DEPRECATED_STATS_KEYS = {
    "spans_rejected": "spans_dropped_rejected",
    "export_seconds_total_us": "export_time_total_us",
    "export_seconds_max_us": "export_time_max_us",
}

# The export thread maps for this long, then hands the GIL back (see _map); the clock is
# read every _CLOCK_EVERY spans.
YIELD_AFTER_S = 0.002
_CLOCK_EVERY = 16
# With use_sender_thread(), the export thread hands each mapped batch to the sender; when
# the sender has not made room for it within this time, the batch goes to the spool instead
# (and the next ones at once, until the sender finishes its current batch). The SDK's queue
# holds 8,192 spans, over 1.5 s at 5,000 spans/s, so a stalled database never overflows it.
HANDOFF_WAIT_S = 0.5
# Without the sender thread, export() waits on the database at most this long per batch.
DIRECT_WRITE_BUDGET_S = 2.0
# shutdown() waits this long at most for the sender, then spools what it still holds, so a
# process exits promptly even when the database stopped answering.
SHUTDOWN_WAIT_S = 3.0


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: 0.1 s, 0.2 s, 0.4 s ... up to 2 s, randomised."""
    return random.uniform(0, min(2.0, 0.1 * 2**attempt))  # noqa: S311 - jitter, not security


def spool_folder_key(dsn: str, schema: str | None, table: str) -> str:
    """The spool sub-folder of a target: one per database and table, so a replay never
    crosses targets (``otel-pg spool replay`` finds an exporter's folder with it)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {"dsn": redact_dsn(dsn)}
    identity = [
        str(params.get(name, ""))
        for name in ("host", "hostaddr", "port", "dbname", "user", "service", "dsn")
    ]
    identity += [schema or "", table]
    return hashlib.sha256("\x00".join(identity).encode("utf-8", "replace")).hexdigest()[:16]


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
        pool: ConnectionPool[Any] | None = None,
        pool_wait: int | None = None,
        execution_id_attribute: str | None = None,
        max_value_chars: int | None = None,
        max_span_chars: int | None = None,
        spool_dir: str | None = None,
        spool_max_mb: int | None = None,
        retention_days: int | None = None,
        fast_path: bool | None = None,
        scrub: bool | None = None,
        scrub_patterns: Sequence[str] | None = None,
        scrub_allow: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.enabled: bool = settings.resolve("enabled", enabled, env)
        self.settings = ExporterSettings.resolve(
            env,
            dsn=dsn,
            schema=schema,
            table=table,
            timeout=timeout,
            pool_max=pool_max,
            pool_wait=pool_wait,
            execution_id_attribute=execution_id_attribute,
            max_value_chars=max_value_chars,
            max_span_chars=max_span_chars,
            spool_dir=spool_dir,
            spool_max_mb=spool_max_mb,
            retention_days=retention_days,
            fast_path=fast_path,
        )
        # The application's pool, shared (never closed here); its conninfo names the target
        # (spool folder, retention) when no DSN is given.
        self.pool: ConnectionPool[Any] | None = settings.resolve("pool", pool, env)
        if self.pool is not None and not self.settings.dsn:
            self.settings = dataclasses.replace(self.settings, dsn=self.pool.conninfo)
        self.scrubber = resolve_scrubber(scrub, scrub_patterns, scrub_allow, env)
        self._mapper = SpanMapper(
            late_attributes=LATE_ATTRIBUTES,
            scrubber=self.scrubber,
            execution_id_attribute=self.settings.execution_id_attribute,
            max_value_chars=self.settings.max_value_chars,
            max_span_chars=self.settings.max_span_chars,
        )
        # The compiled fast path where it was built (identical rows; every unusual span
        # goes through the reference mapper); the pure-Python mapper otherwise.
        self._fast: FastRow | None = fast_to_row(self._mapper, self.settings.fast_path)
        self._to_row = self._fast or self._mapper.to_row
        self._mapped_python = 0  # spans mapped while there is no fast path
        self._metrics = ExporterMetrics()
        self._writer = SpanWriter(
            dsn=self.settings.dsn,
            table=self.settings.table,
            schema=self.settings.schema,
            pool_max=self.settings.pool_max,
            timeout_s=self.settings.timeout_s,
            pool=self.pool,
            pool_wait_s=self.settings.pool_wait / 1000,
            on_wait=self._metrics.connection_waited,
            encode_rows=copy_encoder(self.settings.fast_path),
        )
        self._warnings = _RateLimitedWarnings()
        self._shutdown = False
        self._stopping = threading.Event()
        self._spool_lock = threading.Lock()
        self._spool: Spool | None = None
        self._replayer: Replayer | None = None
        self._spool_failed = False
        # Set when a batch went to the spool, so a successful export wakes the replay thread
        # without listing the spool folder on every export.
        self._spooled_since_success = False
        self._sender = Sender(self._deliver)
        self._pipelined = False
        # A deadline for the hand-off on this thread (set by export_by), so that a flush
        # with a budget never waits HANDOFF_WAIT_S for a busy sender.
        self._local = threading.local()
        self._retention: RetentionJob | None = None
        self._retention_started = False
        if not self.enabled:
            _say_tracing_is_off()
        forks.reset_in_child(forks.EXPORTERS, self)

    def after_fork_in_child(self) -> None:
        # The child runs its own retention job from its next export (the lock keeps it to
        # one process per table).
        self._retention = None
        self._retention_started = False
        # The sender and replay threads do not survive a fork; the child starts its own at its
        # next export (the spool already dropped the parent's files and locks).
        self._sender.after_fork_in_child()
        if self._replayer is not None:
            self._replayer = Replayer(
                self._spool,  # type: ignore[arg-type]  # set together with the replayer
                self._writer,
                self._metrics,
                timeout_s=self.settings.timeout_s,
                warn=self._warnings.warn,
            )
            if not self._shutdown:
                self._replayer.start()

    def __repr__(self) -> str:
        return f"PostgresSpanExporter({self.settings!r})"

    def stats(self) -> dict[str, int]:
        """A snapshot of the exporter's counters (and of the spool, when one is open).

        Spans lost are ``spans_dropped_<reason>``; times are ``export_time_*_us`` in
        microseconds. The keys in ``DEPRECATED_STATS_KEYS`` are still present, with the
        value of the key they name, until the next minor release."""
        counters = {
            "spans_exported": 0,
            "spans_duplicate": 0,
            "spans_failed": 0,
            "spans_dropped_rejected": 0,
            "spans_spooled": 0,
            "spans_replayed": 0,
            "export_calls": 0,
            "export_failures": 0,
        }
        counters.update(self._metrics.snapshot())
        fast = self._fast
        # Spans mapped by the compiled fast path, and by the pure-Python mapper (all of them
        # when the fast path is off or not built; else the unusual ones it hands over).
        counters["spans_mapped_fast"] = 0 if fast is None else fast.fast
        counters["spans_mapped_python"] = self._mapped_python if fast is None else fast.fallbacks
        for old, new in DEPRECATED_STATS_KEYS.items():
            counters[old] = counters.get(new, 0)
        if self._pipelined:
            counters["sender_rows_in_hand"] = self._sender.rows_in_hand
        for key in ("connection_waits", "connection_wait_total_us", "connection_wait_max_us"):
            counters.setdefault(key, 0)
        # Batches not stored because every connection of a shared pool stayed busy for
        # pool_wait (spooled, or dropped when there is no spool).
        counters["batches_no_connection"] = counters.get("export_failures_PoolBusy", 0)
        retention = self._retention
        if retention is not None:
            counters["retention_runs"] = retention.runs
            counters["retention_skipped"] = retention.skipped
            counters["retention_rows_deleted"] = retention.rows_deleted
        spool = self._spool
        if spool is not None:
            pending = spool.pending()
            counters["spool_segments"] = pending.segments
            counters["spool_bytes"] = pending.bytes
            counters["spool_rows"] = pending.rows
            counters["spool_corrupt_records"] = pending.corrupt_records
        return counters

    @property
    def fast_path_status(self) -> str:
        """One line: whether spans are mapped by the compiled fast path, and if not, why."""
        return fast_path_status(self.settings.fast_path)

    @property
    def metrics(self) -> ExporterMetrics:
        """The exporter's counters (``stats()`` reads them)."""
        return self._metrics

    @property
    def replayer(self) -> Replayer | None:
        """The spool's replay thread, once a spool is open."""
        return self._replayer

    def use_sender_thread(self) -> None:
        """From now on, store batches on a sender thread of the exporter's own.

        ``export()`` then maps the batch, hands it over and returns, so that mapping the next
        batch overlaps storing this one, and a database that stops answering holds the
        export thread for ``HANDOFF_WAIT_S`` at most. Only for a processor whose
        ``force_flush()`` also flushes the exporter: ``CountingBatchSpanProcessor`` does, and
        turns this on itself; the SDK's ``BatchSpanProcessor`` would report a flush done
        before the spans are stored.
        """
        self._pipelined = True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Store ``spans``: SUCCESS when every span is in the table (or already was).

        A batch the database cannot take now goes to the disk spool (FAILURE: not stored
        yet) and is replayed in the background once the database answers. With
        ``use_sender_thread()``, SUCCESS means mapped and handed to the sender, and
        ``force_flush()`` says whether everything handed over is stored.
        """
        if self._shutdown:
            return SpanExportResult.FAILURE
        if not spans or not self.enabled:
            return SpanExportResult.SUCCESS
        started = time.monotonic()
        with untraced():
            try:
                return self._export(spans, started)
            except Exception as exc:  # export() must never raise into the SDK
                self._dropped_unexpectedly(len(spans), exc)
                return SpanExportResult.FAILURE
            finally:
                self._metrics.export_took(time.monotonic() - started)

    def _export(self, spans: Sequence[ReadableSpan], started: float) -> SpanExportResult:
        self._report_drops()
        rows = self._map(spans)
        if self._fast is None:
            self._mapped_python += len(spans)
        unmappable = len(spans) - len(rows)
        self._metrics.dropped(unmappable, "rejected")
        self._open_spool_lazily()
        if not self._retention_started:
            self._start_retention_lazily()
        if not rows:
            return SpanExportResult.FAILURE
        limit: float | None = getattr(self._local, "deadline", None)
        if self._pipelined:
            wait_s = HANDOFF_WAIT_S
            if limit is not None:
                wait_s = max(0.0, min(wait_s, limit - time.monotonic()))
            handed_over = self._sender.submit(rows, wait_s)
            if not handed_over:
                busy = SenderBusy(f"no answer from PostgreSQL for over {wait_s:g} s")
                self._not_stored(rows, busy)
            stored = handed_over
        else:  # a batch not stored within the budget is spooled; the replay takes its time
            budget = min(self.settings.timeout_s, DIRECT_WRITE_BUDGET_S)
            deadline = started + budget if limit is None else min(started + budget, limit)
            stored = self._write(rows, deadline)
        if stored and not unmappable:
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE

    def _deliver(self, rows: list[Row]) -> bool:
        """Store one batch on the sender thread, which may take the full timeout: nothing
        waits for it but ``force_flush``."""
        with untraced():
            try:
                deadline = time.monotonic() + self.settings.timeout_s
                return self._write(rows, deadline, taken_back_on_shutdown=True)
            except Exception as exc:  # the sender thread must keep going
                self._dropped_unexpectedly(len(rows), exc)
                return False

    def _report_drops(self) -> None:
        """Spans the processor dropped for a full queue since the last export: counted, and
        said in one rate-limited warning (never one line per span)."""
        full = self._metrics.collect_drops().get("queue_full")
        if full:
            self._warnings.warn(
                "queue_full",
                "Dropped %d spans: the span queue was full (the application makes spans faster "
                "than they are exported); raise OTEL_BSP_MAX_QUEUE_SIZE for bursts",
                full,
            )

    def _dropped_unexpectedly(self, count: int, exc: Exception) -> None:
        self._warnings.warn("unexpected", "Dropped %d spans: unexpected %s", count, describe(exc))
        self._metrics.failed("unexpected")
        self._metrics.dropped(count, "unexpected")

    def _write(
        self, rows: list[Row], deadline: float, *, taken_back_on_shutdown: bool = False
    ) -> bool:
        """Store ``rows``, True when every one is in the table. Transient failures are
        retried with jittered backoff until ``deadline``; a batch the database does not take
        goes to the spool (unless ``taken_back_on_shutdown`` and shutdown has begun: it
        spooled the sender's batches itself)."""
        attempt = 0
        while True:
            try:
                outcome = self._writer.write(rows, deadline)
                break
            except WriteError as exc:
                delay = _backoff(attempt)
                retry = (
                    exc.transient
                    and self._writer.database_down_cause is None
                    and time.monotonic() + delay < deadline
                )
                if retry and not self._stopping.wait(delay):
                    attempt += 1
                    continue
                taken_back = taken_back_on_shutdown and (
                    self._stopping.is_set() or self._sender.taken_back(rows)
                )
                if not taken_back:
                    self._not_stored(rows, exc)
                return False
        self._metrics.exported(outcome.inserted, outcome.duplicates)
        self._metrics.dropped(len(outcome.rejected), "rejected")
        if outcome.rejected:
            self._warnings.warn(
                "RowRejected",
                "PostgreSQL refused %d of %d spans (first: %s); %s",
                len(outcome.rejected),
                len(rows),
                outcome.rejected[0][1],
                _ADVICE["RowRejected"],
            )
        replayer = self._replayer
        if replayer is not None and self._spooled_since_success:
            # The database answers again: replay now rather than at the next idle check.
            self._spooled_since_success = False
            replayer.wake()
        if LATE_ATTRIBUTES:
            self._store_late_attributes(deadline)
        return not outcome.rejected

    def _store_late_attributes(self, deadline: float) -> None:
        """Attributes that arrived after their span was exported: update the stored rows."""
        waiting = LATE_ATTRIBUTES.waiting()
        items = [
            (f"{trace_id:032x}", f"{span_id:016x}", json.dumps(attributes))
            for trace_id, span_id, attributes in waiting
        ]
        try:
            found = self._writer.add_metadata(items, deadline)
        except WriteError:
            return  # kept for the next export
        for (trace_id, span_id, _), stored in zip(waiting, found, strict=True):
            if stored:
                LATE_ATTRIBUTES.pop(trace_id, span_id)

    def _not_stored(self, rows: list[Row], exc: WriteError) -> None:
        """Count a batch the database did not take, then spool it (or count it dropped),
        and say which in one rate-limited warning."""
        kind = type(exc).__name__
        self._metrics.failed(kind)
        self._metrics.spans_failed(len(rows))
        fate = self._spool_batch(rows)
        self._warnings.warn(
            kind,
            "Could not store %d spans in PostgreSQL (%s): %s; %s",
            len(rows),
            fate,
            exc.cause,
            _ADVICE.get(kind, "see the cause above"),
        )

    def _spool_batch(self, rows: list[Row]) -> str:
        """Spool ``rows``; every span is counted once, as spooled or as dropped with its
        reason. Returns what became of them, for the warning."""
        spool = self._spool
        if spool is None:
            self._metrics.dropped(len(rows), "no_spool")
            return "dropped: no disk spool"
        try:
            evicted = spool.append(rows)
        except SpoolRefused as refused:
            self._metrics.dropped(len(rows), "spool_full")
            return f"dropped: {refused}; raise OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB"
        except SpoolError as spool_exc:
            self._metrics.dropped(len(rows), "spool_error")
            self._warnings.warn(
                "SpoolError",
                "Could not spool %d spans: %s; check OTEL_EXPORTER_POSTGRES_SPOOL_DIR",
                len(rows),
                describe(spool_exc),
            )
            return "dropped: the spool could not write them"
        self._metrics.spooled(len(rows))
        self._spooled_since_success = True
        if evicted:
            self._metrics.dropped(evicted, "spool_full")
            self._warnings.warn(
                "spool_full",
                "The spool is full: dropped %d spooled spans, oldest first; "
                "raise OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB or fix the database",
                evicted,
            )
        return "spooled to disk, replayed once the database answers"

    def _start_retention_lazily(self) -> None:
        """At the first export (never in the constructor): the background retention job,
        unless retention is off."""
        with self._spool_lock:
            if self._retention_started:
                return
            self._retention_started = True
            if self.settings.retention_days <= 0 or self._shutdown:
                return
            job = RetentionJob(
                self.settings.dsn,
                schema=self.settings.schema,
                table=self.settings.table,
                retention_days=self.settings.retention_days,
            )
            self._retention = job
            job.start()

    @property
    def retention(self) -> RetentionJob | None:
        """The background retention job, once started."""
        return self._retention

    def _open_spool_lazily(self) -> Replayer | None:
        """Open the spool and start its replay thread at the first export (not before: the
        constructor touches neither network nor disk). A spool left by a process that died
        is found here and replayed."""
        if self._replayer is not None or self._spool_failed or not self.settings.spool_dir:
            return self._replayer
        with self._spool_lock:
            if self._replayer is not None or self._spool_failed:
                return self._replayer
            directory = os.path.join(self.settings.spool_dir, self._target_key())
            try:
                spool = Spool(directory, max_bytes=self.settings.spool_max_mb * 2**20)
            except (OSError, SpoolError) as exc:
                self._spool_failed = True
                self._warnings.warn(
                    "SpoolError",
                    "No disk spool (%s): spans are dropped while the database is down",
                    describe(exc),
                )
                return None
            replayer = Replayer(
                spool,
                self._writer,
                self._metrics,
                timeout_s=self.settings.timeout_s,
                warn=self._warnings.warn,
            )
            self._spool = spool
            self._replayer = replayer
            replayer.start()
            return replayer

    def _target_key(self) -> str:
        return spool_folder_key(self.settings.dsn, self.settings.schema, self.settings.table)

    def _map(self, spans: Sequence[ReadableSpan]) -> list[Row]:
        to_row = self._to_row
        rows: list[Row] = []
        append = rows.append
        clock = time.perf_counter
        try:
            # Mapping a batch is milliseconds of work holding the GIL. Handing it back costs
            # the export thread up to the interpreter's switch interval (5 ms) before it runs
            # again when the application is busy, so it is handed back by elapsed time, not
            # every few spans: a slice of YIELD_AFTER_S, then the application's turn.
            yield_at = clock() + YIELD_AFTER_S
            for index in range(0, len(spans), _CLOCK_EVERY):
                for span in spans[index : index + _CLOCK_EVERY]:
                    append(to_row(span))
                if clock() >= yield_at:
                    time.sleep(0)
                    yield_at = clock() + YIELD_AFTER_S
            return rows
        except Exception:  # noqa: S110 - one odd span must not cost its batch: redo one by one
            pass
        rows = []
        for span in spans:
            try:
                rows.append(to_row(span))
            except Exception as exc:
                self._warnings.warn("unmappable", "Skipped a span: %s", describe(exc))
        return rows

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every batch handed to the sender is stored or spooled, and write the
        attributes that arrived after their span was stored. True when all batches since the
        last flush are in the table (none spooled, dropped or still pending)."""
        if self._shutdown:
            return False
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        stored = self._sender.flush(timeout_millis / 1000)
        if LATE_ATTRIBUTES:
            with untraced():
                self._store_late_attributes(deadline)
        return stored

    @contextlib.contextmanager
    def export_by(self, deadline: float) -> Iterator[None]:
        """Within this block, ``export()`` on this thread hands a batch over to the sender
        only until ``deadline`` (monotonic), after which the batch is spooled at once; without
        the sender thread, its own write gets until ``deadline`` (a write blocked on a silent
        network is cut by the watchdog up to ``WATCHDOG_GRACE_S`` later)."""
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = previous

    def spool_in_hand(self) -> int:
        """Spool now, without waiting, every batch handed over and not yet stored; the
        number of spans spooled (or counted dropped when there is no spool).

        For a process that may be frozen or end at once (``flush_after``): what the sender
        still holds would be lost with it. The batch being written stays with the sender and
        may still commit: storing it twice is harmless, inserts are idempotent."""
        if not self.enabled or not self._pipelined:
            return 0
        taken = self._sender.take_in_hand()
        for rows in taken:
            self._not_stored(rows, FlushBudgetPassed("not stored within the flush budget"))
        return sum(len(rows) for rows in taken)

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """Store what the sender holds within ``timeout_millis`` (at most
        ``SHUTDOWN_WAIT_S`` when not given; the rest is spooled), stop the replay thread, close
        the spool (its files stay for the next process) and the connection pool; idempotent.
        Later exports return FAILURE. The SDK's batch processor passes what is left of its
        own shutdown timeout."""
        if self._shutdown:
            return
        self._shutdown = True
        limit = None if timeout_millis is None else time.monotonic() + timeout_millis / 1000

        def left(default_s: float) -> float:
            return (
                default_s if limit is None else max(0.0, min(default_s, limit - time.monotonic()))
            )

        wait_s = left(min(self.settings.timeout_s, SHUTDOWN_WAIT_S))
        unsent = self._sender.stop(wait_s)
        self._stopping.set()
        for rows in unsent:  # handed over by export(), which opened the spool
            self._not_stored(rows, SenderBusy(f"not stored within {wait_s:g} s of shutdown"))
        late_budget_s = left(self.settings.timeout_s)
        if LATE_ATTRIBUTES and self.enabled and late_budget_s > 0:
            with untraced():
                self._store_late_attributes(time.monotonic() + late_budget_s)
        if self._replayer is not None:
            self._replayer.stop(left(5.0))
        if self._spool is not None:
            self._spool.close()
        if self._retention is not None:
            self._retention.stop()
        self._writer.close(left(5.0))
