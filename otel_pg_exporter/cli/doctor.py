"""``otel-pg doctor``: everything that decides whether spans reach the table, checked at once.

Each check is one line ``ok|warn|FAIL  <check>: <finding>``, and every problem has its fix on
the next line. The database checks run only once a connection is made; the settings and the
spool folders of this machine are checked in any case. Exit 1 when anything FAILs. No
password is printed: DSNs go through ``redact_dsn`` and libpq's messages are scrubbed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TextIO

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter._dsn import conninfo_problem, redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.cli.common import (
    EXIT_DATABASE_ERROR,
    EXIT_OK,
    Subcommands,
    settings_of,
    target_options,
)
from otel_pg_exporter.cli.spool import (
    SpoolFolder,
    human_age,
    human_bytes,
    resolved_spool_dir,
    setting_source,
    spool_folders,
)
from otel_pg_exporter.errors import OtelPgError
from otel_pg_exporter.export import fastpath
from otel_pg_exporter.export.exporter import spool_folder_key
from otel_pg_exporter.schema.migrations import applied_versions, available_migrations
from otel_pg_exporter.schema.table import COLUMNS, MIGRATIONS_TABLE, index_names
from otel_pg_exporter.settings import ExporterSettings, setting

APPLICATION_NAME = "otel-pg doctor"
MIN_SERVER_VERSION = 14  # the query functions need it
ROUND_TRIPS = 5
SLOW_ROUND_TRIP_MS = 50.0
STATEMENT_TIMEOUT = "15s"
DAYS = 7
# Passwords shorter than this are not scrubbed by value from messages: they would mangle
# every word containing them (libpq never echoes a password anyway).
_SCRUB_MIN_CHARS = 4

OK, WARN, FAIL = "ok", "warn", "FAIL"

# The settings the exporter and its batch processor read, in the order shown.
_PIPELINE_SETTINGS = (
    "enabled",
    *(field.name for field in dataclasses.fields(ExporterSettings)),
    "scrub",
    "scrub_patterns",
    "scrub_allow",
    "schedule_delay_millis",
    "max_queue_size",
    "max_export_batch_size",
)


@dataclass(frozen=True)
class Check:
    """One finding: ``status`` is ok, warn or FAIL; ``fix`` says what to do about a problem."""

    name: str
    status: str
    finding: str
    fix: str | None = None


class ConnectionProblem(OtelPgError):
    """No connection to the database; the message holds no password."""


# --- connecting without showing a password ------------------------------------------------


def scrub(text: str, dsn: str) -> str:
    """``text`` with DSNs redacted and the connection's password (from the DSN or
    ``PGPASSWORD``) replaced by ``***`` wherever it appears."""
    text = redact_dsn(text)
    passwords = [os.environ.get("PGPASSWORD")]
    with contextlib.suppress(psycopg.Error):
        passwords.append(conninfo_to_dict(dsn).get("password"))  # type: ignore[arg-type]
    for password in passwords:
        if isinstance(password, str) and len(password) >= _SCRUB_MIN_CHARS:
            text = text.replace(password, "***")
    return text


def _one_line(exc: BaseException, dsn: str) -> str:
    lines = (" ".join(line.split()) for line in str(exc).splitlines())
    text = "; ".join(line for line in lines if line) or type(exc).__name__
    return scrub(text, dsn)


def shown_dsn(dsn: str) -> str:
    return repr(redact_dsn(dsn)) if dsn.strip() else "the libpq defaults (PG* variables)"


def connect(dsn: str, timeout_s: float) -> psycopg.Connection[TupleRow]:
    """An autocommit connection, or ConnectionProblem saying why not (password-free)."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ConnectionProblem(conninfo_problem(dsn, exc)) from None
    with untraced():
        try:
            return psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=max(2, round(timeout_s)),
                application_name=APPLICATION_NAME,
            )
        except psycopg.Error as exc:
            raise ConnectionProblem(
                f"cannot connect to {shown_dsn(dsn)}: {_one_line(exc, dsn)}"
            ) from None


# --- the checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """The spans table as the exporter names it, and how to say it in messages and fixes."""

    settings: ExporterSettings
    args: argparse.Namespace

    @property
    def table(self) -> sql.Identifier:
        return self.qualified(self.settings.table)

    def qualified(self, name: str) -> sql.Identifier:
        schema = self.settings.schema
        return sql.Identifier(schema, name) if schema else sql.Identifier(name)

    def describe(self) -> str:
        schema, table = self.settings.schema, self.settings.table
        return f"{schema}.{table}" if schema else table

    def command(self, name: str) -> str:
        """``otel-pg <name>`` with the target options this doctor run was given."""
        words = ["otel-pg", name]
        if self.args.dsn is not None:
            words.append("--dsn ...")
        if self.args.schema is not None:
            words.append(f"--schema {self.args.schema}")
        if self.args.table is not None:
            words.append(f"--table {self.args.table}")
        return " ".join(words)


def _dsn_check(target: _Target, environ: Mapping[str, str]) -> Check:
    dsn = target.settings.dsn
    source, _ = setting_source(setting("dsn"), target.args.dsn, environ)
    if not dsn.strip():
        shown = ", ".join(
            f"{name}={environ[name]}"
            for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
            if environ.get(name)
        )
        return Check(
            "dsn",
            OK,
            f"libpq defaults ({shown or 'no PG* variables set: local socket, own user name'})",
        )
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        return Check(
            "dsn",
            FAIL,
            conninfo_problem(dsn, exc),
            f"correct the connection string in {'--dsn' if source == 'argument' else source}",
        )
    return Check("dsn", OK, f"{redact_dsn(dsn)!r} (from {source})")


def _database_checks(
    conn: psycopg.Connection[TupleRow], target: _Target, connect_ms: float
) -> Iterator[Check]:
    round_trips = []
    for _ in range(ROUND_TRIPS):
        started = time.perf_counter()
        conn.execute("SELECT 1")
        round_trips.append((time.perf_counter() - started) * 1000)
    median_ms = statistics.median(round_trips)
    row = conn.execute(
        "SELECT current_user, current_database(), current_schema(),"
        " current_setting('server_version')"
    ).fetchone()
    assert row is not None
    role, database, current_schema, version_text = row
    info = conn.info
    finding = (
        f"connected as {role} to database {database} on {info.host}:{info.port} in "
        f"{connect_ms:.1f} ms; round trip {median_ms:.2f} ms (median of {ROUND_TRIPS} SELECT 1)"
    )
    if median_ms > SLOW_ROUND_TRIP_MS:
        yield Check(
            "connection",
            WARN,
            finding,
            "each export waits several round trips: run the database nearer the application",
        )
    else:
        yield Check("connection", OK, finding)
    yield _version_check(info.server_version, str(version_text))
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)))

    row = conn.execute(
        "SELECT c.oid::int8, n.nspname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        (target.table.as_string(conn),),
    ).fetchone()
    oid: int | None = row[0] if row else None
    schema: str | None = row[1] if row else (target.settings.schema or current_schema)
    yield _schema_check(conn, target, oid is not None, str(role))
    yield _table_check(conn, target, oid, str(database))
    yield _privileges_check(conn, target, oid, schema, str(role), str(database))
    if oid is not None:
        yield from _size_checks(conn, target, oid, str(role))


def _version_check(number: int, text: str) -> Check:
    major = number // 10000 if number >= 100000 else number // 100
    finding = f"PostgreSQL {text}"
    if major < MIN_SERVER_VERSION:
        return Check(
            "server version",
            FAIL,
            f"{finding}: the query functions need PostgreSQL {MIN_SERVER_VERSION} or newer",
            f"upgrade the server to PostgreSQL {MIN_SERVER_VERSION} or newer",
        )
    return Check("server version", OK, finding)


def _schema_check(
    conn: psycopg.Connection[TupleRow], target: _Target, table_exists: bool, role: str
) -> Check:
    available = [migration.version for migration in available_migrations()]
    history = target.qualified(MIGRATIONS_TABLE)
    row = conn.execute(
        "SELECT has_table_privilege(c, 'SELECT') FROM to_regclass(%s) AS c WHERE c IS NOT NULL",
        (history.as_string(conn),),
    ).fetchone()
    if row is not None and not row[0]:
        return Check(
            "schema",
            WARN,
            f"cannot read {history.as_string(conn)} as role {role} (no SELECT privilege): "
            "the applied migrations are unknown",
            f"run otel-pg doctor as the table's owner, or GRANT SELECT ON "
            f"{history.as_string(conn)} TO {sql.Identifier(role).as_string(conn)}",
        )
    try:
        applied = (
            applied_versions(
                target.settings.dsn, schema=target.settings.schema, table=target.settings.table
            )
            if row is not None
            else []
        )
    except OtelPgError as exc:
        return Check("schema", WARN, f"cannot read the migration history: {exc}")
    pending = [version for version in available if version not in applied]
    unknown = [version for version in applied if version not in available]
    listed = ", ".join(map(str, applied)) or "none"
    if pending:
        why = "" if table_exists else f"; table {target.describe()!r} does not exist"
        return Check(
            "schema",
            FAIL,
            f"migration(s) {', '.join(map(str, pending))} pending (applied: {listed}){why}",
            f"run {target.command('migrate')}",
        )
    if unknown:
        return Check(
            "schema",
            WARN,
            f"migration(s) {', '.join(map(str, unknown))} applied by a newer otel_pg_exporter "
            f"than this one (which knows up to {max(available)})",
            "upgrade otel_pg_exporter here to the version that migrated the database",
        )
    return Check("schema", OK, f"migration(s) {listed} applied: up to date")


def _table_check(
    conn: psycopg.Connection[TupleRow], target: _Target, oid: int | None, database: str
) -> Check:
    if oid is None:
        return Check(
            "table",
            FAIL,
            f"{target.describe()!r} does not exist in database {database}",
            f"run {target.command('migrate')}",
        )
    found: dict[str, str] = dict(
        conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        ).fetchall()
    )
    problems = [
        f"column {name} missing" if name not in found else f"{name} is {found[name]}, not {kind}"
        for name, kind in COLUMNS
        if found.get(name) != kind
    ]
    if problems:
        return Check(
            "table",
            FAIL,
            f"{target.describe()!r} is not the exporter's table: {'; '.join(problems)}",
            "choose another --table (or OTEL_EXPORTER_POSTGRES_TABLE) and run otel-pg migrate "
            "for it; otel-pg migrate never alters an existing table",
        )
    indexes = {
        name
        for (name,) in conn.execute(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s",
            (oid,),
        )
    }
    missing = [name for name in index_names(target.settings.table).values() if name not in indexes]
    if missing:
        return Check(
            "table",
            WARN,
            f"{target.describe()!r} lacks index(es) {', '.join(missing)}: queries by time, "
            "service or execution read the whole table",
            f"run {target.command('migrate')} (it recreates missing indexes)",
        )
    return Check(
        "table",
        OK,
        f"{target.describe()!r}: {len(COLUMNS)} columns and {len(indexes)} indexes as expected",
    )


def _privileges_check(
    conn: psycopg.Connection[TupleRow],
    target: _Target,
    oid: int | None,
    schema: str | None,
    role: str,
    database: str,
) -> Check:
    def ident(*names: str) -> str:
        return sql.Identifier(*names).as_string(conn)

    def has(query: str, *params: object) -> bool:
        row = conn.execute(query, params).fetchone()
        return bool(row and row[0])

    grants: list[str] = []
    missing_needed: list[str] = []
    missing_late: list[str] = []
    table_name = ident(schema, target.settings.table) if schema else ident(target.settings.table)
    shown = f"{schema}.{target.settings.table}" if schema else target.settings.table
    if oid is not None:
        lacking = [
            privilege
            for privilege in ("INSERT", "SELECT", "UPDATE")
            if not has("SELECT has_table_privilege(%s::oid, %s)", oid, privilege)
        ]
        if lacking:
            grants.append(f"GRANT {', '.join(lacking)} ON {table_name} TO {ident(role)}")
        missing_needed += [f"{p} on {shown}" for p in lacking if p == "INSERT"]
        missing_late += [f"{p} on {shown}" for p in lacking if p != "INSERT"]
    if not has("SELECT has_database_privilege(current_database(), 'TEMPORARY')"):
        grants.append(f"GRANT TEMPORARY ON DATABASE {ident(database)} TO {ident(role)}")
        missing_needed.append(f"TEMPORARY on database {database} (for the staging table)")
    schema_exists = schema is not None and has(
        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", schema
    )
    if (
        schema is not None
        and schema_exists
        and not has("SELECT has_schema_privilege(%s, 'USAGE')", schema)
    ):
        grants.append(f"GRANT USAGE ON SCHEMA {ident(schema)} TO {ident(role)}")
        missing_needed.append(f"USAGE on schema {schema}")
    fix = "as the table's owner: " + "; ".join(grants) if grants else None
    if missing_needed:
        return Check(
            "privileges",
            FAIL,
            f"role {role} lacks {', '.join(missing_needed + missing_late)}: "
            "the exporter cannot store spans",
            fix,
        )
    if missing_late:
        return Check(
            "privileges",
            WARN,
            f"role {role} lacks {', '.join(missing_late)}: attributes learned after a span "
            "was stored (Sentry event ids) cannot be added to its row",
            fix,
        )
    on_table = (
        f"INSERT, SELECT, UPDATE on {shown}"
        if oid is not None
        else "(table privileges not checked: no table)"
    )
    on_schema = f", USAGE on schema {schema}" if schema_exists else ""
    return Check(
        "privileges",
        OK,
        f"role {role} has {on_table}, TEMPORARY on database {database}{on_schema}",
    )


def _size_checks(
    conn: psycopg.Connection[TupleRow], target: _Target, oid: int, role: str
) -> Iterator[Check]:
    # Summed over the partitions of a partitioned table (migrate --partitioned), whose parent
    # holds no rows of its own; a plain table is its own only member.
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0),"
        " coalesce(sum(pg_indexes_size(c.oid)), 0),"
        " CASE WHEN coalesce(max(c.reltuples), -1) < 0 THEN -1"
        " ELSE sum(greatest(c.reltuples, 0)) END::int8"
        " FROM pg_class c WHERE (c.oid = %s::oid AND c.relkind <> 'p')"
        " OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf)",
        (oid, oid),
    ).fetchone()
    assert row is not None
    total, indexes, estimate = int(row[0]), int(row[1]), int(row[2])
    rows = (
        "row count not estimated yet (never vacuumed or analyzed)"
        if estimate < 0
        else f"about {estimate} rows (planner estimate)"
    )
    yield Check(
        "table size",
        OK,
        f"{human_bytes(total)} in all: table {human_bytes(total - indexes)}, "
        f"indexes {human_bytes(indexes)}; {rows}",
    )
    yield _guarded("rows per day", lambda: _rows_per_day(conn, target), target, role)
    yield _guarded("oldest row", lambda: _oldest_row(conn, target), target, role)


def _guarded(name: str, check: Callable[[], str], target: _Target, role: str) -> Check:
    """Run a read of the table: a refusal or a timeout is a warning, not the end of doctor."""
    try:
        finding = check()
    except psycopg.errors.InsufficientPrivilege:
        return Check(
            name,
            WARN,
            f"not read: role {role} may not SELECT from {target.describe()!r}",
            "run otel-pg doctor as a role that may read the table",
        )
    except psycopg.errors.QueryCanceled:
        return Check(name, WARN, f"not read: took over {STATEMENT_TIMEOUT}")
    except psycopg.DatabaseError as exc:
        return Check(name, WARN, f"not read: {_one_line(exc, target.settings.dsn)}")
    return Check(name, OK, finding)


def _rows_per_day(conn: psycopg.Connection[TupleRow], target: _Target) -> str:
    # The WHERE is a range on created_at: its index serves it.
    query = sql.SQL(
        "SELECT (created_at AT TIME ZONE 'UTC')::date, count(*) FROM {table} "
        "WHERE created_at >= ((now() AT TIME ZONE 'UTC')::date - {back})::timestamp "
        "AT TIME ZONE 'UTC' GROUP BY 1"
    ).format(table=target.table, back=sql.Literal(DAYS - 1))
    counts: dict[date, int] = {day: int(count) for day, count in conn.execute(query)}
    row = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()
    assert row is not None
    today: date = row[0]
    days = [today - timedelta(days=back) for back in range(DAYS - 1, -1, -1)]
    listed = ", ".join(f"{day:%m-%d} {counts.get(day, 0)}" for day in days)
    return f"{listed} (UTC, by created_at); {sum(counts.values())} in {DAYS} days"


def _oldest_row(conn: psycopg.Connection[TupleRow], target: _Target) -> str:
    row = conn.execute(sql.SQL("SELECT min(created_at) FROM {}").format(target.table)).fetchone()
    oldest: datetime | None = row[0] if row else None
    if oldest is None:
        return "no rows yet"
    age = (datetime.now(timezone.utc) - oldest).total_seconds()
    return f"{oldest.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({human_age(age)} ago)"


def _value(name: str, value: object) -> str:
    if name == "dsn":
        return repr(redact_dsn(str(value))) if value else "'' (libpq PG* variables)"
    if name == "spool_dir" and value is None:
        return "off"
    if isinstance(value, tuple):
        return ", ".join(map(repr, value)) if value else "none"
    if value is None:
        return "not set"
    return repr(value) if isinstance(value, str) else str(value)


def _fast_path_check(enabled: bool) -> Check:
    """Whether this installation maps spans with the compiled fast path."""
    status = fastpath.fast_path_status(enabled)
    if fastpath.FAST_PATH_BUILT or not enabled:
        return Check("fast path", OK, status)
    return Check(
        "fast path",
        WARN,
        status,
        "install a C compiler (gcc or clang) and the Python headers, then reinstall "
        "otel_pg_exporter from source; rows are the same either way, only slower to make",
    )


def _settings_checks(target: _Target, environ: Mapping[str, str]) -> Iterator[Check]:
    explicit = {
        "dsn": target.args.dsn,
        "schema": target.args.schema,
        "table": target.args.table,
    }
    enabled_source, _ = setting_source(setting("enabled"), None, environ)
    if setting("enabled").resolve(None, environ):
        yield Check("tracing", OK, f"{ev.ENABLE_DB_TRACING} is on (from {enabled_source})")
    else:
        yield Check(
            "tracing",
            WARN,
            f"{ev.ENABLE_DB_TRACING} is off in this environment: nothing is written",
            f"set {ev.ENABLE_DB_TRACING}=true in the application's environment "
            "(doctor reads the shell it runs in)",
        )
    yield _fast_path_check(bool(setting("fast_path").resolve(None, environ)))
    for name in _PIPELINE_SETTINGS:
        declared = setting(name)
        value = declared.resolve(explicit.get(name), environ)
        source, problem = setting_source(declared, explicit.get(name), environ)
        if problem is not None:
            variable = problem.split(" ", 1)[0]
            yield Check(
                f"setting {name}",
                WARN,
                f"{_value(name, value)} (default; {problem})",
                f"correct or unset {variable}",
            )
        else:
            yield Check(f"setting {name}", OK, f"{_value(name, value)} (from {source})")


def _spool_checks(target: _Target, environ: Mapping[str, str]) -> Iterator[Check]:
    spool_dir, source = resolved_spool_dir(environ)
    variable = ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR
    if spool_dir is None:
        yield Check(
            "spool dir",
            WARN,
            f"off ({variable} is empty): spans are dropped while the database is down",
            f"unset {variable} (default: the per-user cache folder) or set it to a folder",
        )
        return
    try:
        folders = spool_folders(spool_dir)
    except OtelPgError as exc:
        yield Check("spool dir", WARN, str(exc), f"check the permissions of {spool_dir}")
        return
    if not os.path.isdir(spool_dir):
        yield Check("spool dir", OK, f"{spool_dir} (from {source}); nothing spooled yet")
        return
    waiting = sum(folder.rows for folder in folders)
    ours = spool_folder_key(target.settings.dsn, target.settings.schema, target.settings.table)
    yield Check(
        "spool dir",
        OK,
        f"{spool_dir} (from {source}); {len(folders)} target folder(s), {waiting} rows "
        f"waiting; this target's folder is {ours}",
    )
    for folder in folders:
        if folder.segments:
            yield _folder_check(folder, folder.key == ours, target)


def _folder_check(folder: SpoolFolder, is_target: bool, target: _Target) -> Check:
    name = f"spool {folder.key}"
    which = " (this target)" if is_target else ""
    owner = (
        "owner alive"
        if folder.held_segments == folder.segments
        else "owner alive for some segments"
        if folder.held_segments
        else "no live owner"
    )
    age = human_age(folder.oldest_age_s or 0.0)
    finding = (
        f"{folder.rows} rows in {folder.segments} segment(s), {human_bytes(folder.bytes)}, "
        f"oldest {age} old, {owner}{which}"
    )
    if not folder.orphaned_rows:
        fix = (
            "spans waiting: their live exporter replays them once the database answers "
            "(otel-pg spool replay takes only orphaned segments)"
        )
    elif is_target:
        fix = f"spans waiting: run {target.command('spool replay')}"
    else:
        fix = (
            "spans waiting: run otel-pg spool replay with the --dsn/--schema/--table of their "
            "target (otel-pg spool lists the folders)"
        )
    return Check(name, WARN, finding, fix)


def run_checks(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order printed."""
    environ = os.environ if environ is None else environ
    settings = settings_of(args)
    target = _Target(settings, args)
    checks = [_dsn_check(target, environ)]
    if checks[0].status != FAIL:
        started = time.perf_counter()
        try:
            conn = connect(settings.dsn, settings.timeout_s)
        except OtelPgError as exc:
            checks.append(
                Check(
                    "connection",
                    FAIL,
                    str(exc),
                    "start the database, or correct host, port, user and password in the DSN "
                    f"(--dsn, {ev.OTEL_EXPORTER_POSTGRES_DSN}, DATABASE_URL or PG* variables)",
                )
            )
        else:
            connect_ms = (time.perf_counter() - started) * 1000
            try:
                with untraced(), conn:
                    for check in _database_checks(conn, target, connect_ms):
                        checks.append(check)
            except (psycopg.Error, OtelPgError) as exc:
                checks.append(
                    Check(
                        "database",
                        FAIL,
                        f"checks stopped: {_one_line(exc, settings.dsn)}",
                        "run otel-pg doctor again; if it persists, read the server's log",
                    )
                )
    checks += _settings_checks(target, environ)
    checks += _spool_checks(target, environ)
    return checks


def _run_doctor(args: argparse.Namespace, out: TextIO) -> int:
    checks = run_checks(args)
    ok = not any(check.status == FAIL for check in checks)
    if args.json:
        document = {"ok": ok, "checks": [dataclasses.asdict(check) for check in checks]}
        print(json.dumps(document, indent=2), file=out)
    else:
        for check in checks:
            print(f"{check.status:<4}  {check.name}: {check.finding}", file=out)
            if check.fix:
                print(f"  fix: {check.fix}", file=out)
        failures = sum(check.status == FAIL for check in checks)
        warnings = sum(check.status == WARN for check in checks)
        print(f"{failures} failure(s), {warnings} warning(s)", file=out)
    return EXIT_OK if ok else EXIT_DATABASE_ERROR


def add_doctor(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "doctor",
        parents=[target_options()],
        help="check the database, table, privileges, settings and spool in one go",
        description=(
            "Check everything that decides whether spans reach the table: connection and "
            "latency, server version, migrations, privileges, table size, the settings as "
            "resolved here, and this machine's spool folders. Exit 1 when anything FAILs."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=_run_doctor)
