"""Replays the disk spool into PostgreSQL in the background, oldest first."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import WriteError
from otel_pg_exporter.export.metrics import ExporterMetrics
from otel_pg_exporter.export.spool import Segment, Spool
from otel_pg_exporter.export.writer import SpanWriter, describe

logger = logging.getLogger("otel_pg_exporter")

IDLE_INTERVAL_S = 5.0
RETRY_INTERVAL_S = 1.0
# After each record, pause as long as storing it took (at most this): replay then uses about
# half of one connection and of the exporter's CPU, and fresh spans keep the rest.
MAX_PAUSE_S = 0.5


class Replayer:
    """A daemon thread that moves spooled batches into the table once the database answers.

    Inserts are idempotent (primary key + ON CONFLICT DO NOTHING), so a segment replayed twice
    after a crash never shows as duplicate rows.
    """

    def __init__(
        self,
        spool: Spool,
        writer: SpanWriter,
        metrics: ExporterMetrics,
        *,
        timeout_s: float,
        warn: Callable[..., None],
    ) -> None:
        self._spool = spool
        self._writer = writer
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._warn = warn
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="otel_pg_exporter-replay", daemon=True
        )
        self._idle = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the spool now (after a spooled batch, or once the database answers)."""
        self._idle.clear()
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the spool was found empty (tests and shutdown use it)."""
        self.wake()
        return self._idle.wait(timeout_s)

    def _run(self) -> None:
        interval = 0.0
        while not self._stopped.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            if self._writer.database_down_cause is not None:
                interval = RETRY_INTERVAL_S
                continue
            try:
                drained = self._replay_available()
            except Exception as exc:  # a worker must not die: report and keep going
                self._warn("replay", "Replaying the spool failed: %s", describe(exc))
                drained = False
            if drained:
                self._idle.set()
            interval = IDLE_INTERVAL_S if drained else RETRY_INTERVAL_S

    def _replay_available(self) -> bool:
        """Replay segments until the spool is empty (True) or a write fails (False)."""
        while not self._stopped.is_set():
            segment = self._spool.claim_oldest()
            if segment is None:
                return True
            if not self._replay(segment):
                return False
        return False

    def _replay(self, segment: Segment) -> bool:
        try:
            for rows in segment.records():
                if self._stopped.is_set():
                    segment.release()
                    return False
                started = time.monotonic()
                with untraced():
                    outcome = self._writer.write(rows, started + self._timeout_s)
                self._metrics.replayed(outcome.inserted + outcome.duplicates)
                self._metrics.dropped(len(outcome.rejected), "rejected")
                self._stopped.wait(min(MAX_PAUSE_S, time.monotonic() - started))
        except WriteError as exc:
            segment.release()
            self._warn(type(exc).__name__, "Replaying the spool paused: %s; will retry", exc.cause)
            return False
        except BaseException:
            segment.release()
            raise
        segment.commit()
        return True
