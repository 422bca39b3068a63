"""Names of the environment variables otel_pg_exporter reads.

Registered under the ``opentelemetry_environment_variables`` entry point, so that every
``OTEL_*`` name here also becomes an ``opentelemetry-instrument`` flag
(``OTEL_EXPORTER_POSTGRES_DSN`` -> ``--exporter_postgres_dsn``).
"""

ENABLE_DB_TRACING = "ENABLE_DB_TRACING"
"""
.. envvar:: ENABLE_DB_TRACING

Master switch. Nothing connects to or writes to the database unless it is true
(``1``, ``true``, ``yes`` or ``on``, any case). Default: off.
"""

OTEL_EXPORTER_POSTGRES_DSN = "OTEL_EXPORTER_POSTGRES_DSN"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_DSN

libpq connection string or ``postgresql://`` URL of the trace store.
Default: ``DATABASE_URL``, then libpq's own ``PG*`` variables.
"""

OTEL_EXPORTER_POSTGRES_SCHEMA = "OTEL_EXPORTER_POSTGRES_SCHEMA"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_SCHEMA

Schema holding the spans table, always quoted as an identifier.
Default: the connection's current schema (usually ``public``).
"""

OTEL_EXPORTER_POSTGRES_TABLE = "OTEL_EXPORTER_POSTGRES_TABLE"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_TABLE

Name of the spans table, always quoted as an identifier. Default: ``trace_spans``.
"""

OTEL_EXPORTER_POSTGRES_TIMEOUT = "OTEL_EXPORTER_POSTGRES_TIMEOUT"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_TIMEOUT

Seconds (not milliseconds) that one export may take in all, connecting included.
Default: ``10``.
"""

OTEL_EXPORTER_POSTGRES_POOL_MAX = "OTEL_EXPORTER_POSTGRES_POOL_MAX"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_POOL_MAX

Most database connections the exporter opens per process. Default: ``2``.
"""

OTEL_EXPORTER_POSTGRES_POOL_WAIT_MS = "OTEL_EXPORTER_POSTGRES_POOL_WAIT_MS"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_POOL_WAIT_MS

With a shared pool (``pool=``), milliseconds a batch waits for one of its connections; past
it the batch is spooled, so the application's own requests keep priority. Default: ``100``.
"""

OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE = "OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE

Span attribute copied into the ``execution_id`` column when it holds an integer.
Default: ``execution.id``.
"""

OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS = "OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS

Longest string (in characters) stored for one attribute value; longer values are cut and
end with a ``…[truncated N chars]`` marker. Default: ``65536``.
"""

OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS = "OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS

Most characters of attributes, events and links stored for one span, all together; values
past the budget are cut with the same marker. Default: ``1048576``.
"""

OTEL_EXPORTER_POSTGRES_SPOOL_DIR = "OTEL_EXPORTER_POSTGRES_SPOOL_DIR"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_SPOOL_DIR

Folder of the on-disk buffer used while the database is unreachable; empty turns it off.
Default: a per-user cache folder.
"""

OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB = "OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB

Largest size of the on-disk buffer, in megabytes. Default: ``256``.
"""

OTEL_EXPORTER_POSTGRES_RETENTION_DAYS = "OTEL_EXPORTER_POSTGRES_RETENTION_DAYS"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_RETENTION_DAYS

Spans created more than this many days ago are deleted by a background job of one exporting
process per table (an advisory lock), in small batches, at most once an hour; ``0`` keeps
spans forever. Default: ``30``.
"""

OTEL_EXPORTER_POSTGRES_FAST_PATH = "OTEL_EXPORTER_POSTGRES_FAST_PATH"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_FAST_PATH

Map common spans to rows with the compiled module built at install time (where a C
compiler was available); ``false`` maps every span in pure Python, the reference the
compiled code is tested against. Rows are identical either way. Default: ``true``.
"""

OTEL_EXPORTER_POSTGRES_LOG_CORRELATION = "OTEL_EXPORTER_POSTGRES_LOG_CORRELATION"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_LOG_CORRELATION

Whether ``logging`` records get ``trace_id`` and ``span_id`` fields (``%(trace_id)s`` in
format strings). Default: ``true``.
"""

OTEL_EXPORTER_POSTGRES_SCRUB = "OTEL_EXPORTER_POSTGRES_SCRUB"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_SCRUB

Whether attribute keys and values that look like credentials are replaced with a
``[REDACTED:rule]`` marker before a row is written or an event reaches Sentry. Default: ``true``.
"""

OTEL_EXPORTER_POSTGRES_SCRUB_PATTERNS = "OTEL_EXPORTER_POSTGRES_SCRUB_PATTERNS"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_SCRUB_PATTERNS

Extra regular expressions (case-insensitive) that mark a key or a value as secret,
separated by ``;;``. Default: none.
"""

OTEL_EXPORTER_POSTGRES_SCRUB_ALLOW = "OTEL_EXPORTER_POSTGRES_SCRUB_ALLOW"
"""
.. envvar:: OTEL_EXPORTER_POSTGRES_SCRUB_ALLOW

Comma-separated attribute keys never scrubbed (the application vouches for them).
Default: none.
"""

SENTRY_DSN = "SENTRY_DSN"
"""
.. envvar:: SENTRY_DSN

Turns the Sentry bridge on: error events share trace and span ids with ``trace_spans`` rows.
Read by sentry-sdk itself too. Default: unset (bridge off).
"""

SENTRY_ENVIRONMENT = "SENTRY_ENVIRONMENT"
"""
.. envvar:: SENTRY_ENVIRONMENT

Sentry environment, e.g. ``production``. Default: sentry-sdk's (``production``).
"""

SENTRY_RELEASE = "SENTRY_RELEASE"
"""
.. envvar:: SENTRY_RELEASE

Sentry release. Default: what sentry-sdk detects.
"""

SENTRY_TRACES_SAMPLE_RATE = "SENTRY_TRACES_SAMPLE_RATE"
"""
.. envvar:: SENTRY_TRACES_SAMPLE_RATE

Share of traces (0 to 1) whose spans are also sent to Sentry, decided per trace id so a trace
is whole or absent; PostgreSQL always gets every span. Default: ``0.1`` when the Sentry
environment is ``production``, else ``1.0``.
"""

SENTRY_IGNORE_ERRORS = "SENTRY_IGNORE_ERRORS"
"""
.. envvar:: SENTRY_IGNORE_ERRORS

Comma-separated exception class names (short or dotted, base classes match) whose events
never reach Sentry. Default: none.
"""

SENTRY_IGNORE_MESSAGES = "SENTRY_IGNORE_MESSAGES"
"""
.. envvar:: SENTRY_IGNORE_MESSAGES

Regular expressions, separated by ``;;``, matched against error messages; matching events
never reach Sentry. Default: none.
"""
