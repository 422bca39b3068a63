"""SpanWriter against a real PostgreSQL: COPY into the table, duplicates skipped, refused rows
isolated by bisection, the circuit breaker while the database is unreachable, and the errors
that say a retry will not help.

Each test writes to a table of its own in the module's database (``migrate_table(dsn, table=...)``,
in the layout under test).
Rows are built by hand in the writer's row format (``otel_pg_exporter.schema.table.Row``): the
writer knows rows, not spans.
"""

from __future__ import annotations

import socket
import time
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import psycopg
import pytest
from layout import migrate_table
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from spans import T0_NS
from support import wait_until
from tcp_proxy import TcpProxy

from otel_pg_exporter import WriteError
from otel_pg_exporter.export.writer import (
    PROBE_DELAY_MAX_S,
    DatabaseUnavailable,
    SchemaProblem,
    SpanWriter,
    WriteOutcome,
    WriteTimeout,
)
from otel_pg_exporter.schema.table import STAGE_COLUMNS, Row

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
COLUMN = {name: index for index, (name, _) in enumerate(STAGE_COLUMNS)}
# Long enough that "failed at once" and "waited for the deadline" cannot be confused.
DEADLINE_S = 10.0


def new_table(dsn: str) -> str:
    """A freshly migrated, uniquely named spans table in the database of ``dsn``."""
    table = f"spans_{uuid.uuid4().hex[:12]}"
    migrate_table(dsn, table=table)
    return table


def make_row(number: int, *, trace: int = 1) -> Row:
    """A row with every column filled in, unique per (``trace``, ``number``)."""
    return (
        f"{trace:032x}",
        f"{number + 1:016x}",
        f"{number + 1001:016x}",
        "checkout",
        f"GET /orders/{number}",
        "server",
        T0_NS + number,
        T0_NS + number + 4_200_000_001,
        "error",
        f"failure {number}",
        90_000 + number,
        f'{{"n": {number}, "http.route": "/orders/{{id}}"}}',
        '[{"name": "retry", "time": "2023-11-14T22:13:20.5Z", "attributes": {"try": 2}}]',
        f'[{{"trace_id": "{9:032x}", "span_id": "{9:016x}", "attributes": {{}}}}]',
        '{"service.name": "checkout", "host.name": "web-7"}',
        "tests.test_writer",
        '{"trace_flags": 3}',
    )


def make_rows(count: int, *, trace: int = 1) -> list[Row]:
    """``count`` distinct rows of one trace."""
    return [make_row(number, trace=trace) for number in range(count)]


def with_value(row: Row, column: str, value: object) -> Row:
    """``row`` with ``column`` set to ``value``, which may be one the database refuses."""
    changed: list[object] = list(row)
    changed[COLUMN[column]] = value
    return cast(Row, tuple(changed))


def deadline() -> float:
    """A write deadline ``DEADLINE_S`` from now (monotonic)."""
    return time.monotonic() + DEADLINE_S


def stored(dsn: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table``, ordered by span id."""
    statement = sql.SQL("SELECT * FROM {} ORDER BY span_id").format(sql.Identifier(table))
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(statement).fetchall()


def stored_ids(dsn: str, table: str) -> list[str]:
    """The span ids in ``table``, in order."""
    return [record["span_id"] for record in stored(dsn, table)]


def span_ids(rows: list[Row]) -> list[str]:
    """The span ids of ``rows``, sorted as ``stored_ids`` gives them."""
    return sorted(span_id for _, span_id, *_ in rows)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- storing a batch -------------------------------------------------------------------------


def test_batch_is_copied_into_the_table_column_for_column(dsn: str) -> None:
    """Every row of a batch lands; times become timestamptz and duration_ms, JSON text jsonb."""
    table = new_table(dsn)
    rows = [make_row(0), make_row(1)]

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        outcome = writer.write(rows, deadline())

    assert WriteOutcome(inserted=2) == outcome
    first = stored(dsn, table)[0]
    first.pop("created_at")
    assert {
        "trace_id": f"{1:032x}",
        "span_id": f"{1:016x}",
        "parent_span_id": f"{1001:016x}",
        "service": "checkout",
        "operation": "GET /orders/0",
        "kind": "server",
        # Truncated to the microsecond: the nanoseconds are in duration_ms.
        "started_at": EPOCH + timedelta(microseconds=T0_NS // 1000),
        "completed_at": EPOCH + timedelta(microseconds=(T0_NS + 4_200_000_001) // 1000),
        "duration_ms": 4_200.000001,
        "status": "error",
        "status_message": "failure 0",
        "execution_id": 90_000,
        "metadata": {"n": 0, "http.route": "/orders/{id}"},
        "events": [{"name": "retry", "time": "2023-11-14T22:13:20.5Z", "attributes": {"try": 2}}],
        "links": [{"trace_id": f"{9:032x}", "span_id": f"{9:016x}", "attributes": {}}],
        "resource": {"service.name": "checkout", "host.name": "web-7"},
        "scope": "tests.test_writer",
        "otel": {"trace_flags": 3},
    } == first
    assert span_ids(rows) == stored_ids(dsn, table)


def test_nullable_columns_are_stored_as_null(dsn: str) -> None:
    """A root row without status message, execution id, events, links, resource, scope or
    otel document is stored with NULL in each of those columns."""
    table = new_table(dsn)
    nullable = (
        "parent_span_id",
        "status_message",
        "execution_id",
        "events",
        "links",
        "resource",
        "scope",
        "otel",
    )
    row = make_row(0)
    for column in nullable:
        row = with_value(row, column, None)

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        writer.write([row], deadline())

    record = stored(dsn, table)[0]
    assert dict.fromkeys(nullable) == {column: record[column] for column in nullable}


def test_empty_batch_is_an_empty_outcome_without_connecting() -> None:
    """Writing no rows returns an empty outcome at once, even with no database to reach."""
    unreachable = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"

    with closing(SpanWriter(dsn=unreachable, table="trace_spans")) as writer:
        outcome = writer.write([], deadline())
        down = writer.database_down_cause

    assert (WriteOutcome(), None) == (outcome, down)


# --- conflicts -------------------------------------------------------------------------------


def test_batch_written_twice_is_stored_once_and_reported_as_duplicates(dsn: str) -> None:
    """The same batch written again stores nothing: inserted 0, duplicates N."""
    table = new_table(dsn)
    rows = make_rows(5)

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        first = writer.write(rows, deadline())
        second = writer.write(rows, deadline())

    assert WriteOutcome(inserted=5, duplicates=0) == first
    assert WriteOutcome(inserted=0, duplicates=5) == second
    assert span_ids(rows) == stored_ids(dsn, table)


def test_row_repeated_within_a_batch_is_stored_once(dsn: str) -> None:
    """A batch holding a row twice stores it once and counts the repeat as a duplicate."""
    table = new_table(dsn)
    rows = make_rows(3)

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        outcome = writer.write([*rows, rows[0]], deadline())

    assert WriteOutcome(inserted=3, duplicates=1) == outcome
    assert span_ids(rows) == stored_ids(dsn, table)


def test_a_duplicate_never_updates_the_stored_row(dsn: str) -> None:
    """A later row with the same trace and span id but other content leaves the first one."""
    table = new_table(dsn)
    original = make_row(0)
    changed = with_value(original, "operation", "changed")

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        writer.write([original], deadline())
        outcome = writer.write([changed], deadline())

    assert WriteOutcome(inserted=0, duplicates=1) == outcome
    assert ["GET /orders/0"] == [record["operation"] for record in stored(dsn, table)]


# --- rows the database refuses ---------------------------------------------------------------

REFUSED_VALUES = [
    pytest.param("metadata", "{not json", "InvalidTextRepresentation [22P02]", id="invalid-json"),
    pytest.param(
        "metadata", '{"a": "\\u0000"}', "UntranslatableCharacter [22P05]", id="nul-escape-in-jsonb"
    ),
    pytest.param(
        "operation", "a\x00b", "CharacterNotInRepertoire [22021]", id="nul-character-in-text"
    ),
    pytest.param("kind", None, "NotNullViolation [23502]", id="null-in-a-not-null-column"),
    # Refused before it reaches the server: UTF-8 cannot encode a lone surrogate.
    pytest.param("service", "a\ud800", "UnicodeEncodeError", id="lone-surrogate"),
]


@pytest.mark.parametrize(("column", "value", "cause"), REFUSED_VALUES)
def test_refused_row_is_isolated_and_the_rest_of_the_batch_stored(
    dsn: str, column: str, value: object, cause: str
) -> None:
    """Bisection stores every other row of the batch and reports the refused one, with the
    error class and SQLSTATE as its cause."""
    table = new_table(dsn)
    rows = make_rows(5)
    rows[2] = bad = with_value(rows[2], column, value)

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        outcome = writer.write(rows, deadline())

    assert (4, 0) == (outcome.inserted, outcome.duplicates)
    assert [bad] == [row for row, _ in outcome.rejected]
    assert [cause] == [reason.split(":")[0] for _, reason in outcome.rejected]
    assert span_ids([row for row in rows if row is not bad]) == stored_ids(dsn, table)


def test_two_refused_rows_are_both_reported_in_batch_order(dsn: str) -> None:
    """Two refused rows in one batch are each isolated; the six others are stored."""
    table = new_table(dsn)
    rows = make_rows(8)
    rows[1] = with_value(rows[1], "events", "[1,")
    rows[6] = with_value(rows[6], "operation", "\x00")
    bad = [rows[1], rows[6]]

    with closing(SpanWriter(dsn=dsn, table=table)) as writer:
        outcome = writer.write(rows, deadline())

    assert (6, 0) == (outcome.inserted, outcome.duplicates)
    assert bad == [row for row, _ in outcome.rejected]
    assert ["InvalidTextRepresentation [22P02]", "CharacterNotInRepertoire [22021]"] == [
        reason.split(":")[0] for _, reason in outcome.rejected
    ]
    assert span_ids([row for row in rows if row not in bad]) == stored_ids(dsn, table)


# --- an unreachable database -----------------------------------------------------------------


def test_refused_connection_fails_with_database_unavailable_long_before_the_deadline() -> None:
    """A server refusing connections fails the write with DatabaseUnavailable (transient), in
    far less than the deadline."""
    unreachable = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"

    with closing(SpanWriter(dsn=unreachable, table="trace_spans")) as writer:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as refused:
            writer.write(make_rows(1), deadline())
        took = time.monotonic() - started

    assert took < DEADLINE_S / 2, f"took {took:.2f} s"
    assert refused.value.transient is True


def test_after_a_connection_failure_writes_fail_at_once_until_the_probe_then_succeed(
    dsn: str,
) -> None:
    """After a failed connection, writes fail at once with the same DatabaseUnavailable instead
    of waiting for their deadline, until the probe delay has passed; once the database answers
    again, a write succeeds."""
    table = new_table(dsn)
    target = conninfo_to_dict(dsn)
    rows = make_rows(3)
    with TcpProxy(
        str(target.get("host", "127.0.0.1")), int(str(target.get("port", 5432)))
    ) as proxy:
        # libpq's shortest connect timeout: a silent network fails a connection in 2 s.
        proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.port, connect_timeout=2)
        with closing(SpanWriter(dsn=proxied, table=table)) as writer:
            proxy.stall()
            try:
                with pytest.raises(DatabaseUnavailable) as first:
                    writer.write(rows, deadline())
                down_cause = writer.database_down_cause

                started = time.monotonic()
                with pytest.raises(DatabaseUnavailable) as second:
                    writer.write(rows, deadline())
                took = time.monotonic() - started

                # The probe falls due by itself, PROBE_DELAY_MIN_S after the failure at first
                # (the pool's own retries into the silence may push it up to PROBE_DELAY_MAX_S).
                wait_until(
                    lambda: writer.database_down_cause is None,
                    3 * PROBE_DELAY_MAX_S,
                    message="the probe to fall due",
                )
            finally:
                proxy.resume()

            def stores() -> bool:
                try:
                    writer.write(rows, deadline())
                except (DatabaseUnavailable, WriteTimeout):
                    return False
                return True

            wait_until(stores, 3 * PROBE_DELAY_MAX_S, message="a write to succeed")
            down_after = writer.database_down_cause

    assert first.value.cause == down_cause
    assert first.value.cause == second.value.cause
    assert took < DEADLINE_S / 2, f"the failing write took {took:.2f} s"
    assert down_after is None
    assert span_ids(rows) == stored_ids(dsn, table)


# --- failures a retry will not fix -----------------------------------------------------------


def test_missing_table_raises_schema_problem_which_is_not_transient(dsn: str) -> None:
    """Writing to a table that does not exist raises SchemaProblem, marked not transient."""
    missing_table = f"missing_{uuid.uuid4().hex[:12]}"

    with (
        closing(SpanWriter(dsn=dsn, table=missing_table)) as writer,
        pytest.raises(SchemaProblem) as missing,
    ):
        writer.write(make_rows(2), deadline())

    assert missing.value.transient is False
    assert "[42P01]" in missing.value.cause, missing.value.cause


def test_writes_after_close_raise_write_error(dsn: str) -> None:
    """After close() (which may be called again) every write raises WriteError."""
    table = new_table(dsn)
    writer = SpanWriter(dsn=dsn, table=table)
    writer.write(make_rows(1), deadline())

    writer.close()
    writer.close()

    with pytest.raises(WriteError):
        writer.write(make_rows(2, trace=2), deadline())
    assert span_ids(make_rows(1)) == stored_ids(dsn, table)
