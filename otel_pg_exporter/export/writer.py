"""Stores rows in PostgreSQL: owns the connection pool, knows rows, not spans.

Each batch is copied (binary COPY) into a per-connection temporary staging table and moved
into the spans table with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` in the same
transaction, so a retried or replayed batch never duplicates a row. A row the database
rejects is isolated by bisecting the batch; the rest of the batch is stored.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from otel_pg_exporter._dsn import conninfo_problem, redact_dsn
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.errors import WriteError
from otel_pg_exporter.export import forks
from otel_pg_exporter.export.fastpath import copy_encoder
from otel_pg_exporter.schema.table import INSERTED_FROM_STAGE, STAGE_COLUMNS, Row

logger = logging.getLogger("otel_pg_exporter")

STAGE_TABLE = "otel_pg_exporter_stage"
APPLICATION_NAME = "otel_pg_exporter"
POOL_NAME = "otel_pg_exporter"

# While the database is down, exports fail at once instead of waiting out their timeout;
# a new connection attempt is allowed after this delay, doubling up to the maximum.
PROBE_DELAY_MIN_S = 0.5
PROBE_DELAY_MAX_S = 5.0
# A probe (the first write after a failure) may take this long at most, so that probing a
# network that is still silent never holds the export thread for a full timeout.
PROBE_BUDGET_S = 1.0
_GETCONN_SLICE_S = 0.05


class DatabaseUnavailable(WriteError):
    """No connection could be had: server down, unreachable, refusing, or auth failed."""


class WriteTimeout(WriteError):
    """The export deadline passed (slow server, lock wait, statement timeout)."""

    # A held lock or a silent network rarely clears within the same export: spool the batch
    # now rather than spend the rest of the deadline holding up the export thread.
    transient = False


class SchemaProblem(WriteError):
    """The spans table is missing or not writable; retrying will not help."""

    transient = False


class ConfigurationProblem(WriteError):
    """The connection string cannot be used; retrying will not help."""

    transient = False


class PoolBusy(WriteError):
    """Every connection of the shared pool stayed busy for the wait allowed (``pool_wait``):
    the application's requests keep priority and the batch is spooled."""

    transient = False


class RowRejected(WriteError):
    """The database refused the content of at least one row of the batch."""

    transient = False


@dataclass
class WriteOutcome:
    """What one ``write`` achieved: rows inserted, duplicates skipped, rows refused."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[Row, str]] = field(default_factory=list)

    def add(self, other: WriteOutcome) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)


def describe(exc: BaseException) -> str:
    """A one-line cause: the exception class, its SQLSTATE and first message line."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    head = f"{name} [{sqlstate}]" if sqlstate else name
    return redact_dsn(f"{head}: {text}" if text else head)


class _Health:
    """Connection health shared with the pool's worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failure: str | None = None
        self.kind: type[WriteError] = DatabaseUnavailable
        self.failed_at = 0.0
        self.probe_delay = PROBE_DELAY_MIN_S
        self.next_probe_at = 0.0

    def connect_failed(self, exc: BaseException, kind: type[WriteError] | None = None) -> None:
        """Fail exports at once until the next probe; ``kind`` is what they raise."""
        now = time.monotonic()
        with self.lock:
            self.failure = describe(exc)
            self.kind = kind or DatabaseUnavailable
            self.failed_at = now
            jitter = random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
            self.next_probe_at = now + self.probe_delay * jitter
            self.probe_delay = min(self.probe_delay * 2, PROBE_DELAY_MAX_S)

    def connect_succeeded(self) -> None:
        if self.failure is None and self.probe_delay == PROBE_DELAY_MIN_S:
            return  # the common case: nothing to reset, no lock taken
        with self.lock:
            self.failure = None
            self.probe_delay = PROBE_DELAY_MIN_S
            self.next_probe_at = 0.0

    def down_cause(self, now: float) -> str | None:
        """The last connect failure while the next probe is not yet due, else None."""
        with self.lock:
            if self.failure is not None and now < self.next_probe_at:
                return self.failure
            return None

    def failure_since(self, since: float) -> str | None:
        with self.lock:
            if self.failure is not None and self.failed_at >= since:
                return self.failure
            return None


def _connection_class(health: _Health) -> type[psycopg.Connection[Any]]:
    """A Connection whose connect() is untraced and reports to ``health``."""

    class _ExporterConnection(psycopg.Connection[Any]):
        _otel_pg_exporter = True  # lets the pool's log filter recognise our connections

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> _ExporterConnection:
            with untraced():
                try:
                    conn = super().connect(conninfo, **kwargs)
                except BaseException as exc:
                    health.connect_failed(exc)
                    raise
            # opentelemetry-instrumentation-psycopg swaps in a tracing cursor factory on
            # connect; before 0.55b0 it ignores untraced(), so the exporter's own statements
            # would become spans. Its cursors are psycopg's plain ones, on every version.
            conn.cursor_factory = psycopg.Cursor
            health.connect_succeeded()
            return conn

    return _ExporterConnection


WATCHDOG_GRACE_S = 0.5
LOCK_TIMEOUT_MS = 1000
_WATCHDOG_TICK_S = 0.2


class _Watchdog:
    """Closes the socket of a connection still busy past its export deadline.

    statement_timeout is enforced by the server, which a stalled network never reaches, and
    libpq has no client-side query timeout: shutting the socket down is what makes a blocked
    COPY fail, so that one export stays bounded even then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[int, tuple[psycopg.Connection[Any], float]] = {}
        self._severed: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="otel_pg_exporter-watchdog", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def watch(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        with self._lock:
            self._busy[id(conn)] = (conn, deadline + WATCHDOG_GRACE_S)

    def forget(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._busy.pop(id(conn), None)
            self._severed.discard(id(conn))

    def severed(self, conn: psycopg.Connection[Any]) -> bool:
        with self._lock:
            return id(conn) in self._severed

    def _run(self) -> None:
        while not self._stop.wait(_WATCHDOG_TICK_S):
            now = time.monotonic()
            with self._lock:
                late = [
                    (key, conn)
                    for key, (conn, limit) in self._busy.items()
                    if now > limit and key not in self._severed
                ]
                self._severed.update(key for key, _ in late)
            for _, conn in late:
                _shut_socket(conn)


def _shut_socket(conn: psycopg.Connection[Any]) -> None:
    try:
        duplicate = os.dup(conn.pgconn.socket)
    except (OSError, psycopg.Error):
        return
    try:
        with socket.socket(fileno=duplicate) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_ROW_ERRORS: tuple[type[BaseException], ...] = (
    errors.DataError,
    errors.IntegrityError,
    errors.ProgramLimitExceeded,
    errors.StatementTooComplex,
    UnicodeError,
    OverflowError,
)
_SCHEMA_ERRORS: tuple[type[BaseException], ...] = (
    errors.UndefinedTable,
    errors.UndefinedColumn,
    errors.InvalidSchemaName,
    errors.InsufficientPrivilege,
    errors.ReadOnlySqlTransaction,
    errors.DatatypeMismatch,
    errors.WrongObjectType,
)
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    errors.QueryCanceled,
    errors.LockNotAvailable,
)


class SpanWriter:
    """Writes rows to ``[schema.]table`` through a small lazily opened connection pool, or
    through the application's pool (``pool``) when given.

    A shared pool is borrowed from, one connection at a time for one transaction, waiting
    ``pool_wait_s`` at most; the connection is given back as found: the staging table is
    created in the transaction and dropped at its end, settings are ``SET LOCAL``-style, no
    statement is prepared, autocommit is untouched, and the pool is never closed.
    """

    def __init__(
        self,
        *,
        dsn: str,
        table: str,
        schema: str | None = None,
        pool_max: int = 2,
        timeout_s: float = 10.0,
        pool: ConnectionPool[Any] | None = None,
        pool_wait_s: float = 0.1,
        on_wait: Callable[[float], None] | None = None,
        encode_rows: Callable[[list[Row]], bytes | None] | EllipsisType | None = ...,
    ) -> None:
        self._dsn = dsn
        # The compiled binary COPY encoder (fastpath.copy_encoder), else psycopg's write_row;
        # not given: the encoder when built, unless OTEL_EXPORTER_POSTGRES_FAST_PATH is false.
        self._encode_rows = copy_encoder() if encode_rows is ... else encode_rows
        self._shared = pool
        self._pool_wait_s = pool_wait_s
        # Told the seconds each wait for a connection took (the exporter's counters).
        self._on_wait = on_wait
        self._timeout_s = timeout_s
        self._pool_max = pool_max
        self._target = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        self._health = _Health()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._closed = False
        self._watchdog = _Watchdog()
        columns = sql.SQL(", ").join(sql.Identifier(name) for name, _ in STAGE_COLUMNS)
        self._types = [pg_type for _, pg_type in STAGE_COLUMNS]
        self._create_stage_sql = sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ({columns}) ON COMMIT DELETE ROWS"
        ).format(
            stage=sql.Identifier(STAGE_TABLE),
            columns=sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
                for name, pg_type in STAGE_COLUMNS
            ),
        )
        # With a shared pool: a staging table that lives for one transaction only.
        self._create_stage_once_sql = sql.SQL(
            "CREATE TEMPORARY TABLE {stage} ({columns}) ON COMMIT DROP"
        ).format(
            stage=sql.Identifier(STAGE_TABLE),
            columns=sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
                for name, pg_type in STAGE_COLUMNS
            ),
        )
        self._copy_sql = sql.SQL("COPY {stage} ({columns}) FROM STDIN (FORMAT BINARY)").format(
            stage=sql.Identifier(STAGE_TABLE), columns=columns
        )
        self._insert_sql = sql.SQL(
            "INSERT INTO {target} ({columns}) SELECT {values} FROM {stage} ON CONFLICT DO NOTHING"
        ).format(
            target=self._target,
            columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in INSERTED_FROM_STAGE),
            values=sql.SQL(", ").join(sql.SQL(expression) for _, expression in INSERTED_FROM_STAGE),
            stage=sql.Identifier(STAGE_TABLE),
        )
        self._add_metadata_sql = sql.SQL(
            "UPDATE {target} SET metadata = metadata || %s::jsonb"
            " WHERE trace_id = %s AND span_id = %s"
        ).format(target=self._target)
        forks.reset_in_child(forks.WRITERS, self)

    def __repr__(self) -> str:
        return f"SpanWriter(dsn={redact_dsn(self._dsn)!r}, target={self._target.as_string()!r})"

    @property
    def shared(self) -> bool:
        """Whether the writer borrows the application's pool."""
        return self._shared is not None

    def _waited(self, seconds: float) -> None:
        if self._on_wait is not None:
            self._on_wait(seconds)

    @property
    def database_down_cause(self) -> str | None:
        """Why the database is considered down right now, or None."""
        return self._health.down_cause(time.monotonic())

    def write(self, rows: Sequence[Row], deadline: float) -> WriteOutcome:
        """Store ``rows`` before ``deadline`` (monotonic); raise WriteError if none could be.

        Rows the database refuses are returned in ``WriteOutcome.rejected``; every other row
        of the batch is stored.
        """
        if not rows:
            return WriteOutcome()
        if self._health.failure is not None:
            deadline = min(deadline, time.monotonic() + PROBE_BUDGET_S)
        with untraced():
            try:
                return self._write_batch(rows, deadline)
            except RowRejected as exc:
                if len(rows) == 1:
                    return WriteOutcome(rejected=[(rows[0], exc.cause)])
            outcome = WriteOutcome()
            middle = len(rows) // 2
            outcome.add(self.write(rows[:middle], deadline))
            outcome.add(self.write(rows[middle:], deadline))
            return outcome

    def add_metadata(self, items: Sequence[tuple[str, str, str]], deadline: float) -> list[bool]:
        """Merge JSON objects into the ``metadata`` of stored rows, given as (trace id,
        span id, JSON) triples; True for each row found. Raises WriteError."""
        if not items:
            return []
        with untraced():
            conn = self._getconn(deadline)
            try:
                with conn.transaction(), conn.cursor() as cur:
                    found = []
                    for trace_id, span_id, document in items:
                        cur.execute(
                            self._add_metadata_sql,
                            (document, trace_id, span_id),
                            prepare=False if self._shared is not None else None,
                        )
                        found.append(cur.rowcount > 0)
            except psycopg.Error as exc:
                raise DatabaseUnavailable(describe(exc)) from exc
            finally:
                self._putconn(conn)
        return found

    def _write_batch(self, rows: Sequence[Row], deadline: float) -> WriteOutcome:
        conn = self._getconn(deadline)
        self._watchdog.watch(conn, deadline)
        shared = self._shared is not None
        # On the application's connection nothing is prepared: no statement is left behind.
        prepare = False if shared else None
        try:
            with conn.transaction(), conn.cursor() as cur:
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                # A lock is rarely released soon (migrations, VACUUM FULL, LOCK TABLE): give
                # up on it early, so the batch goes to the spool instead of holding up the
                # export thread while the SDK's queue fills.
                lock_ms = min(remaining_ms, LOCK_TIMEOUT_MS)
                cur.execute(
                    "SELECT set_config('statement_timeout', %s, true),"
                    " set_config('lock_timeout', %s, true)",
                    (str(remaining_ms), str(lock_ms)),
                    prepare=prepare,
                )
                if shared:
                    cur.execute(self._create_stage_once_sql, prepare=False)
                with cur.copy(self._copy_sql) as copy:
                    encode = self._encode_rows
                    if encode is None:
                        stream = None
                    else:  # bisected halves are lists already; a list is not copied
                        stream = encode(rows if isinstance(rows, list) else list(rows))
                    if stream is not None:  # signature, rows and trailer, as write_row sends
                        copy.write(stream)
                    else:
                        copy.set_types(self._types)
                        write_row = copy.write_row
                        for row in rows:
                            write_row(row)
                cur.execute(self._insert_sql, prepare=prepare)
                inserted = max(cur.rowcount, 0)
        except _ROW_ERRORS as exc:
            raise RowRejected(describe(exc)) from exc
        except _SCHEMA_ERRORS as exc:
            raise SchemaProblem(describe(exc)) from exc
        except _TIMEOUT_ERRORS as exc:
            # A held lock or an overloaded server does not clear in milliseconds: the next
            # exports go straight to the spool until the next probe, instead of each waiting.
            self._health.connect_failed(exc, WriteTimeout)
            raise WriteTimeout(describe(exc)) from exc
        except psycopg.Error as exc:
            if self._watchdog.severed(conn):
                # A silent network stays silent for a while: fail the next exports at once
                # (they go to the spool) until the next probe, as for a refused connection.
                self._health.connect_failed(exc, WriteTimeout)
                raise WriteTimeout(
                    f"no answer from the database within {self._timeout_s:g} s "
                    "(network stalled?); the connection was closed"
                ) from exc
            raise DatabaseUnavailable(describe(exc)) from exc
        finally:
            self._watchdog.forget(conn)
            self._putconn(conn)
        self._health.connect_succeeded()
        return WriteOutcome(inserted=inserted, duplicates=len(rows) - inserted)

    def _getconn(self, deadline: float) -> psycopg.Connection[Any]:
        start = time.monotonic()
        cause = self._health.down_cause(start)
        if cause is not None:
            raise self._health.kind(cause)
        if self._shared is not None:
            return self._getconn_shared(self._shared, deadline, start)
        try:
            return self._getconn_own(deadline, start)
        finally:
            self._waited(time.monotonic() - start)

    def _getconn_shared(
        self, pool: ConnectionPool[Any], deadline: float, start: float
    ) -> psycopg.Connection[Any]:
        """One connection of the application's pool, waiting ``pool_wait_s`` at most."""
        if self._closed:
            raise WriteError("exporter is shut down")
        wait_s = max(0.0, min(self._pool_wait_s, deadline - start))
        try:
            conn: psycopg.Connection[Any] = pool.getconn(timeout=wait_s)
            return conn
        except PoolTimeout:
            raise PoolBusy(
                f"no free connection in the shared pool within {wait_s * 1000:g} ms"
            ) from None
        except psycopg.Error as exc:
            raise DatabaseUnavailable(describe(exc)) from exc
        finally:
            self._waited(time.monotonic() - start)

    def _getconn_own(self, deadline: float, start: float) -> psycopg.Connection[Any]:
        pool = self._open_pool_lazily()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = self._health.failure_since(start)
                if failure is not None:
                    raise DatabaseUnavailable(failure)
                raise WriteTimeout(f"no database connection within {self._timeout_s:g} s")
            try:
                conn: psycopg.Connection[Any] = pool.getconn(
                    timeout=min(remaining, _GETCONN_SLICE_S)
                )
                return conn
            except PoolTimeout:
                failure = self._health.failure_since(start)
                if failure is not None:
                    raise DatabaseUnavailable(failure) from None
            except psycopg.Error as exc:
                raise DatabaseUnavailable(describe(exc)) from exc

    def _putconn(self, conn: psycopg.Connection[Any]) -> None:
        if self._shared is not None:
            self._shared.putconn(conn)  # the application's: back to its pool, always
            return
        pool = self._pool
        if pool is None:  # closed meanwhile (shutdown, or a fork dropped it)
            conn.close()
            return
        pool.putconn(conn)

    def _open_pool_lazily(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._closed:
                raise WriteError("exporter is shut down")
            if self._pool is not None:
                return self._pool
            try:
                given = conninfo_to_dict(self._dsn)
            except psycopg.Error as exc:
                raise ConfigurationProblem(conninfo_problem(self._dsn, exc)) from None
            kwargs: dict[str, Any] = {"autocommit": False}
            if "connect_timeout" not in given:
                kwargs["connect_timeout"] = max(2, round(self._timeout_s))
            if "application_name" not in given:
                kwargs["application_name"] = APPLICATION_NAME
            # A silent network must fail a connection the exporter's watchdog does not
            # guard (the pool's own connection setup): TCP keepalives and a user timeout.
            for key, value in (
                ("keepalives", 1),
                ("keepalives_idle", 5),
                ("keepalives_interval", 2),
                ("keepalives_count", 3),
                ("tcp_user_timeout", max(1000, round(self._timeout_s * 1000))),
            ):
                if key not in given:
                    kwargs[key] = value
            pool: ConnectionPool[Any] = ConnectionPool(
                self._dsn,
                connection_class=_connection_class(self._health),
                kwargs=kwargs,
                min_size=1,
                max_size=self._pool_max,
                open=False,
                configure=self._configure_connection,
                name=POOL_NAME,
                timeout=self._timeout_s,
                # The pool's own retries stop soon; later attempts follow the exporter's probes,
                # so a database that is back is found within PROBE_DELAY_MAX_S.
                reconnect_timeout=self._timeout_s,
                num_workers=1,
            )
            with untraced():
                pool.open(wait=False)
            self._pool = pool
            self._watchdog.start()
            return pool

    def _configure_connection(self, conn: psycopg.Connection[Any]) -> None:
        # Runs in the pool's worker thread, where the caller's context does not reach.
        with untraced(), conn.transaction():
            conn.execute(self._create_stage_sql)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the pool (never a shared one); idempotent. Later writes raise WriteError."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        self._watchdog.stop()
        if pool is not None:
            with untraced():
                pool.close(timeout=timeout_s)

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's pool without touching its connections."""
        # psycopg never closes a connection inherited from another process, so dropping the
        # references is safe; the child opens its own pool on its next write.
        self._pool = None
        self._lock = threading.Lock()
        self._health = _Health()
        self._watchdog = _Watchdog()


class _QuietPoolLog(logging.Filter):
    """Drop psycopg_pool's per-attempt warnings about our pool: the exporter reports the
    same cause itself, once a minute, with advice."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and args) or record.levelno >= logging.ERROR:
            return True
        first = args[0]
        # Messages name our pool, or one of our connections ("discarding closed connection").
        return not (first == POOL_NAME or getattr(first, "_otel_pg_exporter", False))


_pool_logger = logging.getLogger("psycopg.pool")
if not any(isinstance(f, _QuietPoolLog) for f in _pool_logger.filters):
    _pool_logger.addFilter(_QuietPoolLog())
