"""Opt-in attribute indexes: built concurrently, used by the queries users run next, listed
and dropped by ``otel-pg index``."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from otel_pg_exporter.cli import main
from otel_pg_exporter.schema import indexes

FILL = """
INSERT INTO trace_spans (trace_id, span_id, service, operation, kind, started_at, completed_at,
                         duration_ms, status, metadata)
SELECT md5(i::text), left(md5((-i)::text), 16), 'svc', 'op', 'internal', now(), now(), 1,
       'unset', jsonb_build_object('conversation.id', 'c' || (i % 5000), 'http.route',
                                   '/items/' || (i % 50))
  FROM generate_series(1, 20000) AS i
"""


def plan(dsn: str, query: str) -> str:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"EXPLAIN {query}").fetchall()
    return "\n".join(str(row[0]) for row in rows)


@pytest.fixture
def filled_dsn(migrated_dsn: str) -> str:
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(FILL)
        conn.execute("ANALYZE trace_spans")
    return migrated_dsn


def test_the_attributes_index_serves_containment_on_any_key(filled_dsn: str) -> None:
    """After `add attributes`, `metadata @> ...` on 20,000 rows reads the GIN index, not the
    table."""
    query = """SELECT count(*) FROM trace_spans WHERE metadata @> '{"http.route": "/items/7"}'"""
    assert "Seq Scan" in plan(filled_dsn, query)

    made = indexes.add_index(filled_dsn)

    assert ("trace_spans_attributes_idx", "attributes", None, True) == (
        made.name,
        made.kind,
        made.key,
        made.valid,
    )
    assert "jsonb_path_ops" in made.definition
    assert "Index Scan" in plan(filled_dsn, query)  # the partitions' own indexes, if any


def test_a_key_index_serves_equality_on_that_key(filled_dsn: str) -> None:
    """`add key conversation.id` makes `metadata ->> 'conversation.id' = ...` an index scan."""
    query = "SELECT count(*) FROM trace_spans WHERE metadata ->> 'conversation.id' = 'c42'"

    made = indexes.add_index(filled_dsn, key="conversation.id")

    assert ("key", "conversation.id") == (made.kind, made.key)
    assert "Index Scan" in plan(filled_dsn, query)


def test_adding_twice_is_a_no_op_and_drop_removes(filled_dsn: str) -> None:
    """A second add finds the index; list shows both kinds; drop removes one, then says there
    was none."""
    first = indexes.add_index(filled_dsn)
    again = indexes.add_index(filled_dsn)
    indexes.add_index(filled_dsn, key="http.route")

    listed = {(index.kind, index.key) for index in indexes.list_indexes(filled_dsn)}
    assert first == again
    assert {("attributes", None), ("key", "http.route")} == listed
    assert indexes.drop_index(filled_dsn, key="http.route")
    assert not indexes.drop_index(filled_dsn, key="http.route")
    assert [("attributes", None)] == [
        (index.kind, index.key) for index in indexes.list_indexes(filled_dsn)
    ]


def test_a_hostile_key_is_only_a_key(filled_dsn: str) -> None:
    """A key holding quotes and SQL is a literal inside the index expression, nothing more."""
    key = "x'); DROP TABLE trace_spans; --"

    made = indexes.add_index(filled_dsn, key=key)

    assert key == made.key
    with psycopg.connect(filled_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trace_spans").fetchone()
    assert (20000,) == row


def test_cli_index_add_list_drop(filled_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`otel-pg index add|list|drop` in text and JSON."""
    assert 0 == main(["index", "add", "attributes", "--dsn", filled_dsn])
    assert "built concurrently" in capsys.readouterr().out
    assert 0 == main(["index", "add", "key", "conversation.id", "--dsn", filled_dsn])
    capsys.readouterr()

    assert 0 == main(["index", "list", "--dsn", filled_dsn, "--json"])
    listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert [None, "conversation.id"] == sorted(
        (item["key"] for item in listed), key=lambda key: key or ""
    )
    assert 0 == main(["index", "drop", "attributes", "--dsn", filled_dsn])
    assert "dropped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["index", "add"], ["index", "add", "key"], ["index", "add", "attributes", "extra"]],
    ids=["nothing", "key-without-name", "attributes-with-name"],
)
def test_cli_index_usage_errors(
    argv: list[str], migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Incomplete or contradictory arguments are usage errors (exit 2) saying what to give."""
    assert 2 == main([*argv, "--dsn", migrated_dsn])
    assert "error" in capsys.readouterr().err


def test_cli_index_on_a_missing_table_says_migrate(
    fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the table: exit 1 and the command to run."""
    assert 1 == main(["index", "add", "attributes", "--dsn", fresh_dsn])
    assert "otel-pg migrate" in capsys.readouterr().err
