"""flush_after(): a handler's spans are stored or spooled before it returns, within a budget,
with the database up, slow (a stalled network) and down; a process that ends with os._exit
right after leaves them in the spool for the next one."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support import clean_environ, wait_until
from tcp_proxy import TcpProxy

from otel_pg_exporter import (
    CountingBatchSpanProcessor,
    Handle,
    PostgresSpanExporter,
    SettingsError,
    _configure,
    flush_after,
)

ROOT = Path(__file__).resolve().parent.parent
SLACK_S = 0.5  # generous: the bound is budget + a small constant, asserted loosely
BUDGET_MS = 100


class Boom(Exception):
    """The handler's own exception."""


Install = Callable[..., Handle]


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Install]:
    """Make a real pipeline (exporter, counting processor, private provider) the handle
    configure() would have returned; shut down after the test."""
    made: list[Handle] = []

    def make(dsn: str, *, spool: bool = True, timeout: float = 2.0) -> Handle:
        exporter = PostgresSpanExporter(
            dsn,
            enabled=True,
            timeout=timeout,
            spool_dir=str(tmp_path / "spool") if spool else "",
        )
        # A long delay: only the flush moves spans, as in a handler that returns at once.
        processor = CountingBatchSpanProcessor(exporter, schedule_delay_millis=60_000)
        provider = TracerProvider(resource=Resource.create({"service.name": "flush-after"}))
        provider.add_span_processor(processor)
        handle = Handle(
            enabled=True,
            exporter=exporter,
            processor=processor,
            provider=provider,
            owns_provider=True,
        )
        monkeypatch.setattr(_configure, "_handle", handle)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        handle.shutdown(timeout=5.0)


def make_spans(handle: Handle, count: int) -> None:
    assert handle.provider is not None
    tracer = handle.provider.get_tracer("tests.test_flush_after")
    for index in range(count):
        with tracer.start_as_current_span("work", attributes={"index": index}):
            pass


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT span_id) FROM trace_spans").fetchone()
    assert row is not None
    assert row[0] == row[1], "a span was stored twice"
    return int(row[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def stats(handle: Handle) -> dict[str, int]:
    assert handle.exporter is not None
    return handle.exporter.stats()


def test_without_configure_it_passes_everything_through() -> None:
    @flush_after
    def bare(value: int) -> int:
        return value + 1

    @flush_after(budget_ms=10)
    def failing() -> None:
        raise Boom("kept")

    assert 2 == bare(1)
    with pytest.raises(Boom, match="kept"):
        failing()
    with flush_after():
        pass


@pytest.mark.parametrize("budget", [-1, float("nan"), "100", True])
def test_a_bad_budget_is_refused(budget: object) -> None:
    with pytest.raises(SettingsError, match="budget_ms"):
        flush_after(budget_ms=budget)  # type: ignore[call-overload]


def test_database_up_spans_are_stored_before_the_return(
    migrated_dsn: str, install: Install
) -> None:
    handle = install(migrated_dsn)
    with flush_after(budget_ms=5000):  # the first call also opens the pool
        make_spans(handle, 1)

    @flush_after(budget_ms=BUDGET_MS)
    def handler(count: int) -> str:
        make_spans(handle, count)
        return "result"

    took = []
    for _ in range(5):
        started = time.monotonic()
        assert "result" == handler(20)
        took.append(time.monotonic() - started)
    assert 101 == count_rows(migrated_dsn)
    assert max(took) < BUDGET_MS / 1000 + SLACK_S, took
    assert 0 == stats(handle)["spans_spooled"]


def test_an_exception_passes_through_and_its_spans_are_stored(
    migrated_dsn: str, install: Install
) -> None:
    handle = install(migrated_dsn)

    @flush_after(budget_ms=5000)
    def handler() -> None:
        make_spans(handle, 7)
        raise Boom("from the handler")

    with pytest.raises(Boom, match="from the handler") as raised:
        handler()
    assert raised.value.__traceback__ is not None
    assert 7 == count_rows(migrated_dsn)


def test_async_decorator_and_context_manager(migrated_dsn: str, install: Install) -> None:
    handle = install(migrated_dsn)

    @flush_after(budget_ms=5000)
    async def handler(count: int) -> int:
        await asyncio.sleep(0)
        make_spans(handle, count)
        return count

    @flush_after(budget_ms=5000)
    async def failing() -> None:
        make_spans(handle, 2)
        raise Boom("async")

    async def main() -> int:
        async with flush_after(budget_ms=5000):
            make_spans(handle, 4)
        stored_in_block = count_rows(migrated_dsn)
        with pytest.raises(Boom, match="async"):
            await failing()
        return stored_in_block + await handler(3)

    assert 4 + 3 == asyncio.run(main())
    assert 4 + 2 + 3 == count_rows(migrated_dsn)


def test_database_slow_the_return_keeps_the_budget_and_spans_are_spooled_then_replayed(
    migrated_dsn: str, proxied: tuple[TcpProxy, str], install: Install
) -> None:
    proxy, dsn = proxied
    handle = install(dsn)
    with flush_after(budget_ms=5000):
        make_spans(handle, 1)
    assert 1 == count_rows(migrated_dsn)

    @flush_after(budget_ms=BUDGET_MS)
    def handler() -> None:
        make_spans(handle, 10)

    proxy.stall()
    took = [timed(handler) for _ in range(5)]
    async_took = timed(lambda: asyncio.run(flush_after(budget_ms=BUDGET_MS)(_async_spans)(handle)))
    assert max([*took, async_took]) < BUDGET_MS / 1000 + SLACK_S, (took, async_took)
    assert 60 == stats(handle)["spans_spooled"]  # each span once: none spooled twice
    assert not any(v for k, v in stats(handle).items() if k.startswith("spans_dropped_"))
    proxy.resume()
    wait_until(lambda: count_rows(migrated_dsn) == 61, 30, message="the spool replayed")


async def _async_spans(handle: Handle) -> None:
    make_spans(handle, 10)


def test_database_down_the_return_keeps_the_budget_and_spans_are_spooled_then_replayed(
    migrated_dsn: str, install: Install
) -> None:
    params = conninfo_to_dict(migrated_dsn)
    port = free_port()  # nothing listens there: connections are refused
    dsn = make_conninfo(migrated_dsn, host="127.0.0.1", port=port)
    handle = install(dsn)

    @flush_after(budget_ms=BUDGET_MS)
    def handler() -> int:
        make_spans(handle, 10)
        return 42

    took = []
    for _ in range(5):
        started = time.monotonic()
        assert 42 == handler()
        took.append(time.monotonic() - started)
    assert max(took) < BUDGET_MS / 1000 + SLACK_S, took
    assert 50 == stats(handle)["spans_spooled"]
    # The database comes up at the same address: the replay stores every span once.
    with TcpProxy(str(params.get("host", "127.0.0.1")), int(str(params["port"])), port=port):
        wait_until(lambda: count_rows(migrated_dsn) == 50, 30, message="the spool replayed")


def test_database_down_without_spool_counts_the_spans_dropped(install: Install) -> None:
    dsn = f"postgresql://u@127.0.0.1:{free_port()}/db"
    handle = install(dsn, spool=False)

    @flush_after(budget_ms=BUDGET_MS)
    def handler() -> None:
        make_spans(handle, 10)

    assert timed(handler) < BUDGET_MS / 1000 + SLACK_S
    counters = stats(handle)
    assert 10 == counters["spans_dropped_no_spool"]


SCRIPT = """\
import os, sys
from opentelemetry import trace
import otel_pg_exporter

otel_pg_exporter.configure(dsn=sys.argv[1], spool_dir=sys.argv[2], timeout=2.0,
                           schedule_delay_millis=60_000)
tracer = trace.get_tracer("exit-script")
with otel_pg_exporter.flush_after(budget_ms=100):
    for index in range(25):
        with tracer.start_as_current_span("job", attributes={"index": index}):
            pass
os._exit(0)  # no atexit, no shutdown: only what flush_after spooled survives
"""


@pytest.mark.parametrize("database", ["down", "slow"])
def test_os_exit_right_after_flush_after_leaves_the_spans_in_the_spool(
    database: str, migrated_dsn: str, tmp_path: Path
) -> None:
    params = conninfo_to_dict(migrated_dsn)
    target = (str(params.get("host", "127.0.0.1")), int(str(params["port"])))
    port = free_port()
    dsn = make_conninfo(migrated_dsn, host="127.0.0.1", port=port)
    spool_dir = str(tmp_path / "spool")

    def run_script() -> float:
        started = time.monotonic()
        completed = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SCRIPT), dsn, spool_dir],
            env=clean_environ(ENABLE_DB_TRACING="true"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert 0 == completed.returncode, completed.stderr
        return time.monotonic() - started

    if database == "slow":
        with TcpProxy(*target, port=port) as proxy:
            proxy.stall()
            run_script()
    else:
        run_script()
    assert 0 == count_rows(migrated_dsn)

    # A fresh process on the same spool, with the database up, stores all 25.
    with TcpProxy(*target, port=port):
        successor = PostgresSpanExporter(dsn, enabled=True, spool_dir=spool_dir)
        try:
            successor._open_spool_lazily()
            replayer = successor.replayer
            assert replayer is not None
            wait_until(lambda: count_rows(migrated_dsn) == 25, 30, message="the spool replayed")
        finally:
            successor.shutdown()
