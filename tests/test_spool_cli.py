"""`otel-pg spool` and `otel-pg spool replay` over real spools left by PostgresSpanExporter."""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest
from spans import SpanFactory
from support import query
from tcp_proxy import TcpProxy

from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter.cli import main
from otel_pg_exporter.export.exporter import spool_folder_key

SECRET = "Hunter2-Secret"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _spool(dsn: str, spool_dir: Path, count: int, *, shut_down: bool = True) -> Any:
    """Export ``count`` spans to ``dsn``, which cannot take them, so that they are spooled."""
    exporter = PostgresSpanExporter(dsn, enabled=True, timeout=1, spool_dir=str(spool_dir))
    factory = SpanFactory()
    exporter.export([factory.span(f"op{i}") for i in range(count)])
    assert count == exporter.stats()["spans_spooled"]
    if shut_down:
        exporter.shutdown()
    return exporter


def _listing(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert 0 == main(["spool", "--json"])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The spool folder both the exporter and the command line use."""
    monkeypatch.setenv("OTEL_EXPORTER_POSTGRES_SPOOL_DIR", str(tmp_path))
    return tmp_path


def test_spool_lists_a_folder_left_by_a_shut_down_exporter(
    spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spool whose exporter shut down lists its target key and rows, with no live owner."""
    dsn = f"postgresql://otel:{SECRET}@127.0.0.1:{_closed_port()}/traces"
    _spool(dsn, spool_dir, 5)

    document = _listing(capsys)

    (folder,) = document["folders"]
    assert str(spool_dir) == document["spool_dir"]
    assert "OTEL_EXPORTER_POSTGRES_SPOOL_DIR" == document["source"]
    assert (spool_folder_key(dsn, None, "trace_spans"), 5, 1, False) == (
        folder["key"],
        folder["rows"],
        folder["segments"],
        folder["owner_alive"],
    )
    assert folder["bytes"] > 0
    assert folder["oldest_age_s"] >= 0

    assert 0 == main(["spool"])
    out = capsys.readouterr().out
    assert "not alive" in out
    assert SECRET not in out


def test_spool_shows_a_live_owner(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While the exporter that spooled lives, its folder's owner is alive."""
    exporter = _spool(
        f"postgresql://otel@127.0.0.1:{_closed_port()}/traces", spool_dir, 2, shut_down=False
    )
    try:
        (folder,) = _listing(capsys)["folders"]
    finally:
        exporter.shutdown()

    assert (2, True) == (folder["rows"], folder["owner_alive"])


def test_replay_moves_orphaned_rows_into_the_table(
    proxied: tuple[TcpProxy, str], spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spans spooled while the network stalled land in the table, and the folder empties."""
    proxy, dsn = proxied
    proxy.stall()
    _spool(dsn, spool_dir, 6)
    proxy.resume()

    assert 0 == main(["spool", "replay", "--dsn", dsn])

    out = capsys.readouterr().out
    assert out.startswith("Replayed 6 rows (0 of them already stored) into 'trace_spans'")
    assert out.rstrip().endswith("; 0 rows left")
    assert 6 == query(dsn, "SELECT count(*) AS n FROM trace_spans")[0]["n"]
    (folder,) = _listing(capsys)["folders"]
    assert (0, 0) == (folder["rows"], folder["segments"])


def test_replay_takes_only_the_folder_of_its_target(
    migrated_dsn: str, spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another target's spool is left alone: replay says so and stores nothing."""
    _spool(f"postgresql://otel@127.0.0.1:{_closed_port()}/traces", spool_dir, 3)

    assert 0 == main(["spool", "replay", "--dsn", migrated_dsn])

    out = capsys.readouterr().out
    assert out.startswith("Nothing to replay for 'trace_spans'")
    assert "1 other spool folders hold 3 rows for other targets" in out
    assert 0 == query(migrated_dsn, "SELECT count(*) AS n FROM trace_spans")[0]["n"]


def test_replay_with_the_database_down_exits_1(
    spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the target down replay exits 1, says why without the password, and keeps the rows."""
    dsn = f"postgresql://otel:{SECRET}@127.0.0.1:{_closed_port()}/traces"
    _spool(dsn, spool_dir, 4)

    assert 1 == main(["spool", "replay", "--dsn", dsn])

    captured = capsys.readouterr()
    assert captured.err.startswith(
        "otel-pg spool replay: error: cannot connect to 'postgresql://otel:***@127.0.0.1:"
    )
    assert captured.err.rstrip().endswith("nothing was replayed")
    assert SECRET not in captured.out + captured.err
    assert "Traceback" not in captured.err
    (folder,) = _listing(capsys)["folders"]
    assert 4 == folder["rows"]


def test_replay_of_a_dropped_table_stops_and_keeps_the_spool(
    proxied: tuple[TcpProxy, str], spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the table cannot take the rows, replay exits 1 and every spooled row stays."""
    proxy, dsn = proxied
    proxy.stall()
    _spool(dsn, spool_dir, 2)
    proxy.resume()
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE trace_spans RENAME TO elsewhere")

    assert 1 == main(["spool", "replay", "--dsn", dsn])

    captured = capsys.readouterr()
    assert "; 2 rows left" in captured.out
    assert "the rest stays spooled" in captured.err
