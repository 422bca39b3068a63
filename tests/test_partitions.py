"""The partitioned layout (``otel-pg migrate --partitioned``) against a real PostgreSQL: the table
contract of that layout, ``otel_pg_maintain`` and ``otel-pg maintain``, the default partition,
what retention's DETACH costs a concurrent writer, and the hand-over to pg_partman.

The layout-independent behaviour (exporter, writer, query functions, commands) is tested by the
other modules on both layouts (``TEST_TABLE_LAYOUT=partitioned``, see layout.py); this module
holds what differs, and runs on the partitioned layout whatever that variable says.
"""

# Asserts read `expected == actual` (STYLE.md), which SIM300 would flip.

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from planted import BASE, TRACE_A, plant
from psycopg import sql
from test_migrations import CONTRACT_COLUMNS, HOSTILE_NAMES

from otel_pg_exporter.cli import main
from otel_pg_exporter.export.writer import SpanWriter
from otel_pg_exporter.schema.migrations import (
    MigrationError,
    applied_versions,
    available_migrations,
    migrate,
    rollback,
    upgrade,
)
from otel_pg_exporter.schema.partitions import maintain
from otel_pg_exporter.schema.table import (
    FUNCTIONS,
    INDEXES,
    PARTITIONED_PRIMARY_KEY,
    Row,
    default_partition_name,
    index_names,
    partition_name,
)
from otel_pg_exporter.testing.devdb import PgServer, find_bin_dir

README = Path(__file__).resolve().parents[1] / "README.md"
INSERT = """
    INSERT INTO {} (trace_id, span_id, service, operation, kind, started_at, completed_at,
                    duration_ms, status, metadata, created_at)
    VALUES (%s, %s, 'svc', 'op', 'internal', %s, %s + interval '5 ms', 5, 'ok', %s, %s)
"""


def _today() -> date:
    return datetime.now(timezone.utc).date()


def _all_versions() -> list[int]:
    return [migration.version for migration in available_migrations()]


def _qualified(table: str, schema: str | None) -> sql.Identifier:
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def _partitions(dsn: str, table: str = "trace_spans", schema: str = "public") -> dict[str, str]:
    """Every partition of ``schema.table`` by name, with its bound as PostgreSQL prints it
    (in UTC)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET timezone = 'UTC'")
        rows = conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass"
            " AND c.relkind = 'r'",
            (_qualified(table, schema).as_string(conn),),
        ).fetchall()
    return {row[0]: row[1] for row in rows}


def _day_bound(day: date) -> str:
    return f"FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"


def _window(days_behind: int = 1, days_ahead: int = 3) -> dict[str, str]:
    """The day partitions of ``trace_spans`` that maintain keeps, with their bounds."""
    today = _today()
    days = [today + timedelta(days=n) for n in range(-days_behind, days_ahead + 1)]
    return {partition_name("trace_spans", day): _day_bound(day) for day in days}


def _where(dsn: str, table: str = "trace_spans") -> dict[str, str]:
    """Each span id with the partition holding it."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT span_id, tableoid::regclass::text FROM {}").format(
                sql.Identifier(table)
            )
        ).fetchall()
    return {row[0]: row[1] for row in rows}


def _insert(
    dsn: str, spans: dict[str, datetime], table: str = "trace_spans", schema: str | None = None
) -> None:
    """One span per (span id, start), created when it started."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            sql.SQL(INSERT).format(_qualified(table, schema)),
            [
                ("a" * 32, span_id, start, start, f'{{"n": "{span_id}"}}', start)
                for span_id, start in spans.items()
            ],
        )


@pytest.fixture
def partitioned_dsn(fresh_dsn: str) -> str:
    """A fresh database whose trace_spans was made by ``migrate --partitioned``."""
    migrate(fresh_dsn, partitioned=True)
    return fresh_dsn


# --- the table contract of the partitioned layout ---------------------------------------------


def test_migrate_partitioned_creates_the_contract_table_partitioned_by_day(
    fresh_dsn: str,
) -> None:
    """The same columns, comments and index names as the plain layout; partitioned by range on
    started_at, keyed (trace_id, span_id, started_at), with a default partition and the day
    partitions from yesterday to three days ahead (UTC)."""
    assert _all_versions() == migrate(fresh_dsn, partitioned=True)

    with psycopg.connect(fresh_dsn) as conn:
        kind, key = conn.execute(
            "SELECT c.relkind::text, pg_get_partkeydef(c.oid) FROM pg_class c"
            " WHERE c.oid = 'trace_spans'::regclass"
        ).fetchone() or (None, None)
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_name = 'trace_spans'"
            " ORDER BY ordinal_position"
        ).fetchall()
        primary_key = conn.execute(
            "SELECT a.attname FROM pg_constraint k"
            " CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, position)"
            " JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum"
            " WHERE k.conrelid = 'trace_spans'::regclass AND k.contype = 'p'"
            " ORDER BY u.position"
        ).fetchall()
        indexes = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'trace_spans'::regclass"
        ).fetchall()
        uncommented = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'trace_spans'::regclass"
            " AND attnum > 0 AND NOT attisdropped AND col_description(attrelid, attnum) IS NULL"
        ).fetchall()
        comment = conn.execute(
            "SELECT obj_description('trace_spans'::regclass, 'pg_class')"
        ).fetchone()

    assert ("p", "RANGE (started_at)") == (kind, key)
    assert CONTRACT_COLUMNS == [tuple(row) for row in columns]
    assert list(PARTITIONED_PRIMARY_KEY) == [row[0] for row in primary_key]
    assert ["trace_id", "span_id", "started_at"] == list(PARTITIONED_PRIMARY_KEY)
    assert {"trace_spans_pkey", *index_names("trace_spans").values()} == {row[0] for row in indexes}
    assert [] == uncommented
    assert comment is not None and "OpenTelemetry" in comment[0]
    assert {**_window(), "trace_spans_default": "DEFAULT"} == _partitions(fresh_dsn)
    assert _all_versions() == applied_versions(fresh_dsn)


def test_every_partition_has_every_index_of_the_parent(partitioned_dsn: str) -> None:
    """Indexes made on the parent exist on each partition (the default one and those made
    later by maintain), attached to the parent's."""
    _insert(partitioned_dsn, {"0000000000000001": datetime(2001, 2, 3, tzinfo=timezone.utc)})
    maintain(partitioned_dsn)
    with psycopg.connect(partitioned_dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname, count(ci.inhparent) FROM pg_inherits p"
            " JOIN pg_class c ON c.oid = p.inhrelid"
            " JOIN pg_index i ON i.indrelid = c.oid"
            " LEFT JOIN pg_inherits ci ON ci.inhrelid = i.indexrelid"
            " WHERE p.inhparent = 'trace_spans'::regclass GROUP BY c.relname"
        ).fetchall()
    partitions: dict[str, int] = {str(row[0]): int(row[1]) for row in rows}

    assert "trace_spans_p20010203" in partitions
    assert {name: 1 + len(INDEXES) for name in partitions} == partitions


def test_the_query_functions_answer_the_same_on_both_layouts(
    pg_cluster: PgServer, fresh_dsn: str
) -> None:
    """The planted traces give the same rows from every query function on a plain and on a
    partitioned table."""
    plain = fresh_dsn
    name = f"t_{uuid.uuid4().hex[:12]}"
    partitioned = pg_cluster.create_database(name)
    try:
        migrate(plain)
        migrate(partitioned, partitioned=True)
        plant(plain)
        plant(partitioned)
        since = BASE - timedelta(minutes=1)
        calls = [
            ("SELECT * FROM trace_tree(%s)", (TRACE_A,)),
            ("SELECT * FROM trace_gaps(%s, 0)", (TRACE_A,)),
            ("SELECT * FROM critical_path(%s)", (TRACE_A,)),
            ("SELECT * FROM orphan_spans(%s) ORDER BY 1, 2", (since,)),
            ("SELECT * FROM error_traces(%s) ORDER BY 1", (since,)),
            ("SELECT * FROM slow_operations(%s) ORDER BY 1, 2", (since,)),
            ("SELECT * FROM execution_trace(42)", ()),
            ("SELECT * FROM service_map(%s) ORDER BY 1, 2", (since,)),
        ]
        assert len(FUNCTIONS) == len(calls)
        answers = []
        for dsn in (plain, partitioned):
            with psycopg.connect(dsn) as conn:
                answers.append([conn.execute(query, args).fetchall() for query, args in calls])
        assert all(answers[0])
        assert answers[0] == answers[1]
        assert {"trace_spans_default"} < set(_partitions(partitioned))
    finally:
        pg_cluster.drop_database(name)


def test_a_retried_span_conflicts_with_itself(partitioned_dsn: str) -> None:
    """The key holds started_at, and a retried span carries the same one: the second insert
    of a batch is skipped, in a day partition as in the default one."""
    now = datetime.now(timezone.utc)
    rows = [_row(1, now), _row(2, datetime(1999, 12, 31, 23, 59, tzinfo=timezone.utc))]
    with closing(SpanWriter(dsn=partitioned_dsn, table="trace_spans")) as writer:
        first = writer.write(rows, time.monotonic() + 10)
        second = writer.write(rows, time.monotonic() + 10)

    assert (2, 0) == (first.inserted, first.duplicates)
    assert (0, 2) == (second.inserted, second.duplicates)


# --- maintain: partitions ahead, the default partition emptied ---------------------------------


def test_spans_outside_every_partition_land_in_default_and_maintain_moves_them(
    partitioned_dsn: str,
) -> None:
    """A span far in the past or future lands in the default partition; maintain makes the
    partition of its day, moves it there unchanged, and says so; a second run does nothing."""
    spans = {
        "000000000000000a": datetime(2001, 2, 3, 4, 5, 6, 789000, tzinfo=timezone.utc),
        "000000000000000b": datetime(2001, 2, 3, 23, 59, 59, tzinfo=timezone.utc),
        "000000000000000c": datetime.now(timezone.utc) + timedelta(days=40),
        "000000000000000d": datetime.now(timezone.utc),
    }
    _insert(partitioned_dsn, spans)
    with psycopg.connect(partitioned_dsn) as conn:
        before = conn.execute("SELECT * FROM trace_spans ORDER BY span_id").fetchall()
    today = partition_name("trace_spans", _today())
    assert {
        "000000000000000a": "trace_spans_default",
        "000000000000000b": "trace_spans_default",
        "000000000000000c": "trace_spans_default",
        "000000000000000d": today,
    } == _where(partitioned_dsn)

    result = maintain(partitioned_dsn)

    future = (datetime.now(timezone.utc) + timedelta(days=40)).date()
    assert [
        ("trace_spans_p20010203", date(2001, 2, 3), 2),
        (partition_name("trace_spans", future), future, 1),
    ] == [(p.name, p.day, p.rows_moved) for p in result.created]
    assert 3 == result.rows_moved
    assert {
        "000000000000000a": "trace_spans_p20010203",
        "000000000000000b": "trace_spans_p20010203",
        "000000000000000c": partition_name("trace_spans", future),
        "000000000000000d": today,
    } == _where(partitioned_dsn)
    with psycopg.connect(partitioned_dsn) as conn:
        after = conn.execute("SELECT * FROM trace_spans ORDER BY span_id").fetchall()
    assert before == after  # every column, created_at included
    assert _day_bound(date(2001, 2, 3)) == _partitions(partitioned_dsn)["trace_spans_p20010203"]
    assert [] == maintain(partitioned_dsn).created


def test_maintain_makes_partitions_ahead_and_behind_as_asked(partitioned_dsn: str) -> None:
    """days_ahead and days_behind widen the window; partitions already there are kept."""
    result = maintain(partitioned_dsn, days_ahead=6, days_behind=3)

    today = _today()
    assert [today - timedelta(days=3), today - timedelta(days=2)] + [
        today + timedelta(days=n) for n in (4, 5, 6)
    ] == [partition.day for partition in result.created]
    assert {**_window(3, 6), "trace_spans_default": "DEFAULT"} == _partitions(partitioned_dsn)


def test_maintain_recreates_a_dropped_default_and_day_partition(partitioned_dsn: str) -> None:
    """A default or day partition dropped by hand is made again."""
    today = partition_name("trace_spans", _today())
    with psycopg.connect(partitioned_dsn) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(today)))
        conn.execute("DROP TABLE trace_spans_default")

    result = maintain(partitioned_dsn)

    assert [today] == [partition.name for partition in result.created]
    assert {**_window(), "trace_spans_default": "DEFAULT"} == _partitions(partitioned_dsn)


def test_maintain_with_nothing_to_do_takes_no_lock_readers_hold(partitioned_dsn: str) -> None:
    """The usual hourly run (partitions there, default partition empty) passes a long read of
    the default partition; with spans to move, it waits at most its lock_timeout for that read
    and then fails, having changed nothing."""
    with psycopg.connect(partitioned_dsn) as reader:
        reader.execute("SELECT count(*) FROM trace_spans_default")  # its transaction stays open

        assert [] == maintain(partitioned_dsn, lock_timeout_ms=200).created

        _insert(partitioned_dsn, {"0000000000000001": datetime(2001, 2, 3, tzinfo=timezone.utc)})
        started = time.monotonic()
        with pytest.raises(MigrationError, match="lock was not had within 200 ms"):
            maintain(partitioned_dsn, lock_timeout_ms=200)
        waited = time.monotonic() - started
        reader.rollback()

    assert waited < 2
    assert {"0000000000000001": "trace_spans_default"} == _where(partitioned_dsn)
    assert 1 == maintain(partitioned_dsn).rows_moved


def test_maintain_of_a_plain_table_does_nothing(fresh_dsn: str) -> None:
    """On the plain layout maintain reports it and changes nothing."""
    migrate(fresh_dsn)

    result = maintain(fresh_dsn)

    assert (False, []) == (result.partitioned, result.created)
    with psycopg.connect(fresh_dsn) as conn:
        assert [] == conn.execute("SELECT * FROM otel_pg_maintain('trace_spans')").fetchall()


def test_maintain_refuses_a_missing_table_and_bad_days(fresh_dsn: str) -> None:
    """A table that does not exist, or a negative number of days, is an error."""
    with pytest.raises(MigrationError, match="otel-pg migrate"):
        maintain(fresh_dsn)
    with pytest.raises(ValueError, match="days_ahead"):
        maintain(fresh_dsn, days_ahead=-1)
    migrate(fresh_dsn, partitioned=True)
    with psycopg.connect(fresh_dsn) as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT * FROM otel_pg_maintain('trace_spans', -1)")


def test_concurrent_maintains_make_each_partition_once(partitioned_dsn: str) -> None:
    """Four maintains at once, with spans waiting in the default partition: every partition
    is made once, every span moved once."""
    _insert(
        partitioned_dsn,
        {f"{n:016x}": datetime(2001, 1, 1 + n, tzinfo=timezone.utc) for n in range(8)},
    )
    start_together = threading.Barrier(4)
    results: list[Any] = []

    def run() -> None:
        start_together.wait()
        results.append(maintain(partitioned_dsn, days_ahead=5))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    created = [partition.name for result in results for partition in result.created]
    assert len(created) == len(set(created))
    assert 8 + 2 == len(created)  # eight days of 2001, and today + 4, + 5
    assert 8 == sum(result.rows_moved for result in results)
    assert {f"{n:016x}": f"trace_spans_p200101{1 + n:02d}" for n in range(8)} == _where(
        partitioned_dsn
    )


def test_long_and_hostile_names_get_quoted_shortened_partitions(fresh_dsn: str) -> None:
    """A 63-byte table name gets day and default partitions shortened with a hash, exactly as
    schema/table.py names them; names carrying SQL are only names."""
    long_name = "s" * 61 + "é"
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE x (i int)")
    for name in [long_name, *HOSTILE_NAMES]:
        migrate(fresh_dsn, schema="obs", table=name, partitioned=True)
        _insert(
            fresh_dsn,
            {"0000000000000001": datetime(2001, 2, 3, tzinfo=timezone.utc)},
            table=name,
            schema="obs",
        )
        moved = maintain(fresh_dsn, schema="obs", table=name)

        partitions = _partitions(fresh_dsn, name, "obs")
        expected_days = {partition_name(name, day): bound for day, bound in _days_window()}
        assert {
            **expected_days,
            partition_name(name, date(2001, 2, 3)): _day_bound(date(2001, 2, 3)),
            default_partition_name(name): "DEFAULT",
        } == partitions
        assert all(len(partition.encode()) <= 63 for partition in partitions)
        assert 1 == moved.rows_moved
    assert default_partition_name(long_name) != long_name + "_default"
    assert default_partition_name(long_name).endswith("_default")
    with psycopg.connect(fresh_dsn) as conn:
        assert (True,) == conn.execute("SELECT to_regclass('x') IS NOT NULL").fetchone()


def _days_window(days_behind: int = 1, days_ahead: int = 3) -> list[tuple[date, str]]:
    today = _today()
    days = [today + timedelta(days=n) for n in range(-days_behind, days_ahead + 1)]
    return [(day, _day_bound(day)) for day in days]


# --- migrate: the layout is chosen once ------------------------------------------------------


def test_second_migrate_is_a_noop_and_keeps_the_layout(partitioned_dsn: str) -> None:
    """Running migrate again, with or without --partitioned, applies nothing, recreates
    nothing and leaves the partitions as they are."""
    before = _partitions(partitioned_dsn)

    assert ([], [], True) == tuple(vars(upgrade(partitioned_dsn, partitioned=True)).values())
    assert ([], [], True) == tuple(vars(upgrade(partitioned_dsn)).values())

    assert before == _partitions(partitioned_dsn)


def test_migrate_partitioned_refuses_an_existing_plain_table(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--partitioned on a plain table that exists fails, pointing at the conversion steps, and
    changes nothing; without the flag the table is upgraded as it is."""
    migrate(fresh_dsn)

    with pytest.raises(MigrationError, match=r"not partitioned.*Retention and partitions"):
        migrate(fresh_dsn, partitioned=True)
    assert 1 == main(["migrate", "--partitioned", "--dsn", fresh_dsn])

    err = capsys.readouterr().err
    assert err.startswith("otel-pg migrate: error: table 'trace_spans' already exists and is")
    assert "converting a plain table" in err
    assert {} == _partitions(fresh_dsn)
    assert [] == migrate(fresh_dsn)


def test_migrate_recreates_a_dropped_partitioned_table_with_its_partitions(
    partitioned_dsn: str,
) -> None:
    """A partitioned table dropped by hand comes back partitioned, with its partitions, when
    migrate is asked for that layout; a dropped parent index comes back on every partition."""
    with psycopg.connect(partitioned_dsn) as conn:
        conn.execute("DROP TABLE trace_spans CASCADE")

    assert ["trace_spans"] == upgrade(partitioned_dsn, partitioned=True).recreated
    assert {**_window(), "trace_spans_default": "DEFAULT"} == _partitions(partitioned_dsn)

    dropped = index_names("trace_spans")["created_at"]
    with psycopg.connect(partitioned_dsn) as conn:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(dropped)))
    assert [dropped] == upgrade(partitioned_dsn).recreated
    with psycopg.connect(partitioned_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", (dropped,)
        ).fetchone()
    assert (len(_partitions(partitioned_dsn)),) == row


def test_rollback_drops_the_partitions_and_the_shared_function(partitioned_dsn: str) -> None:
    """Rollback drops the table with every partition, and otel_pg_maintain once no spans table
    of the schema is left; migrate works again after it."""
    migrate(partitioned_dsn, table="other", partitioned=True)

    rollback(partitioned_dsn)

    with psycopg.connect(partitioned_dsn) as conn:
        gone = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'trace_spans%'"
        ).fetchall()
        left = conn.execute("SELECT to_regproc('otel_pg_maintain') IS NOT NULL").fetchone()
    assert [] == gone
    assert (True,) == left  # "other" still needs it

    rollback(partitioned_dsn, table="other")

    with psycopg.connect(partitioned_dsn) as conn:
        relations = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchall()
        routines = conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        ).fetchall()
    assert ([], []) == (relations, routines)
    assert _all_versions() == migrate(partitioned_dsn, partitioned=True)


# --- otel-pg maintain ------------------------------------------------------------------------


def test_otel_pg_migrate_partitioned_says_so(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`otel-pg migrate --partitioned` names the layout it created; a second run, with or
    without the flag, finds the table up to date."""
    assert 0 == main(["migrate", "--partitioned", "--dsn", fresh_dsn])
    first = capsys.readouterr().out
    assert 0 == main(["migrate", "--partitioned", "--dsn", fresh_dsn])
    assert 0 == main(["migrate", "--dsn", fresh_dsn])
    again = capsys.readouterr().out.splitlines()

    assert first.startswith("Applied migration(s) 1, 2")
    assert "'trace_spans' (" in first
    assert "), partitioned by day on started_at, in " in first
    assert 2 == len(again)
    assert all("is up to date" in line for line in again)
    assert 0 == main(["maintain", "--help"])
    assert "--days-ahead" in capsys.readouterr().out


def test_otel_pg_maintain_prints_what_it_made_and_moved(
    partitioned_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command lists each partition made, the rows moved out of the default partition,
    and says when there was nothing to do."""
    _insert(partitioned_dsn, {"0000000000000001": datetime(2001, 2, 3, tzinfo=timezone.utc)})

    assert 0 == main(["maintain", "--dsn", partitioned_dsn, "--days-ahead", "4"])
    first = capsys.readouterr().out.splitlines()
    assert 0 == main(["maintain", "--dsn", partitioned_dsn, "--days-ahead", "4"])
    second = capsys.readouterr().out

    ahead = _today() + timedelta(days=4)
    assert [
        "created trace_spans_p20010203 for 2001-02-03, 1 row(s) moved in from the default "
        "partition",
        f"created {partition_name('trace_spans', ahead)} for {ahead}",
    ] == first[:2]
    assert first[2].startswith("Created 2 partition(s) of 'trace_spans' (")
    assert "moved 1 row(s) out of the default partition, in " in first[2]
    assert "has its partitions from 1 day(s) ago to 4 day(s) ahead" in second


def test_otel_pg_maintain_on_a_plain_table_and_bad_arguments(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain table: nothing to maintain, exit 0; a negative day count: exit 2; no table:
    exit 1 saying to migrate."""
    assert 1 == main(["maintain", "--dsn", fresh_dsn])
    assert "run `otel-pg migrate` first" in capsys.readouterr().err
    migrate(fresh_dsn)

    assert 0 == main(["maintain", "--dsn", fresh_dsn])
    assert "is not partitioned: nothing to maintain" in capsys.readouterr().out
    assert 2 == main(["maintain", "--dsn", fresh_dsn, "--days-ahead", "-1"])
    assert "--days-ahead" in capsys.readouterr().err


# --- retention's DETACH and a concurrent writer ----------------------------------------------


def _row(number: int, start: datetime) -> Row:
    start_ns = int(start.timestamp() * 1_000_000) * 1000
    return (
        f"{number:032x}",
        f"{number:016x}",
        None,
        "svc",
        "op",
        "server",
        start_ns,
        start_ns + 1_000_000,
        "ok",
        None,
        None,
        "{}",
        None,
        None,
        None,
        None,
        None,
    )


class _Writer(threading.Thread):
    """The exporter's writer, storing batches of today's spans back to back and timing each."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.writer = SpanWriter(dsn=dsn, table="trace_spans")
        self.stop = threading.Event()
        self.writes: list[tuple[float, float]] = []  # (start, seconds), monotonic
        self.error: BaseException | None = None

    def run(self) -> None:
        number = 1 << 40
        try:
            while not self.stop.is_set():
                now = datetime.now(timezone.utc)
                batch = [_row(number + n, now) for n in range(50)]
                number += 50
                started = time.monotonic()
                outcome = self.writer.write(batch, started + 30)
                self.writes.append((started, time.monotonic() - started))
                assert 50 == outcome.inserted
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.writer.close()

    def longest_between(self, start: float, end: float) -> float:
        """The longest write that overlapped [start, end]."""
        return max(
            (
                seconds
                for begun, seconds in self.writes
                if begun <= end and begun + seconds >= start
            ),
            default=0.0,
        )


@pytest.fixture
def writer(partitioned_dsn: str) -> Iterator[_Writer]:
    thread = _Writer(partitioned_dsn)
    thread.start()
    yield thread
    thread.stop.set()
    thread.join(30)


def _fill_old_day(dsn: str, day: date, rows: int) -> str:
    """``rows`` spans on ``day`` moved to its own partition; the partition's name."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO trace_spans (trace_id, span_id, service, operation, kind, started_at,"
            " completed_at, duration_ms, status, created_at)"
            " SELECT lpad(to_hex(g), 32, '0'), lpad(to_hex(g), 16, '0'), 'svc', 'op', 'server',"
            " %s::timestamptz + g * interval '1 ms', %s::timestamptz + g * interval '1 ms',"
            " 0, 'ok', %s FROM generate_series(1, %s) AS g",
            (f"{day} 00:00:00+00", f"{day} 00:00:00+00", f"{day} 00:00:00+00", rows),
        )
    maintain(dsn)
    return partition_name("trace_spans", day)


def test_detaching_and_dropping_a_day_partition_does_not_stall_a_writer(
    partitioned_dsn: str, writer: _Writer
) -> None:
    """Retention's plain DETACH + DROP of an old day partition (the default partition rules
    out DETACH ... CONCURRENTLY) takes ACCESS EXCLUSIVE on the parent for a moment: writes
    into today's partition going on meanwhile wait a few milliseconds at most."""
    old = _fill_old_day(partitioned_dsn, _today() - timedelta(days=40), 20_000)
    time.sleep(0.5)  # the writer's steady state
    with (
        psycopg.connect(partitioned_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="default"),
    ):
        conn.execute(
            sql.SQL("ALTER TABLE trace_spans DETACH PARTITION {} CONCURRENTLY").format(
                sql.Identifier(old)
            )
        )
    drops: list[tuple[float, float]] = []
    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        for _ in range(3):  # the same DETACH + DROP three times: an old day each time
            day = _fill_old_day(partitioned_dsn, _today() - timedelta(days=41 + len(drops)), 2000)
            time.sleep(0.2)
            started = time.monotonic()
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '1s'")
                conn.execute(
                    sql.SQL("ALTER TABLE trace_spans DETACH PARTITION {}").format(
                        sql.Identifier(day)
                    )
                )
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(day)))
            drops.append((started, time.monotonic()))
        started = time.monotonic()
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '1s'")
            dropped = conn.execute(
                "SELECT * FROM otel_pg_drop_partitions('trace_spans', now() - interval '30 days')"
            ).fetchall()
        drops.append((started, time.monotonic()))
    time.sleep(0.3)
    writer.stop.set()
    writer.join(30)

    assert writer.error is None, writer.error
    assert 1 == len(dropped)
    assert old not in _partitions(partitioned_dsn)
    steady = [seconds for begun, seconds in writer.writes if begun < drops[0][0] - 0.2]
    during = [writer.longest_between(start, end) for start, end in drops]
    held = [end - start for start, end in drops]
    print(
        f"writes: {len(writer.writes)}, steady median {statistics.median(steady) * 1000:.1f} ms,"
        f" max {max(steady) * 1000:.1f} ms; DETACH + DROP took "
        f"{', '.join(f'{s * 1000:.1f}' for s in held)} ms; longest write overlapping each: "
        f"{', '.join(f'{s * 1000:.1f}' for s in during)} ms"
    )
    assert len(writer.writes) > 20
    assert max(during) < 0.5, during  # generous: a few ms on an idle machine


def test_a_long_read_makes_the_detach_wait_and_writers_queue_behind_it(
    partitioned_dsn: str, writer: _Writer
) -> None:
    """The caveat: while a query holds the table, DETACH waits for it, and writers arriving
    meanwhile queue behind the DETACH; its lock_timeout bounds that wait, and the drop is
    left for the next run."""
    old = _fill_old_day(partitioned_dsn, _today() - timedelta(days=40), 1000)
    time.sleep(0.3)
    with psycopg.connect(partitioned_dsn) as reader, psycopg.connect(partitioned_dsn) as conn:
        reader.execute("SELECT count(*) FROM trace_spans")  # the transaction stays open
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable), conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '200ms'")
            conn.execute(
                sql.SQL("ALTER TABLE trace_spans DETACH PARTITION {}").format(sql.Identifier(old))
            )
        ended = time.monotonic()
        reader.rollback()
    time.sleep(0.3)
    writer.stop.set()
    writer.join(30)

    longest = writer.longest_between(started, ended)
    print(f"DETACH waited {(ended - started) * 1000:.0f} ms; longest write {longest * 1000:.0f} ms")
    assert writer.error is None, writer.error
    assert old in _partitions(partitioned_dsn)
    assert longest < 0.2 + 0.5  # the lock_timeout, and some slack


def test_maintain_does_not_stall_a_writer(partitioned_dsn: str, writer: _Writer) -> None:
    """Making partitions ahead and emptying a default partition of 5,000 spans: writes into
    today's partition go on."""
    with psycopg.connect(partitioned_dsn) as conn:
        conn.execute(
            "INSERT INTO trace_spans (trace_id, span_id, service, operation, kind, started_at,"
            " completed_at, duration_ms, status)"
            " SELECT lpad(to_hex(g), 32, '0'), lpad(to_hex(g), 16, '0'), 'svc', 'op', 'server',"
            " timestamptz '2001-01-01 00:00+00' + g * interval '1 minute',"
            " timestamptz '2001-01-01 00:00+00' + g * interval '1 minute', 0, 'ok'"
            " FROM generate_series(1, 5000) AS g"
        )
    time.sleep(0.3)
    started = time.monotonic()
    result = maintain(partitioned_dsn, days_ahead=10)
    ended = time.monotonic()
    time.sleep(0.3)
    writer.stop.set()
    writer.join(30)

    longest = writer.longest_between(started, ended)
    print(
        f"maintain: {len(result.created)} partitions, {result.rows_moved} rows moved in "
        f"{(ended - started) * 1000:.0f} ms; longest write meanwhile {longest * 1000:.1f} ms"
    )
    assert writer.error is None, writer.error
    assert 5000 == result.rows_moved
    assert longest < 0.5


# --- pg_partman ------------------------------------------------------------------------------


def _readme_sql(marker: str) -> str:
    """The ```sql block that follows ``<!-- test: marker -->`` in the README, unindented."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- test: {re.escape(marker)} -->\s*```sql\n(.*?)^\s*```", text, re.S | re.M
    )
    assert found is not None, f"README has no sql block marked {marker}"
    return textwrap.dedent(found.group(1))


def _psql(dsn: str, script: str) -> str:
    """Run ``script`` with psql, as a reader of the README would; its output."""
    found = shutil.which("psql") or str(find_bin_dir() / "psql")
    if not Path(found).exists():
        pytest.skip("psql is not installed: the README's SQL is run as psql would run it")
    result = subprocess.run(
        [found, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout


@pytest.fixture
def partman_dsn(fresh_dsn: str) -> str:
    """A fresh database with pg_partman in schema partman, or the test is skipped."""
    try:
        with psycopg.connect(fresh_dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA partman")
            conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
            version = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
            ).fetchone()
    except psycopg.Error as exc:
        pytest.skip(
            f"pg_partman is not installed for this PostgreSQL ({str(exc).strip()}); on Debian: "
            "apt-get install postgresql-15-partman"
        )
    assert version is not None
    if not str(version[0]).startswith("4."):
        pytest.skip(f"the README's hand-over is written for pg_partman 4, found {version[0]}")
    return fresh_dsn


def test_handing_the_table_to_pg_partman(
    partman_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's hand-over, run as written: pg_partman 4 adopts the partitions (renamed to
    its names), makes its own ahead and its default partition, drops a 40-day-old partition
    under a 30-day retention, and otel_pg_maintain leaves the table to it; writes and the
    query functions go on."""
    migrate(partman_dsn, partitioned=True)
    today = _today()
    old_day = today - timedelta(days=40)
    _insert(
        partman_dsn,
        {
            "0000000000000001": datetime.combine(old_day, datetime.min.time(), timezone.utc),
            "0000000000000002": datetime.now(timezone.utc),
            "0000000000000003": datetime(2001, 2, 3, tzinfo=timezone.utc),  # in default
        },
    )

    _psql(partman_dsn, _readme_sql("partman-handover"))
    _psql(partman_dsn, "SET timezone = 'UTC';\n" + _readme_sql("partman-maintenance"))

    partitions = _partitions(partman_dsn)
    names = set(partitions) - {"trace_spans_default"}
    assert all(re.fullmatch(r"trace_spans_p\d{4}_\d{2}_\d{2}", name) for name in names), names
    assert f"trace_spans_p{old_day:%Y_%m_%d}" not in partitions  # dropped by retention
    assert "trace_spans_p2001_02_03" not in partitions  # older still
    for n in range(-1, 5):
        day = today + timedelta(days=n)
        assert _day_bound(day) == partitions[f"trace_spans_p{day:%Y_%m_%d}"]
    assert "DEFAULT" == partitions["trace_spans_default"]
    with psycopg.connect(partman_dsn) as conn:
        config = conn.execute(
            "SELECT retention, retention_keep_table, premake FROM partman.part_config"
            " WHERE parent_table = 'public.trace_spans'"
        ).fetchone()
        tables = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relkind = 'r' AND relname LIKE 'trace_spans_p%'"
        ).fetchall()
    assert ("30 days", False, 4) == config
    assert names == {row[0] for row in tables}  # dropped, not only detached

    result = maintain(partman_dsn)
    assert ("pg_partman", []) == (result.managed_by, result.created)
    assert 0 == main(["maintain", "--dsn", partman_dsn])
    assert "is maintained by pg_partman: nothing to do" in capsys.readouterr().out
    with closing(SpanWriter(dsn=partman_dsn, table="trace_spans")) as writer:
        assert (
            1 == writer.write([_row(9, datetime.now(timezone.utc))], time.monotonic() + 10).inserted
        )
    with psycopg.connect(partman_dsn) as conn:
        tree = conn.execute("SELECT span_id FROM trace_tree(%s)", ("a" * 32,)).fetchall()
    assert [("0000000000000002",)] == tree


# --- converting a plain table -----------------------------------------------------------------


def test_the_readme_conversion_of_a_plain_table(fresh_dsn: str) -> None:
    """The README's steps, run as written on a plain table holding spans: the swap, migrate
    --partitioned (which recreates the table partitioned and points the functions at it), the
    day-by-day copy; every span is then in a day partition and found by the functions."""
    migrate(fresh_dsn)
    now = datetime.now(timezone.utc)
    spans = {f"{n:016x}": now - timedelta(days=n) for n in range(0, 40, 3)}
    _insert(fresh_dsn, spans)
    with psycopg.connect(fresh_dsn) as conn:
        before = conn.execute("SELECT * FROM trace_spans ORDER BY span_id").fetchall()

    _psql(fresh_dsn, _readme_sql("convert-swap"))
    result = upgrade(fresh_dsn, partitioned=True)

    assert ([], ["trace_spans"]) == (result.applied, result.recreated)
    with psycopg.connect(fresh_dsn) as conn:
        old_indexes = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'trace_spans_plain'::regclass"
        ).fetchall()
        new_indexes = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'trace_spans'::regclass"
        ).fetchall()
        assert [] == conn.execute("SELECT * FROM trace_tree(%s)", ("a" * 32,)).fetchall()
    assert {"trace_spans_pkey", *index_names("trace_spans").values()} == {
        row[0] for row in new_indexes
    }
    assert {"trace_spans_plain_pkey", *index_names("trace_spans_plain").values()} == {
        row[0] for row in old_indexes
    }
    assert {**_window(), "trace_spans_default": "DEFAULT"} == _partitions(fresh_dsn)

    _psql(fresh_dsn, _readme_sql("convert-copy"))
    maintain(fresh_dsn)

    with psycopg.connect(fresh_dsn) as conn:
        after = conn.execute("SELECT * FROM trace_spans ORDER BY span_id").fetchall()
        tree = conn.execute("SELECT span_id FROM trace_tree(%s)", ("a" * 32,)).fetchall()
    assert before == after
    assert sorted(spans) == sorted(row[0] for row in tree)
    assert {
        span_id: partition_name("trace_spans", start.date()) for span_id, start in spans.items()
    } == _where(fresh_dsn)
