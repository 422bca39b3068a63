"""The least-privilege reader role: who may run the ``query`` tool, and how to make one.

``role_problems`` lists what makes a role unfit to run SQL chosen by a model that span data may
have steered: superuser, BYPASSRLS, CREATEROLE, CREATEDB or REPLICATION, membership in a
predefined role that reads or writes server files, runs programs, signals other sessions or
writes every table, and any way to write or own the spans table. Every role the role can become
(``pg_has_role(..., 'MEMBER')``, itself included) is checked, since ``set_config('role', ...)``
reaches them. ``grant_reader`` creates a role with none of that, and ``readiness`` is what
``otel-pg mcp --check`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import QueryError
from otel_pg_exporter.query.traces import Target, connect
from otel_pg_exporter.schema.table import function_names

READER_STATEMENT_TIMEOUT = "10s"
RISKY_ROLES = (
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
    "pg_write_all_data",
    "pg_checkpoint",
)
"""Predefined roles a reader must not be a member of."""
RISKY_ATTRIBUTES = (
    ("rolsuper", "is a superuser"),
    ("rolbypassrls", "has BYPASSRLS (reads past row security)"),
    ("rolcreaterole", "has CREATEROLE (can create and grant roles)"),
    ("rolcreatedb", "has CREATEDB"),
    ("rolreplication", "has REPLICATION"),
)
FIX = (
    "create a least-privilege reader with `otel-pg grant reader NAME` (run it with an admin DSN) "
    "and give otel-pg mcp that role's DSN; the other tools work with any role"
)

_ROLE_CHECK = """
    WITH target AS (SELECT to_regclass(%(table)s) AS oid),
    reach AS (
        SELECT r.* FROM pg_roles r
         WHERE pg_has_role(coalesce(%(role)s, current_user)::name, r.oid, 'MEMBER')
    )
    SELECT coalesce(%(role)s, current_user)::text AS role,
           (SELECT oid FROM target) IS NOT NULL AS table_exists,
           {attributes},
           array(SELECT rolname::text FROM reach WHERE rolname = ANY(%(risky)s)
                  ORDER BY rolname) AS risky_members,
           array(SELECT rolname::text || ':' || privilege FROM reach,
                        unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS privilege,
                        target
                  WHERE target.oid IS NOT NULL
                    AND (has_table_privilege(reach.oid, target.oid, privilege)
                         OR (privilege IN ('INSERT', 'UPDATE')
                             AND has_any_column_privilege(reach.oid, target.oid, privilege)))
                  ORDER BY 1) AS writers,
           array(SELECT rolname::text FROM reach, target, pg_class c
                  WHERE c.oid = target.oid AND c.relowner = reach.oid) AS owners
"""


def _qualified(target: Target) -> sql.Identifier:
    return (
        sql.Identifier(target.schema, target.table)
        if target.schema
        else sql.Identifier(target.table)
    )


def role_problems(
    conn: psycopg.Connection[Any], target: Target, role: str | None = None
) -> list[str]:
    """Why ``role`` (default: the connection's) must not run model-chosen SQL; empty if fit."""
    attributes = sql.SQL(", ").join(
        sql.SQL("array(SELECT rolname::text FROM reach WHERE {} ORDER BY rolname) AS {}").format(
            sql.Identifier(column), sql.Identifier(column)
        )
        for column, _ in RISKY_ATTRIBUTES
    )
    statement = sql.SQL(_ROLE_CHECK).format(attributes=attributes)
    params = {
        "table": _qualified(target).as_string(conn),
        "role": role,
        "risky": list(RISKY_ROLES),
    }
    with untraced(), conn.cursor(row_factory=dict_row) as cur:
        try:
            found = cur.execute(statement, params).fetchone()
        except psycopg.Error as exc:
            raise QueryError(f"cannot check the role: {redact_dsn(str(exc))}") from None
    if found is None:
        return [f"role {role!r} does not exist"]
    name = found["role"]
    problems = []

    def who(roles: list[str]) -> str:
        via = [r for r in roles if r != name]
        return f" (through role {', '.join(repr(r) for r in via)})" if via else ""

    if found["rolsuper"]:
        return [f"role {name!r} is a superuser{who(found['rolsuper'])}"]
    for column, meaning in RISKY_ATTRIBUTES:
        if found[column]:
            problems.append(f"role {name!r} {meaning}{who(found[column])}")
    for member in found["risky_members"]:
        problems.append(f"role {name!r} is a member of {member}")
    if not found["table_exists"]:
        problems.append(f"there is no spans table {target.table!r} to check: run `otel-pg migrate`")
    writes: dict[str, list[str]] = {}
    for entry in found["writers"]:
        holder, _, privilege = entry.rpartition(":")
        writes.setdefault(privilege, []).append(holder)
    if writes:
        holders = sorted({h for hs in writes.values() for h in hs})
        problems.append(
            f"role {name!r} can {'/'.join(sorted(writes))} {target.table!r}{who(holders)}"
        )
    if found["owners"]:
        problems.append(f"role {name!r} owns {target.table!r}{who(found['owners'])}")
    return problems


@dataclass(frozen=True)
class Granted:
    """What ``grant_reader`` did, and where the role connects."""

    role: str
    created: bool
    table: str
    functions: list[str]
    conninfo: dict[str, Any]


def grant_reader(admin_dsn: str, target: Target, role: str, password: str | None) -> Granted:
    """Create ``role`` (LOGIN, no other attribute) if missing, or check an existing one; give
    it CONNECT, USAGE on the table's schema, SELECT on the table, EXECUTE on its query
    functions, ``default_transaction_read_only = on`` and a statement timeout; set its password
    (sent as a SCRAM verifier, never in the clear) when one is given. An existing role with any
    of ``role_problems`` is left alone: QueryError."""
    if not role or len(role.encode("utf-8")) > 63 or "\x00" in role:
        raise ValueError(f"a role name is 1 to 63 bytes, not {role!r}")
    ident = sql.Identifier(role)
    with connect(admin_dsn) as conn, untraced():
        try:
            found = conn.execute(
                "SELECT c.oid::regclass::text, n.nspname, current_database()"
                "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass(%s)",
                (_qualified(target).as_string(conn),),
            ).fetchone()
            if found is None:
                raise QueryError(f"no spans table {target.table!r}: run `otel-pg migrate` first")
            table, schema, database = found
            exists = conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists is not None:
                problems = role_problems(conn, target, role)
                if problems:
                    raise QueryError(
                        f"role {role!r} exists and is unfit for a reader: "
                        + "; ".join(problems)
                        + ". Choose another name."
                    )
            functions = [
                str(row[0])
                for row in conn.execute(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p"
                    " WHERE p.pronamespace = %s::regnamespace AND p.proname = ANY(%s)"
                    " ORDER BY p.proname",
                    (
                        sql.Identifier(schema).as_string(conn),
                        list(function_names(target.table).values()),
                    ),
                )
            ]
            with conn.transaction():
                if exists is None:
                    conn.execute(
                        sql.SQL(
                            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "NOBYPASSRLS NOREPLICATION"
                        ).format(ident)
                    )
                else:
                    conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(ident))
                if password is not None:
                    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode())
                    conn.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                            ident, sql.Literal(verifier.decode())
                        )
                    )
                for statement in (
                    "ALTER ROLE {role} SET default_transaction_read_only = on",
                    f"ALTER ROLE {{role}} SET statement_timeout = '{READER_STATEMENT_TIMEOUT}'",
                    "GRANT CONNECT ON DATABASE {database} TO {role}",
                    "GRANT USAGE ON SCHEMA {schema} TO {role}",
                    "GRANT SELECT ON {table} TO {role}",
                ):
                    conn.execute(
                        sql.SQL(statement).format(
                            role=ident,
                            database=sql.Identifier(database),
                            schema=sql.Identifier(schema),
                            table=sql.SQL(table),
                        )
                    )
                for function in functions:
                    conn.execute(
                        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                            sql.SQL(function), ident
                        )
                    )
        except psycopg.Error as exc:
            raise QueryError(f"grant reader {role!r}: {redact_dsn(str(exc))}") from None
        info = conn.info.get_parameters()
        info.update(host=conn.info.host, port=str(conn.info.port), dbname=database, user=role)
    return Granted(role, exists is None, table, functions, info)


@dataclass
class Check:
    """One line of ``otel-pg mcp --check``."""

    name: str
    ok: bool
    detail: str


@dataclass
class Readiness:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def readiness(dsn: str, target: Target) -> Readiness:
    """Whether the database answers, the table and its functions are readable, and the
    connection's role is a safe reader (``role_problems`` empty, read-only by default)."""
    result = Readiness()
    try:
        with connect(dsn) as conn, untraced():
            version = conn.execute("SHOW server_version").fetchone()
            user = conn.info.user
            result.checks.append(
                Check(
                    "database",
                    True,
                    f"{redact_dsn(dsn) or 'PG* defaults'} as {user!r}, "
                    f"PostgreSQL {version[0] if version else '?'}",
                )
            )
            table = conn.execute(
                "SELECT c.oid::regclass::text, has_table_privilege(c.oid, 'SELECT'),"
                "       c.relnamespace FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (_qualified(target).as_string(conn),),
            ).fetchone()
            if table is None:
                result.checks.append(
                    Check("table", False, f"no table {target.table!r}: run `otel-pg migrate`")
                )
            else:
                result.checks.append(
                    Check(
                        "table",
                        bool(table[1]),
                        f"{table[0]}" + ("" if table[1] else f": {user!r} cannot SELECT it"),
                    )
                )
                names = list(function_names(target.table).values())
                callable_ = {
                    str(row[0])
                    for row in conn.execute(
                        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = %s::oid"
                        "   AND p.proname = ANY(%s) AND has_function_privilege(p.oid, 'EXECUTE')",
                        (table[2], names),
                    )
                }
                missing = [name for name in names if name not in callable_]
                result.checks.append(
                    Check(
                        "functions",
                        not missing,
                        f"{len(callable_)} of {len(names)} query functions callable"
                        + (
                            f"; missing: {', '.join(missing)} (run `otel-pg migrate`)"
                            if missing
                            else ""
                        ),
                    )
                )
            problems = role_problems(conn, target)
            settings = conn.execute(
                "SELECT current_setting('default_transaction_read_only'),"
                "       current_setting('statement_timeout')"
            ).fetchone()
            if settings is not None and settings[0] != "on":
                problems.append(f"role {user!r} is not read-only by default")
            result.checks.append(
                Check(
                    "reader role",
                    not problems,
                    f"{user!r} may serve the query tool (read-only by default, statement_timeout "
                    f"{settings[1] if settings else '?'})"
                    if not problems
                    else "; ".join(problems) + f"; the query tool will refuse to run. Fix: {FIX}",
                )
            )
    except QueryError as exc:
        result.checks.append(Check("database", False, str(exc)))
    return result
