"""Opt-in indexes for attribute search: what users query next, and what each costs writers.

``attributes``: one GIN ``jsonb_path_ops`` index on ``metadata`` serves every containment
query (``metadata @> '{"http.route": "/items/{id}"}'``) on any key; ``jsonb_path_ops`` is
smaller and cheaper to keep up on insert than the default operator class, which also serves
key-existence operators nobody needs here. ``key NAME``: a btree expression index on
``(metadata ->> 'NAME')`` for equality and range on one key (the cheapest on writes; Phoenix
chose it over GIN for the same reason). Both are built with ``CREATE INDEX CONCURRENTLY``,
so writers are never blocked while a large table is indexed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import MigrationError
from otel_pg_exporter.schema.migrations import connection
from otel_pg_exporter.schema.table import DEFAULT_TABLE, index_name

ATTRIBUTES = "attributes"
_KEY_MAX = 200


@dataclass(frozen=True)
class AttributeIndex:
    """One opt-in index of a spans table."""

    name: str
    kind: str  # "attributes" or "key"
    key: str | None
    definition: str
    bytes: int
    valid: bool


def key_index_suffix(key: str) -> str:
    """``attr_<slug>_<hash>``: readable, unique per key, a valid identifier part."""
    slug = re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")[:24] or "key"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"attr_{slug}_{digest}"


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > _KEY_MAX or "\x00" in key:
        raise ValueError(f"an attribute key is 1 to {_KEY_MAX} characters without NUL")
    return key


def _qualified(schema: str | None, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def add_index(
    dsn: str, *, key: str | None = None, schema: str | None = None, table: str = DEFAULT_TABLE
) -> AttributeIndex:
    """Create the GIN index on all attributes (``key=None``) or the index on one key; a no-op
    when it exists. A half-built index left by an interrupted run is dropped and rebuilt."""
    suffix = ATTRIBUTES if key is None else key_index_suffix(_check_key(key))
    name = index_name(table, suffix)
    target = _qualified(schema, table)
    body: sql.Composable
    if key is None:
        body = sql.SQL("USING gin (metadata jsonb_path_ops)")
    else:
        body = sql.SQL("((metadata ->> {}))").format(sql.Literal(key))
    with connection(dsn) as conn, untraced():
        _require_table(conn, target, schema, table)
        existing = _find(conn, schema, table, name)
        if existing is not None and not existing.valid and _partitions(conn, target) is None:
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(_qualified(schema, name))
            )
        if existing is None or not existing.valid:
            if _partitions(conn, target) is None:
                conn.execute(
                    sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {}").format(
                        sql.Identifier(name), target, body
                    )
                )
            else:
                _add_partitioned(conn, schema, target, name, body)
            conn.execute(
                sql.SQL("COMMENT ON INDEX {} IS {}").format(
                    _qualified(schema, name),
                    sql.Literal(
                        "otel_pg_exporter attribute index: "
                        + ("all keys (metadata @> ...)" if key is None else f"key {key}")
                    ),
                )
            )
        found = _find(conn, schema, table, name)
    assert found is not None
    return found


def _partitions(conn: psycopg.Connection[Any], target: sql.Identifier) -> list[str] | None:
    """The partitions (regclass text) of a partitioned table, None for a plain one."""
    row = conn.execute(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
        (target.as_string(conn),),
    ).fetchone()
    if not (row and row[0]):
        return None
    return [
        str(name)
        for (name,) in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = to_regclass(%s)",
            (target.as_string(conn),),
        )
    ]


def _add_partitioned(
    conn: psycopg.Connection[Any],
    schema: str | None,
    target: sql.Identifier,
    name: str,
    body: sql.Composable,
) -> None:
    """CREATE INDEX CONCURRENTLY refuses a partitioned table: build the parent's index ON ONLY
    the parent (instant, not yet valid), each partition's CONCURRENTLY, and attach them; the
    parent's becomes valid with the last one. Writers are never blocked."""
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON ONLY {} {}").format(
            sql.Identifier(name), target, body
        )
    )
    for partition in _partitions(conn, target) or []:
        digest = hashlib.sha256(f"{name}\x00{partition}".encode()).hexdigest()[:12]
        child = f"otel_pg_idx_{digest}"
        # A regclass's text is already a quoted, qualified name.
        conn.execute(
            sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {}").format(
                sql.Identifier(child), sql.SQL(partition), body
            )
        )
        attached = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhparent = to_regclass(%s)"
            " AND inhrelid = to_regclass(%s))",
            (_qualified(schema, name).as_string(conn), _in_schema_of(conn, partition, child)),
        ).fetchone()
        if not (attached and attached[0]):
            conn.execute(
                sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                    _qualified(schema, name), sql.SQL(_in_schema_of(conn, partition, child))
                )
            )


def _in_schema_of(conn: psycopg.Connection[Any], partition: str, index: str) -> str:
    """``index`` qualified with the schema of ``partition`` (where it was created)."""
    row = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, %s::text) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
        (index, partition),
    ).fetchone()
    assert row is not None
    return str(row[0])


def drop_index(
    dsn: str, *, key: str | None = None, schema: str | None = None, table: str = DEFAULT_TABLE
) -> bool:
    """Drop the attribute index (``key=None``) or one key's; False when there was none."""
    suffix = ATTRIBUTES if key is None else key_index_suffix(_check_key(key))
    name = index_name(table, suffix)
    with connection(dsn) as conn, untraced():
        if _find(conn, schema, table, name) is None:
            return False
        # DROP INDEX CONCURRENTLY refuses a partitioned index; dropping one is quick.
        concurrently = sql.SQL(
            "" if _partitions(conn, _qualified(schema, table)) else "CONCURRENTLY"
        )
        conn.execute(sql.SQL("DROP INDEX {} {}").format(concurrently, _qualified(schema, name)))
    return True


def list_indexes(
    dsn: str, *, schema: str | None = None, table: str = DEFAULT_TABLE
) -> list[AttributeIndex]:
    """The opt-in attribute indexes of the table."""
    with connection(dsn) as conn, untraced():
        _require_table(conn, _qualified(schema, table), schema, table)
        return [index for index in _all(conn, schema, table) if index.kind]


def _require_table(
    conn: psycopg.Connection[Any], target: sql.Identifier, schema: str | None, table: str
) -> None:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (target.as_string(conn),)).fetchone()
    if not (row and row[0]):
        shown = f"{schema}.{table}" if schema else table
        raise MigrationError(f"table {shown!r} does not exist: run `otel-pg migrate` first")


def _all(conn: psycopg.Connection[Any], schema: str | None, table: str) -> list[AttributeIndex]:
    target = _qualified(schema, table).as_string(conn)
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid),"
        " coalesce((SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(i.oid)),"
        "          pg_relation_size(i.oid)),"
        " x.indisvalid,"
        " obj_description(i.oid, 'pg_class')"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = to_regclass(%s) ORDER BY i.relname",
        (target,),
    ).fetchall()
    found = []
    for name, definition, size, valid, comment in rows:
        kind, key = "", None
        if isinstance(comment, str) and comment.startswith("otel_pg_exporter attribute index"):
            if comment.endswith("(metadata @> ...)"):
                kind = ATTRIBUTES
            else:
                kind, key = "key", comment.split(": key ", 1)[1]
        found.append(AttributeIndex(name, kind, key, definition, int(size), bool(valid)))
    return found


def _find(
    conn: psycopg.Connection[Any], schema: str | None, table: str, name: str
) -> AttributeIndex | None:
    for index in _all(conn, schema, table):
        if index.name == name:
            return index
    return None
