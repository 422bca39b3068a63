"""The sender thread: batches stored behind the export thread's back, flushed, never lost.

Forked children (whose sender starts afresh) are covered by test_fork.py, in fresh
interpreters: forking this multi-threaded test process can deadlock inside the SDK's own
after-fork handler.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tcp_proxy import TcpProxy

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export.exporter import HANDOFF_WAIT_S
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor
from otel_pg_exporter.export.sender import MAX_PENDING_ROWS, Sender
from otel_pg_exporter.schema.table import Row

SUCCESS = SpanExportResult.SUCCESS
FAILURE = SpanExportResult.FAILURE


def rows(count: int, first: int = 0) -> list[Row]:
    """Stand-in rows: the sender never looks inside them."""
    return [(first + index,) for index in range(count)]  # type: ignore[misc]


class Recorder:
    """A deliver() that records what it got and can be held, as a slow database would."""

    def __init__(self, answer: bool = True) -> None:
        self.batches: list[list[Row]] = []
        self.answer = answer
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, batch: list[Row]) -> bool:
        self.entered.set()
        self.release.wait(30)
        self.batches.append(batch)
        return self.answer

    def delivered(self) -> list[Row]:
        return [row for batch in self.batches for row in batch]


# --- the sender on its own ------------------------------------------------------------------


def test_batches_arrive_in_order_and_waiting_ones_are_joined() -> None:
    """While one batch is being stored, the next ones wait and go out as one, in order."""
    recorder = Recorder()
    recorder.release.clear()
    sender = Sender(recorder, max_pending_rows=100, max_batch_rows=30)
    assert sender.submit(rows(5), wait_s=1)
    assert recorder.entered.wait(5)
    for number in range(1, 7):
        assert sender.submit(rows(10, first=number * 100), wait_s=1)
    recorder.release.set()

    assert sender.flush(timeout_s=10)
    expected = rows(5) + [row for n in range(1, 7) for row in rows(10, first=n * 100)]
    assert expected == recorder.delivered()
    assert [5, 30, 30] == [len(batch) for batch in recorder.batches]
    assert [] == sender.stop(timeout_s=5)


def test_flush_reports_a_batch_that_was_not_stored_once() -> None:
    """flush() is False when a delivery failed since the last flush, then True again."""
    recorder = Recorder(answer=False)
    sender = Sender(recorder)
    sender.submit(rows(3), wait_s=1)
    assert not sender.flush(timeout_s=10)
    recorder.answer = True
    sender.submit(rows(3), wait_s=1)
    assert sender.flush(timeout_s=10)
    sender.stop(timeout_s=5)


def test_a_stuck_sender_refuses_after_the_wait_then_at_once_until_it_moves() -> None:
    """Full and stuck: one hand-off waits, the next ones are refused without waiting."""
    recorder = Recorder()
    recorder.release.clear()
    sender = Sender(recorder, max_pending_rows=10)
    assert sender.submit(rows(10), wait_s=1)  # being stored (and stuck)
    assert recorder.entered.wait(5)
    assert sender.submit(rows(10, first=100), wait_s=1)  # waits behind it

    assert 20 == sender.rows_in_hand
    assert not sender.submit(rows(10, first=200), wait_s=0.2)
    started = time.monotonic()
    refused = [sender.submit(rows(1, first=300 + n), wait_s=30) for n in range(5)]
    assert [False] * 5 == refused
    assert time.monotonic() - started < 10, "a stuck sender made the caller wait again"
    assert not sender.flush(timeout_s=0.1)

    recorder.release.set()
    assert sender.flush(timeout_s=10)
    assert sender.submit(rows(10, first=400), wait_s=5), "the sender moved: accept again"
    assert sender.flush(timeout_s=10)
    assert rows(10) + rows(10, first=100) + rows(10, first=400) == recorder.delivered()
    sender.stop(timeout_s=5)


def test_stop_hands_back_what_a_stuck_sender_holds() -> None:
    """stop() returns the batch being stored and those waiting, for the caller to spool."""
    recorder = Recorder()
    recorder.release.clear()
    sender = Sender(recorder)
    sender.submit(rows(2), wait_s=1)
    assert recorder.entered.wait(5)
    sender.submit(rows(3, first=10), wait_s=1)

    left = sender.stop(timeout_s=0.2)

    assert [rows(2), rows(3, first=10)] == left
    assert not sender.submit(rows(1), wait_s=1), "a stopped sender takes nothing"
    recorder.release.set()


def test_stop_stores_what_is_pending_when_the_database_answers() -> None:
    recorder = Recorder()
    sender = Sender(recorder)
    for number in range(20):
        sender.submit(rows(50, first=number * 100), wait_s=5)
    assert [] == sender.stop(timeout_s=10)
    assert 1000 == len(recorder.delivered())


def test_a_delivery_that_raises_does_not_kill_the_thread() -> None:
    calls: list[int] = []

    def deliver(batch: list[Row]) -> bool:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return True

    sender = Sender(deliver)
    sender.submit(rows(1), wait_s=1)
    assert not sender.flush(timeout_s=10)
    sender.submit(rows(2), wait_s=1)
    assert sender.flush(timeout_s=10)
    assert [1, 2] == calls
    sender.stop(timeout_s=5)


# --- behind the processor, against PostgreSQL -----------------------------------------------


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    return str(tmp_path / "spool")


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT span_id) FROM trace_spans").fetchone()
    assert row is not None
    assert row[0] == row[1], "a span was stored twice"
    return int(row[0])


def provider_for(exporter: PostgresSpanExporter, **options: int) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "sender-tests"}))
    provider.add_span_processor(CountingBatchSpanProcessor(exporter, **options))
    return provider


def make_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("tests.test_sender")
    for index in range(count):
        with tracer.start_as_current_span("work", attributes={"index": index}):
            pass


def test_the_processor_turns_the_sender_on_and_its_flush_waits_for_the_table(
    migrated_dsn: str, spool_dir: str
) -> None:
    """5,000 spans through the processor: when force_flush returns True, all are rows."""
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True, spool_dir=spool_dir)
    provider = provider_for(exporter, schedule_delay_millis=50)
    try:
        assert exporter._pipelined
        make_spans(provider, 5000)
        assert provider.force_flush(30_000)
        assert 5000 == count_rows(migrated_dsn)
        stats = exporter.stats()
        assert 0 == stats["sender_rows_in_hand"]
        assert (5000, 0, 0) == (
            stats["spans_exported"],
            stats["spans_failed"],
            stats["spans_spooled"],
        )
    finally:
        provider.shutdown()


def test_the_plain_sdk_processor_keeps_export_synchronous(migrated_dsn: str) -> None:
    """Without the processor's help export() stores the batch before it returns."""
    exporter = PostgresSpanExporter(migrated_dsn, enabled=True)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    try:
        assert not exporter._pipelined
        make_spans(provider, 10)
        assert provider.force_flush(30_000)
        assert 10 == count_rows(migrated_dsn)
    finally:
        provider.shutdown()


STALLED_BATCHES = MAX_PENDING_ROWS // 200 + 20


def test_a_silent_database_never_holds_the_export_thread_and_nothing_is_lost(
    migrated_dsn: str, proxied: tuple[TcpProxy, str], spool_dir: str
) -> None:
    """While the network is silent, export() returns after the hand-off wait at most (then
    spools); once it answers, every span is in the table exactly once."""
    proxy, dsn = proxied
    exporter = PostgresSpanExporter(dsn, enabled=True, timeout=3, spool_dir=spool_dir)
    exporter.use_sender_thread()
    sink = InMemorySpanExporter()
    source = TracerProvider()
    source.add_span_processor(SimpleSpanProcessor(sink))

    def export_batches(count: int) -> list[float]:
        """Export ``count`` batches of 200 new spans; how long each export() took."""
        took = []
        for _ in range(count):
            sink.clear()
            make_spans(source, 200)
            started = time.monotonic()
            exporter.export(sink.get_finished_spans())
            took.append(time.monotonic() - started)
        return took

    try:
        export_batches(2)
        assert exporter.force_flush(10_000)
        proxy.stall()
        # More spans into the silence than the sender may hold (MAX_PENDING_ROWS).
        stalled = export_batches(STALLED_BATCHES)
        proxy.resume()
        export_batches(2)
        exporter.force_flush(20_000)
        replayer = exporter.replayer
        assert replayer is not None
        assert replayer.wait_idle(30)

        # The export thread waited for the sender once (the hand-off wait), never for the
        # database's timeout: the other exports spooled at once.
        assert max(stalled) < exporter.settings.timeout_s, stalled
        assert sum(took > HANDOFF_WAIT_S / 2 for took in stalled) <= 2, stalled
        stats = exporter.stats()
        assert stats["spans_spooled"] > 0
        assert (STALLED_BATCHES + 4) * 200 == count_rows(migrated_dsn)
        assert not any(n for key, n in stats.items() if key.startswith("spans_dropped_")), stats
    finally:
        exporter.shutdown()


def test_shutdown_spools_what_a_stalled_sender_holds(
    migrated_dsn: str, proxied: tuple[TcpProxy, str], spool_dir: str
) -> None:
    """Shutting down into a silent network takes seconds, not the timeout, and the batch
    the sender was storing is spooled; the next exporter on the same spool stores it."""
    proxy, dsn = proxied
    exporter = PostgresSpanExporter(dsn, enabled=True, timeout=30, spool_dir=spool_dir)
    provider = provider_for(exporter, schedule_delay_millis=50)
    make_spans(provider, 10)
    assert provider.force_flush(10_000)
    proxy.stall()
    make_spans(provider, 300)
    started = time.monotonic()
    provider.shutdown()
    took = time.monotonic() - started
    proxy.resume()

    assert took < 20, f"shutdown waited {took:.1f} s on a silent database"
    assert exporter.stats()["spans_spooled"] == 300
    successor = PostgresSpanExporter(dsn, enabled=True, spool_dir=spool_dir)
    try:
        successor._open_spool_lazily()
        replayer = successor.replayer
        assert replayer is not None
        assert replayer.wait_idle(30)
        assert 310 == count_rows(migrated_dsn)
    finally:
        successor.shutdown()
