"""The ``query`` tool's SQL runner: model-chosen SQL, run so that it can only read.

Layers, each enough on its own for most attempts:

1. the role (``reader.role_problems``): refused outright unless the connection's role, and
   every role it can become, is a plain reader that cannot write or own the spans table;
2. one statement, and only a query: the SQL becomes the body of ``DECLARE ... CURSOR FOR``,
   sent with the extended query protocol, which refuses several statements ("cannot insert
   multiple commands into a prepared statement"); DECLARE itself takes only SELECT, VALUES or
   TABLE, and refuses data-modifying statements in WITH. (A plain ``conn.execute(sql)`` without
   parameters would not do: psycopg sends it with the simple query protocol, which runs
   ``SELECT 1; DELETE ...`` whole.)
3. ``BEGIN READ ONLY`` with transaction-local (``SET LOCAL``) statement, lock and idle
   timeouts, always rolled back, on a connection of its own that is closed afterwards, so no
   setting outlives the call; a query that changes a setting anyway (``set_config``) or takes
   an advisory lock is refused after the fact;
4. bounded: rows are fetched in small batches up to a row cap and a character cap, and a
   watchdog cancels the query from the client side when the timeout has passed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import QueryError
from otel_pg_exporter.mcp.output import dumps, shorten
from otel_pg_exporter.mcp.reader import FIX, role_problems
from otel_pg_exporter.query.traces import Target, connect

CURSOR = "otel_pg_mcp_query"
MAX_SQL_CHARS = 20_000
BATCH = 25


class QueryRefused(QueryError):
    """The query tool will not run this SQL, or not for this role."""


@dataclass(frozen=True)
class Limits:
    timeout_ms: int = 5_000
    lock_timeout_ms: int = 1_000
    idle_timeout_ms: int = 10_000
    max_rows: int = 200
    max_chars: int = 20_000


@dataclass
class Result:
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    more: str | None = None  # why rows stopped before the end, if they did
    elapsed_ms: float = 0.0


def _settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {
        str(name): str(value)
        for name, value in conn.execute("SELECT name, setting FROM pg_settings")
    }


def run_readonly(dsn: str, target: Target, statement: str, limits: Limits) -> Result:
    """Rows of ``statement`` (one read-only query) as the connection's role; QueryRefused when
    the role could do harm or the SQL is not one query, QueryError for what PostgreSQL refused."""
    if not statement.strip():
        raise ValueError("the query is empty: give one SELECT statement")
    if len(statement) > MAX_SQL_CHARS:
        raise ValueError(f"the query is longer than {MAX_SQL_CHARS:,} characters")
    started = time.monotonic()
    with connect(dsn) as conn, untraced():
        problems = role_problems(conn, target)
        if problems:
            raise QueryRefused(
                "query refused: the connection's role could do harm ("
                + "; ".join(problems)
                + f"). {FIX[0].upper()}{FIX[1:]}."
            )
        watchdog = threading.Timer(limits.timeout_ms / 1000 + 1.0, conn.cancel_safe)
        try:
            conn.execute("BEGIN READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('lock_timeout', %s, true),"
                " set_config('idle_in_transaction_session_timeout', %s, true)",
                (
                    f"{limits.timeout_ms}ms",
                    f"{limits.lock_timeout_ms}ms",
                    f"{limits.idle_timeout_ms}ms",
                ),
            )
            before = _settings(conn)
            watchdog.start()
            result = _fetch(conn, statement, limits)
            changed = sorted(k for k, v in _settings(conn).items() if before.get(k) != v)
            locks = conn.execute(
                "SELECT count(*) FROM pg_locks"
                " WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
            ).fetchone()
            if locks and locks[0]:
                raise QueryRefused(
                    "query refused: it took advisory lock(s); the query tool runs queries that "
                    "read, and the locks end with the call's own connection"
                )
            if changed:
                raise QueryRefused(
                    f"query refused: it changed the setting(s) {', '.join(changed)}; the query "
                    "tool runs queries that read, and nothing they changed outlives the call"
                )
        except psycopg.errors.QueryCanceled:
            raise QueryError(
                f"query cancelled: it ran past the {limits.timeout_ms / 1000:g} s timeout; "
                "narrow it (a time window on started_at, a trace_id, a LIMIT)"
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise QueryRefused(f"query refused by PostgreSQL: {_first_line(exc)}") from None
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise QueryRefused(f"query refused: {_first_line(exc)} (it runs read-only)") from None
        except psycopg.Error as exc:
            raise QueryError(
                f"PostgreSQL rejected the query: {_first_line(exc)}. The query tool runs exactly "
                "one SELECT (or VALUES/TABLE) statement, read-only"
            ) from None
        finally:
            watchdog.cancel()
            if (
                not conn.closed
                and conn.info.transaction_status != psycopg.pq.TransactionStatus.UNKNOWN
            ):
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    conn.close()
    result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return result


def _fetch(conn: psycopg.Connection[Any], statement: str, limits: Limits) -> Result:
    with conn.cursor(name=CURSOR) as cursor:
        cursor.execute(statement)
        result = Result(columns=[column.name for column in cursor.description or ()])
        chars = 0
        while True:
            batch = cursor.fetchmany(min(BATCH, limits.max_rows + 1 - len(result.rows)))
            if not batch:
                return result
            for row in batch:
                if len(result.rows) >= limits.max_rows:
                    result.more = f"more rows past the cap of {limits.max_rows}"
                    return result
                values = shorten(list(row))
                chars += len(dumps(values)) + 1
                if chars > limits.max_chars:
                    result.more = (
                        f"more rows past the {limits.max_chars:,}-character cap "
                        f"(after {len(result.rows)} rows)"
                    )
                    return result
                result.rows.append(values)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_dsn(text[0]) if text else type(exc).__name__
