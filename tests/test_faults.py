"""Fault tests: an app keeps making spans while PostgreSQL fails under it, and loses none.

The app is real: a ``TracerProvider`` with a batch processor in front of
``PostgresSpanExporter``, and a thread that makes spans in a loop, each with a unique integer
attribute ``seq``. While it runs, the database is stopped, crashed, has its sessions killed, its
table locked, its network stalled, or the disk spool fills up; afterwards every span made is in
``trace_spans`` exactly once, or counted in ``stats()`` as dropped for a stated reason.

Each app test runs twice: behind the SDK's ``BatchSpanProcessor`` (the export thread writes)
and behind ``CountingBatchSpanProcessor`` (the exporter's sender thread writes, as under
``configure()`` and the CLI).

The server is a cluster of this module's own, since the tests stop and restart it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from psycopg.conninfo import make_conninfo
from support import clean_environ, wait_until
from tcp_proxy import TcpProxy

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.export.processor import CountingBatchSpanProcessor
from otel_pg_exporter.export.writer import APPLICATION_NAME
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import DevCluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "fault-tests"
# A span every 2 ms: about 500 spans a second, enough for several batches per fault.
PACE_S = 0.002
# Generous on purpose: span start and end only queue the span, the exporter has its thread.
MAX_SPAN_LATENCY_S = 0.5
# Recovery waits: a reconnect of the pool backs off up to a few seconds after an outage.
RECOVERY_S = 30.0


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[DevCluster]:
    """A PostgreSQL of this module alone, which its tests stop, crash and restart."""
    cluster = DevCluster(fsync=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def fault_dsn(fault_cluster: DevCluster) -> Iterator[str]:
    """A fresh migrated database on the fault cluster; the server runs again afterwards."""
    fault_cluster.start()  # a no-op unless an earlier test failed while it was stopped
    name = f"f_{uuid.uuid4().hex[:12]}"
    dsn = fault_cluster.create_database(name)
    migrate(dsn)
    yield dsn
    fault_cluster.start()
    fault_cluster.drop_database(name)


class TimedExporter(PostgresSpanExporter):
    """The exporter under test, recording how long each export() took and what it raised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.durations: list[float] = []
        self.raised: list[BaseException] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        started = time.monotonic()
        try:
            return super().export(spans)
        except BaseException as exc:
            self.raised.append(exc)
            raise
        finally:
            self.durations.append(time.monotonic() - started)


class App:
    """A traced application: a thread making one span per iteration until ``stop()``."""

    def __init__(
        self,
        exporter: TimedExporter,
        *,
        payload_chars: int = 0,
        processor_class: type[BatchSpanProcessor] = BatchSpanProcessor,
    ) -> None:
        self.exporter = exporter
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
        # A queue large enough never to drop: the drops under test are the exporter's.
        processor = processor_class(exporter, schedule_delay_millis=50, max_queue_size=1_000_000)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("tests.test_faults")
        self._payload = "p" * payload_chars
        self.ended_at: list[float] = []  # index: seq
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-test-app", daemon=True)

    @property
    def produced(self) -> int:
        return len(self.ended_at)

    def start(self) -> None:
        self._thread.start()

    def run_for(self, seconds: float) -> None:
        """Let the app make spans for ``seconds`` more."""
        assert self._thread.is_alive(), self.errors
        time.sleep(seconds)

    def stop(self) -> None:
        """Stop making spans, flush the processor and wait until the spool is replayed."""
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.provider.force_flush(timeout_millis=int(RECOVERY_S * 1000))
        replayer = self.exporter.replayer
        assert replayer is not None
        assert replayer.wait_idle(RECOVERY_S)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.provider.shutdown()

    def _run(self) -> None:
        seq = 0
        attributes: dict[str, Any] = {"payload": self._payload} if self._payload else {}
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                with self._tracer.start_as_current_span(
                    "app.work", attributes={**attributes, "seq": seq}
                ):
                    pass
                ended = time.monotonic()
                self.latencies.append(ended - started)
                self.ended_at.append(ended)
                seq += 1
                time.sleep(PACE_S)
        except BaseException as exc:  # the exporter must never make the app fail
            self.errors.append(exc)

    def longest_pause(self) -> float:
        """The longest time between two spans ending: did the app keep going throughout?"""
        gaps = [after - before for before, after in pairwise(self.ended_at)]
        return max(gaps, default=0.0)

    def made_between(self, start: float, end: float) -> int:
        return sum(1 for ended in self.ended_at if start <= ended <= end)

    def latency_p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.99 * (len(ordered) - 1))]


AppFactory = Callable[..., App]


@pytest.fixture(
    params=[BatchSpanProcessor, CountingBatchSpanProcessor], ids=["direct", "sender-thread"]
)
def processor_class(request: pytest.FixtureRequest) -> type[BatchSpanProcessor]:
    """Writes from the export thread (the SDK's processor) or from the sender thread (ours)."""
    processor: type[BatchSpanProcessor] = request.param
    return processor


@pytest.fixture
def make_app(tmp_path: Path, processor_class: type[BatchSpanProcessor]) -> Iterator[AppFactory]:
    """Builds apps around a TimedExporter with its own spool folder; shuts them all down."""
    made: list[App] = []

    def make(dsn: str, *, payload_chars: int = 0, **exporter_options: Any) -> App:
        options: dict[str, Any] = {"timeout": 2, "spool_dir": str(tmp_path / "spool")}
        options.update(exporter_options)
        exporter = TimedExporter(dsn, enabled=True, **options)
        app = App(exporter, payload_chars=payload_chars, processor_class=processor_class)
        made.append(app)
        return app

    yield make
    for app in made:
        app.shutdown()


def stored(dsn: str) -> tuple[set[int], int, int, int]:
    """The ``seq`` values in the table, its row count, distinct ids and distinct seqs."""
    with psycopg.connect(dsn) as conn:
        seqs = {
            int(value)
            for (value,) in conn.execute("SELECT (metadata->>'seq')::int FROM trace_spans")
        }
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id)),"
            " count(DISTINCT metadata->>'seq') FROM trace_spans"
        ).fetchone()
    assert row is not None
    return seqs, int(row[0]), int(row[1]), int(row[2])


def wait_for_rows(dsn: str, expected: int, timeout_s: float = RECOVERY_S) -> None:
    """Until the table holds ``expected`` rows; fails the test if it does not in time."""
    wait_until(
        lambda: stored(dsn)[1] >= expected,
        timeout_s,
        interval=0.1,
        message=f"{expected} rows in trace_spans",
    )


def drops(stats: dict[str, int]) -> dict[str, int]:
    """The ``spans_dropped_<reason>`` counters that are not zero (some are always present)."""
    return {
        key: value for key, value in stats.items() if key.startswith("spans_dropped_") and value
    }


def assert_app_unharmed(app: App) -> None:
    """The app raised nothing, export() raised nothing, and spans kept coming throughout."""
    assert [] == app.errors
    assert [] == app.exporter.raised
    assert app.longest_pause() < MAX_SPAN_LATENCY_S, app.longest_pause()
    assert max(app.latencies) < MAX_SPAN_LATENCY_S, max(app.latencies)


def assert_every_span_stored_once(app: App, dsn: str) -> None:
    """Every seq made is in the table exactly once, and nothing was dropped."""
    wait_for_rows(dsn, app.produced)
    seqs, rows, distinct_ids, distinct_seqs = stored(dsn)
    assert set(range(app.produced)) == seqs
    assert rows == distinct_ids == distinct_seqs == app.produced
    assert {} == drops(app.exporter.stats())


def report(label: str, app: App) -> None:
    """One line in the test output (pytest -rP) with what the fault cost the app."""
    durations = app.exporter.durations
    print(
        f"{label}: {app.produced} spans, span latency p99 {app.latency_p99() * 1e3:.2f} ms"
        f" max {max(app.latencies) * 1e3:.2f} ms, {len(durations)} exports"
        f" (longest {max(durations, default=0.0):.2f} s), stats {app.exporter.stats()}"
    )


def test_spans_made_before_the_database_is_up_are_spooled_then_all_stored(
    fault_cluster: DevCluster, fault_dsn: str, make_app: AppFactory
) -> None:
    """With the server down at app start, spans go to the spool and all arrive once it starts."""
    fault_cluster.stop()
    app = make_app(fault_dsn)
    app.start()
    app.run_for(2.0)
    spooled_while_down = app.exporter.stats()["spans_spooled"]
    fault_cluster.start()
    app.run_for(0.5)
    app.stop()
    report("down at start", app)

    assert_app_unharmed(app)
    assert_every_span_stored_once(app, fault_dsn)
    stats = app.exporter.stats()
    assert spooled_while_down > 0
    assert stats["spans_replayed"] > 0
    assert 0 == stats["spool_rows"]


def test_a_server_crash_mid_run_loses_no_span(
    fault_cluster: DevCluster, fault_dsn: str, make_app: AppFactory
) -> None:
    """An immediate shutdown mid-run, two seconds down, a restart: every span is stored once."""
    app = make_app(fault_dsn)
    app.start()
    app.run_for(1.0)
    fault_cluster.stop(mode="immediate")
    crashed_at = time.monotonic()
    app.run_for(2.0)
    fault_cluster.restart()
    restarted_at = time.monotonic()
    app.run_for(1.0)
    app.stop()
    report("crash", app)

    assert_app_unharmed(app)
    assert app.made_between(crashed_at, restarted_at) > 0
    assert_every_span_stored_once(app, fault_dsn)
    assert app.exporter.stats()["spans_spooled"] > 0


def test_terminated_sessions_lose_no_span(fault_dsn: str, make_app: AppFactory) -> None:
    """pg_terminate_backend() of the exporter's sessions, five times mid-run: all spans arrive."""
    app = make_app(fault_dsn)
    app.start()
    app.run_for(0.5)
    terminated = 0
    with psycopg.connect(fault_dsn, autocommit=True) as admin:
        for _ in range(5):
            row = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchone()
            assert row is not None
            terminated += int(row[0])
            app.run_for(0.4)
    app.run_for(0.5)
    app.stop()
    report("terminated", app)

    assert terminated > 0
    assert_app_unharmed(app)
    assert_every_span_stored_once(app, fault_dsn)


def test_a_locked_table_times_exports_out_without_slowing_the_app(
    fault_dsn: str, make_app: AppFactory
) -> None:
    """A table locked for three seconds makes exports time out; all spans arrive after it."""
    app = make_app(fault_dsn, timeout=1)
    app.start()
    app.run_for(0.5)
    with psycopg.connect(fault_dsn) as locker:
        locker.execute("LOCK TABLE trace_spans IN ACCESS EXCLUSIVE MODE")
        locked_at = time.monotonic()
        app.run_for(3.0)
        locker.commit()
    unlocked_at = time.monotonic()
    app.run_for(1.0)
    app.stop()
    report("locked table", app)

    assert_app_unharmed(app)
    assert app.made_between(locked_at, unlocked_at) > 0
    assert_every_span_stored_once(app, fault_dsn)
    stats = app.exporter.stats()
    assert stats.get("export_failures_WriteTimeout", 0) > 0
    assert stats["spans_spooled"] > 0


def test_a_stalled_network_bounds_every_export_and_loses_no_span(
    fault_cluster: DevCluster, fault_dsn: str, make_app: AppFactory
) -> None:
    """A network silent for four seconds: no export outlasts timeout + 3 s, all spans arrive."""
    timeout = 1.0
    with TcpProxy("127.0.0.1", fault_cluster.port) as proxy:
        app = make_app(make_conninfo(fault_dsn, port=proxy.port), timeout=timeout)
        app.start()
        app.run_for(0.5)
        proxy.stall()
        stalled_at = time.monotonic()
        app.run_for(4.0)
        proxy.resume()
        resumed_at = time.monotonic()
        app.run_for(1.0)
        app.stop()
        report("stalled network", app)

    assert_app_unharmed(app)
    assert app.made_between(stalled_at, resumed_at) > 0
    assert max(app.exporter.durations) < timeout + 3.0
    assert_every_span_stored_once(app, fault_dsn)
    assert app.exporter.stats()["export_failures"] > 0


def test_a_full_spool_drops_the_oldest_spans_and_counts_them(
    fault_cluster: DevCluster, fault_dsn: str, make_app: AppFactory
) -> None:
    """A 1 MB spool overflowing with 2 KB spans: stored + dropped == made, the oldest dropped."""
    fault_cluster.stop()
    app = make_app(fault_dsn, spool_max_mb=1, payload_chars=2048)
    app.start()
    app.run_for(3.0)
    fault_cluster.start()
    app.run_for(0.5)
    app.stop()
    report("spool full", app)

    assert_app_unharmed(app)
    stats = app.exporter.stats()
    dropped = stats["spans_dropped_spool_full"]
    assert dropped > 0
    assert {"spans_dropped_spool_full": dropped} == drops(stats)
    wait_for_rows(fault_dsn, app.produced - dropped)
    seqs, rows, distinct_ids, distinct_seqs = stored(fault_dsn)
    assert app.produced == rows + dropped
    assert rows == distinct_ids == distinct_seqs
    lost = set(range(app.produced)) - seqs
    assert dropped == len(lost)
    # Whole segments go, oldest first. The replayer may hold the oldest segment while the
    # database is still down (the next one goes instead) and store it once it is up: at most
    # one segment of kept spans (a quarter of the spool, 2 KB each) may be older than a lost one.
    newest_lost = max(lost)
    kept_older = sum(1 for seq in seqs if seq < newest_lost)
    assert kept_older <= 2**20 // 4 // 2048, sorted(lost)


SPOOLING_PROCESS = """\
import json, os, signal, sys, time
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from otel_pg_exporter import PostgresSpanExporter

dsn, spool_dir, mode, first, count = sys.argv[1:]
first, count = int(first), int(count)
exporter = PostgresSpanExporter(dsn, enabled=True, timeout=2, spool_dir=spool_dir)
provider = TracerProvider(resource=Resource.create({"service.name": "fault-tests"}))
if mode == "replay":
    provider.add_span_processor(SimpleSpanProcessor(exporter))
else:
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
tracer = provider.get_tracer("tests.test_faults")
for seq in range(first, first + count):
    with tracer.start_as_current_span("child.work", attributes={"seq": seq}):
        pass
provider.force_flush()
if mode == "replay":
    idle = exporter.replayer.wait_idle(30)
    print(json.dumps({"idle": idle, **exporter.stats()}), flush=True)
    provider.shutdown()
    sys.exit(0)
deadline = time.monotonic() + 30
while exporter.stats()["spans_spooled"] < count and time.monotonic() < deadline:
    time.sleep(0.05)
if mode == "sleep":
    exporter.replayer.stop()  # alive, its segments locked, but replaying nothing itself
print(json.dumps(exporter.stats()), flush=True)
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(600)
"""


def spooling_process(
    dsn: str, spool_dir: Path, mode: str, first: int, count: int
) -> subprocess.Popen[str]:
    """A fresh interpreter exporting spans ``first`` .. ``first + count - 1`` (see the script)."""
    return subprocess.Popen(
        [sys.executable, "-c", SPOOLING_PROCESS, dsn, str(spool_dir), mode, str(first), str(count)],
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def first_line(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON stats a process printed once its spans were spooled (or replayed)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.communicate(timeout=30)[1]
    result: dict[str, Any] = json.loads(line)
    return result


def replay_in_new_process(dsn: str, spool_dir: Path, seq: int) -> dict[str, Any]:
    """Export span ``seq`` from a new process, wait for its replayer to go idle: its stats."""
    with spooling_process(dsn, spool_dir, "replay", seq, 1) as process:
        stdout, stderr = process.communicate(timeout=60)
    assert 0 == process.returncode, stderr
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_spans_spooled_by_a_killed_process_are_replayed_by_the_next(
    fault_cluster: DevCluster, fault_dsn: str, tmp_path: Path
) -> None:
    """A process SIGKILLed with N spans spooled: the next one stores all N + 1, once each."""
    count = 300
    spool_dir = tmp_path / "spool"
    fault_cluster.stop()
    with spooling_process(fault_dsn, spool_dir, "kill", 0, count) as first:
        stats = first_line(first)
        first.communicate(timeout=30)
    assert -signal.SIGKILL == first.returncode
    assert count == stats["spans_spooled"]
    fault_cluster.start()

    second = replay_in_new_process(fault_dsn, spool_dir, count)

    assert second["idle"] is True
    assert count == second["spans_replayed"]
    seqs, rows, distinct_ids, distinct_seqs = stored(fault_dsn)
    assert set(range(count + 1)) == seqs
    assert count + 1 == rows == distinct_ids == distinct_seqs


def test_a_live_process_spool_is_left_to_it_until_it_dies(
    fault_cluster: DevCluster, fault_dsn: str, tmp_path: Path
) -> None:
    """A second process does not replay a live process's spool; a third does once it is killed."""
    count = 200
    spool_dir = tmp_path / "spool"
    fault_cluster.stop()
    with spooling_process(fault_dsn, spool_dir, "sleep", 0, count) as sleeper:
        try:
            assert count == first_line(sleeper)["spans_spooled"]
            fault_cluster.start()

            second = replay_in_new_process(fault_dsn, spool_dir, count)

            assert 0 == second["spans_replayed"]
            assert {count} == stored(fault_dsn)[0]
        finally:
            sleeper.kill()
            sleeper.communicate(timeout=30)

    third = replay_in_new_process(fault_dsn, spool_dir, count + 1)

    assert count == third["spans_replayed"]
    seqs, rows, distinct_ids, distinct_seqs = stored(fault_dsn)
    assert set(range(count + 2)) == seqs
    assert count + 2 == rows == distinct_ids == distinct_seqs


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_down_database_gets_a_handful_of_connection_attempts_not_one_per_export(
    make_app: AppFactory,
) -> None:
    """Three seconds of exports against a refusing server open only a few connections."""
    with TcpProxy("127.0.0.1", closed_port()) as proxy:
        app = make_app(f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres", timeout=1)
        app.start()
        app.run_for(3.0)
        attempts = proxy.attempts
        exports = app.exporter.stats()["export_calls"]
        app.shutdown()
    print(f"down database: {attempts} connection attempts during {exports} exports")

    assert [] == app.errors
    assert exports > 20
    assert 0 < attempts <= 15, attempts
    assert 0 == proxy.connections_accepted
