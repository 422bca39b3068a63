"""Versioned schema migrations for the spans table: apply, inspect, roll back.

The numbered files in ``sql/`` (shipped in the wheel as ``otel_pg_exporter/schema/sql``) are
templates whose names are filled in with ``psycopg.sql.Identifier``, so the schema and table are
configurable and always quoted. Each pending file runs in its own transaction together with its
history row, under a transaction-level advisory lock, so concurrent runs apply it once.

The history table is ``otel_pg_schema_migrations``, not ``schema_migrations``: that name belongs
to golang-migrate's and Rails' own tables, which the services sharing the database already have.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from otel_pg_exporter._dsn import open_connection, redact_dsn, scrub_message
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import MigrationError
from otel_pg_exporter.schema.table import (
    DEFAULT_TABLE,
    MAINTENANCE_ROUTINES,
    MIGRATIONS_TABLE,
    PARTITION_COLUMN,
    PARTITION_ROUTINES,
    function_names,
    index_name,
    index_names,
    primary_key,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

logger = logging.getLogger("otel_pg_exporter")

__all__ = [
    "MIGRATIONS_TABLE",
    "Migration",
    "MigrationError",
    "MigrationResult",
    "applied_versions",
    "available_migrations",
    "index_name",
    "migrate",
    "rollback",
    "upgrade",
]


CONNECT_TIMEOUT_S = 10
APPLICATION_NAME = "otel-pg migrate"

# One fixed key for every otel_pg_exporter migration in a database: a stable 64-bit number
# that no other application is likely to pick.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"otel_pg_exporter.migrate").digest()[:8], "big", signed=True
)

_IDENTIFIER_MAX_BYTES = 63
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_ROLLBACK_FILE = "rollback.sql"
MAINTAIN_FUNCTION = "otel_pg_maintain"
PARTITIONS_DOC = 'the README, "Retention and partitions" (converting a plain table)'


@dataclass(frozen=True)
class Migration:
    """One numbered file of ``sql/``: ``0001_trace_spans.sql`` is version 1, name trace_spans."""

    version: int
    name: str
    template: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def _sql_dir() -> Traversable:
    """``otel_pg_exporter/schema/sql`` in an installed wheel, else the repository's ``sql/``."""
    try:
        packaged = resources.files("otel_pg_exporter.schema") / "sql"
        if packaged.is_dir():
            return packaged
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    return Path(__file__).resolve().parents[2] / "sql"


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    folder = _sql_dir()
    found: dict[int, Migration] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            match = _MIGRATION_FILE.match(entry.name)
            if match is None:
                continue
            version = int(match["version"])
            if version in found:
                raise MigrationError(
                    f"two migration files share version {version}: "
                    f"{found[version].filename} and {entry.name}"
                )
            found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migration files found in {folder}")
    return [found[version] for version in sorted(found)]


def _rollback_template() -> str:
    return (_sql_dir() / _ROLLBACK_FILE).read_text(encoding="utf-8")


def _check_identifier(parameter: str, value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{parameter} must be str, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{parameter} must be valid UTF-8 text") from None
    if not value or "\x00" in value or size > _IDENTIFIER_MAX_BYTES:
        raise ValueError(
            f"{parameter} must be a non-empty identifier of at most 63 bytes without NUL, "
            f"got {value!r}"
        )
    return value


@dataclass(frozen=True)
class _Target:
    """Where the spans table lives, its layout, and every name the templates may use.

    ``partitioned`` is the layout 0001 renders: the requested one while the table does not
    exist, else the one it has (``upgrade`` reads it from the catalog)."""

    schema: str | None
    table: str
    partitioned: bool = False

    def qualified(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)

    @property
    def spans(self) -> sql.Identifier:
        return self.qualified(self.table)

    @property
    def history(self) -> sql.Identifier:
        return self.qualified(MIGRATIONS_TABLE)

    def names(self, conn: psycopg.Connection[TupleRow]) -> Mapping[str, sql.Composable]:
        return {
            "table": self.spans,
            "migrations": self.history,
            "table_name": sql.Literal(self.table),
            "migrations_regclass": sql.Literal(self.history.as_string(conn)),
            **{
                f"idx_{suffix}": sql.Identifier(name)
                for suffix, name in index_names(self.table).items()
            },
            **{
                f"fn_{base}": self.qualified(name)
                for base, name in function_names(self.table).items()
            },
            **{
                f"maint_{name.removeprefix('otel_pg_')}": self.qualified(name)
                for name in (*MAINTENANCE_ROUTINES, *PARTITION_ROUTINES)
            },
            "shared_routines": sql.Literal(",".join((*MAINTENANCE_ROUTINES, *PARTITION_ROUTINES))),
            "primary_key": sql.SQL(", ").join(
                sql.Identifier(column) for column in primary_key(self.partitioned)
            ),
            "partition_by": (
                sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(PARTITION_COLUMN))
                if self.partitioned
                else sql.SQL("")
            ),
        }

    def render(
        self, conn: psycopg.Connection[TupleRow], template: str, filename: str
    ) -> sql.Composed:
        try:
            return sql.SQL(template).format(**self.names(conn))
        except (KeyError, IndexError, ValueError) as exc:
            raise MigrationError(
                f"{filename}: bad template ({type(exc).__name__}: {exc}); "
                "placeholders are {table}, {migrations}, {table_name}, {migrations_regclass}, "
                "{primary_key}, {partition_by}, {idx_<suffix>} for each index, {fn_<name>} "
                "for each query function and {maint_<name>} for each maintenance routine; "
                "double literal braces"
            ) from None

    def functions(self) -> list[str]:
        """The table's query functions and the schema's shared maintenance routines."""
        return [
            *function_names(self.table).values(),
            *MAINTENANCE_ROUTINES,
            *PARTITION_ROUTINES,
        ]

    def objects(self) -> list[str]:
        """What the migrations create for this table: the table, its indexes, functions."""
        return [self.table, *index_names(self.table).values(), *self.functions()]

    def describe(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


def _target(schema: str | None, table: str) -> _Target:
    if schema is not None:
        _check_identifier("schema", schema)
    return _Target(schema, _check_identifier("table", table))


@contextmanager
def connection(
    dsn: str | psycopg.Connection[TupleRow],
) -> Iterator[psycopg.Connection[TupleRow]]:
    """An autocommit connection; every failure becomes a MigrationError without a password.

    Given an open autocommit connection instead of a DSN, that connection is used and left
    open (the retention job runs a whole round on one connection)."""
    if isinstance(dsn, psycopg.Connection):
        with untraced():
            try:
                yield dsn
            except psycopg.Error as exc:
                message = redact_dsn(str(exc).strip())
                raise MigrationError(f"{type(exc).__name__}: {message}") from None
        return
    conn = open_connection(
        dsn,
        application_name=APPLICATION_NAME,
        error=MigrationError,
        connect_timeout=CONNECT_TIMEOUT_S,
    )
    with untraced():
        try:
            with conn:
                yield conn
        except psycopg.Error as exc:
            message = scrub_message(str(exc).strip(), dsn)
            raise MigrationError(f"{type(exc).__name__}: {message}") from None


def _lock(conn: psycopg.Connection[TupleRow]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))


def _exists(conn: psycopg.Connection[TupleRow], name: sql.Identifier) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name.as_string(conn),)).fetchone()
    return bool(row and row[0])


def _read_applied(conn: psycopg.Connection[TupleRow], target: _Target) -> list[int]:
    if not _exists(conn, target.history):
        return []
    query = sql.SQL("SELECT version FROM {} WHERE table_name = %s ORDER BY version").format(
        target.history
    )
    return [int(row[0]) for row in conn.execute(query, (target.table,))]


def _ensure_history(conn: psycopg.Connection[TupleRow], target: _Target) -> None:
    """Create the schema and history table when missing; caller holds the lock.

    Checked first rather than with IF NOT EXISTS alone: CREATE SCHEMA IF NOT EXISTS still needs
    the CREATE privilege on the database, which a role running an up-to-date check may lack.
    """
    if target.schema is not None:
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (target.schema,)
        ).fetchone()
        if not (row and row[0]):
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target.schema))
            )
    if not _exists(conn, target.history):
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {history} ("
                " table_name text NOT NULL,"
                " version integer NOT NULL,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (table_name, version))"
            ).format(history=target.history)
        )
        conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                target.history,
                sql.Literal(
                    "Schema migrations applied by otel-pg migrate (otel_pg_exporter), one row "
                    "per spans table and version."
                ),
            )
        )


@dataclass(frozen=True)
class MigrationResult:
    """What ``upgrade`` did: versions applied now, and objects found missing and recreated;
    ``partitioned`` is the table's layout (partitioned by day on started_at, or plain)."""

    applied: list[int]
    recreated: list[str]
    partitioned: bool = False


def migrate(
    dsn: str,
    *,
    schema: str | None = None,
    table: str = DEFAULT_TABLE,
    partitioned: bool = False,
) -> list[int]:
    """Apply the pending migrations to ``schema.table``; return the versions applied now.

    An empty list means the table was already up to date. Safe to run concurrently. A table
    or index dropped by hand is recreated (see ``upgrade``). ``partitioned`` creates the table
    partitioned by day on started_at (see ``upgrade``)."""
    return upgrade(dsn, schema=schema, table=table, partitioned=partitioned).applied


def upgrade(
    dsn: str,
    *,
    schema: str | None = None,
    table: str = DEFAULT_TABLE,
    partitioned: bool = False,
) -> MigrationResult:
    """Apply the pending migrations, and recreate what the applied ones made but is gone.

    When the history says a version is applied but the spans table, one of its indexes or
    query functions is missing (dropped by hand, a restore of part of a database), the
    applied migrations run again: each creates only what does not exist (functions are
    replaced), so no row is touched. ``recreated`` names what was found missing: the table
    alone when it was (its indexes and functions went with it).

    ``partitioned`` chooses the layout of a table created now: ``PARTITION BY RANGE
    (started_at)``, primary key ``(trace_id, span_id, started_at)``, partitions made at once by
    ``otel_pg_maintain`` (migration 0004). An existing table keeps the layout it has, read from
    the catalog; asking for the partitioned layout of an existing plain table is an error
    (converting it is a documented, manual operation).
    """
    target = _target(schema, table)
    migrations = available_migrations()
    applied_now: list[int] = []
    with connection(dsn) as conn:
        with conn.transaction():
            _lock(conn)
            _ensure_history(conn, target)
            done = set(_read_applied(conn, target))
            layout = _layout(conn, target)
        if layout is False and partitioned and done:
            raise MigrationError(
                f"table {target.describe()!r} already exists and is not partitioned: "
                "otel-pg migrate --partitioned chooses the layout of a new table only and "
                f"never converts one; see {PARTITIONS_DOC}, or drop --partitioned to upgrade "
                "it as it is"
            )
        target = replace(target, partitioned=partitioned if layout is None else layout)
        # A table dropped by hand must be back before later migrations build on it; the
        # other objects are checked once every migration has run.
        recreated = _recreate_missing(conn, target, migrations, [target.table]) if done else []
        for migration in migrations:
            if migration.version in done:
                continue
            with conn.transaction():
                _lock(conn)
                # Re-read under the lock: a concurrent run may have applied it meanwhile.
                done = set(_read_applied(conn, target))
                if migration.version in done:
                    continue
                if not done and _exists(conn, target.spans):
                    raise MigrationError(
                        f"table {target.describe()!r} already exists but is not recorded in "
                        f"{MIGRATIONS_TABLE}: otel-pg migrate never alters an existing table; "
                        "rename it or choose another table name"
                    )
                conn.execute(target.render(conn, migration.template, migration.filename))
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (table_name, version, name) VALUES (%s, %s, %s)"
                    ).format(target.history),
                    (target.table, migration.version, migration.name),
                )
            applied_now.append(migration.version)
            logger.info("Applied migration %s to %s", migration.filename, target.describe())
        if done:
            recreated += _recreate_missing(conn, target, migrations, target.objects())
        # Read again: a concurrent run may have created the table, in its layout.
        partitioned_now = bool(_layout(conn, target))
        if (applied_now or recreated) and partitioned_now:
            # A new (or recreated) partitioned table starts with its partitions.
            with conn.transaction():
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}(%s::regclass)").format(
                        target.qualified(MAINTAIN_FUNCTION)
                    ),
                    (target.spans.as_string(conn),),
                )
    return MigrationResult(applied_now, recreated, partitioned_now)


def _layout(conn: psycopg.Connection[TupleRow], target: _Target) -> bool | None:
    """Whether the spans table is partitioned (pg_class.relkind 'p'); None when it is missing."""
    row = conn.execute(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
        (target.spans.as_string(conn),),
    ).fetchone()
    return None if row is None else bool(row[0])


def _missing(conn: psycopg.Connection[TupleRow], target: _Target, names: list[str]) -> list[str]:
    """Those of ``names`` (the table, its indexes, its functions) that do not exist."""
    missing = []
    for name in names:
        lookup = "to_regproc" if name in target.functions() else "to_regclass"
        row = conn.execute(
            sql.SQL("SELECT {}(%s) IS NULL").format(sql.Identifier(lookup)),
            (target.qualified(name).as_string(conn),),
        ).fetchone()
        if row and row[0]:
            missing.append(name)
    return missing


def _recreate_missing(
    conn: psycopg.Connection[TupleRow],
    target: _Target,
    migrations: list[Migration],
    names: list[str],
) -> list[str]:
    """Run the applied migrations again when any of ``names`` is gone: each creates only what
    does not exist. The names found missing."""
    with conn.transaction():
        _lock(conn)
        missing = _missing(conn, target, names)
        if not missing:
            return []
        done = set(_read_applied(conn, target))
        for migration in migrations:
            if migration.version in done:
                conn.execute(target.render(conn, migration.template, migration.filename))
        logger.info(
            "%s was recorded as migrated but %s missing; recreated (empty if the table was)",
            target.describe(),
            ", ".join(missing) + (" was" if len(missing) == 1 else " were"),
        )
    return missing


def applied_versions(
    dsn: str, *, schema: str | None = None, table: str = DEFAULT_TABLE
) -> list[int]:
    """The versions recorded for ``schema.table``, ascending; empty when none or no history."""
    target = _target(schema, table)
    with connection(dsn) as conn:
        return _read_applied(conn, target)


def rollback(dsn: str, *, schema: str | None = None, table: str = DEFAULT_TABLE) -> None:
    """Drop the spans table and its history rows (and the history table once it is empty)."""
    target = _target(schema, table)
    template = _rollback_template()
    with connection(dsn) as conn, conn.transaction():
        _lock(conn)
        if _exists(conn, target.spans) and not _read_applied(conn, target):
            raise MigrationError(
                f"table {target.describe()!r} is not recorded in {MIGRATIONS_TABLE}: "
                "otel-pg rollback drops only what otel-pg migrate created"
            )
        conn.execute(target.render(conn, template, _ROLLBACK_FILE))
    logger.info("Rolled back %s", target.describe())
