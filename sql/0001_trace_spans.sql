-- otel_pg_exporter migration 0001: the spans table, its comments and its indexes.
--
-- A template, not plain SQL: otel-pg migrate fills in the quoted names with psycopg.sql
-- (table: the spans table, schema-qualified when a schema is given; idx_...: index names
-- derived from the table name). Every literal brace, comments included, is doubled.
-- Only new objects are created (IF NOT EXISTS): an existing table is never altered.
--
-- The layout is chosen here, once, when the table is created: primary_key and partition_by
-- are "trace_id", "span_id" and nothing for the plain table; "trace_id", "span_id",
-- "started_at" and PARTITION BY RANGE ("started_at") for otel-pg migrate --partitioned (a
-- unique key of a partitioned table must hold the partition column). Indexes made on a
-- partitioned table are made on every partition, present and future. Later runs read the
-- layout of the existing table (schema/migrations.py), so both render the same everywhere.

CREATE TABLE IF NOT EXISTS {table} (
    trace_id text NOT NULL,
    span_id text NOT NULL,
    parent_span_id text,
    service text NOT NULL,
    operation text NOT NULL,
    kind text NOT NULL,
    started_at timestamptz NOT NULL,
    completed_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    status text NOT NULL,
    status_message text,
    execution_id bigint,
    metadata jsonb NOT NULL DEFAULT '{{}}',
    events jsonb,
    links jsonb,
    resource jsonb,
    scope text,
    otel jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({primary_key})
){partition_by};

COMMENT ON TABLE {table} IS
    'One row per finished OpenTelemetry span, written by otel_pg_exporter. Ids are W3C lowercase hex (the same strings Sentry shows); a trace is all rows sharing trace_id, its tree follows parent_span_id -> span_id. Rows older than the retention period (30 days by default) are deleted by created_at.';
COMMENT ON COLUMN {table}.trace_id IS
    'Trace id: 32 lowercase hex characters (W3C). All spans of one request or job share it.';
COMMENT ON COLUMN {table}.span_id IS
    'Span id: 16 lowercase hex characters (W3C), unique within the trace.';
COMMENT ON COLUMN {table}.parent_span_id IS
    'span_id of the parent span (possibly in another service); NULL for a root span.';
COMMENT ON COLUMN {table}.service IS
    'Service that produced the span: the resource attribute service.name.';
COMMENT ON COLUMN {table}.operation IS
    'Span name: the operation, e.g. an HTTP route, a job step or a query.';
COMMENT ON COLUMN {table}.kind IS
    'Span kind: internal, server, client, producer or consumer.';
COMMENT ON COLUMN {table}.started_at IS
    'When the span started.';
COMMENT ON COLUMN {table}.completed_at IS
    'When the span ended.';
COMMENT ON COLUMN {table}.duration_ms IS
    'completed_at - started_at in milliseconds, computed from nanosecond timestamps.';
COMMENT ON COLUMN {table}.status IS
    'Span status: unset, ok or error. Failed operations have error.';
COMMENT ON COLUMN {table}.status_message IS
    'Status description, usually the error message when status is error; NULL when none.';
COMMENT ON COLUMN {table}.execution_id IS
    'Job execution id copied from a span attribute (execution.id by default) when it holds an integer; NULL otherwise.';
COMMENT ON COLUMN {table}.metadata IS
    'Span attributes as a JSON object, value types kept (strings, numbers, booleans, arrays). Query with ->> or @>.';
COMMENT ON COLUMN {table}.events IS
    'Span events as a JSON array of {{name, time, attributes}}; exceptions are events named exception with exception.type, exception.message and exception.stacktrace attributes. NULL when none.';
COMMENT ON COLUMN {table}.links IS
    'Links to other spans as a JSON array of {{trace_id, span_id, attributes}}; NULL when none.';
COMMENT ON COLUMN {table}.resource IS
    'Resource attributes of the producing process as a JSON object (service.name, service.version, host.name, ...).';
COMMENT ON COLUMN {table}.scope IS
    'Name of the instrumentation scope (library) that created the span.';
COMMENT ON COLUMN {table}.otel IS
    'OpenTelemetry fields without a column of their own, as a JSON object: trace_state, trace_flags, parent_is_remote, dropped attribute/event/link counts, scope version, schema_url and attributes, resource schema_url.';
COMMENT ON COLUMN {table}.created_at IS
    'When the row was inserted; drives retention.';

CREATE INDEX IF NOT EXISTS {idx_created_at} ON {table} (created_at);
CREATE INDEX IF NOT EXISTS {idx_execution_id} ON {table} (execution_id)
    WHERE execution_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS {idx_service_started_at} ON {table} (service, started_at);
