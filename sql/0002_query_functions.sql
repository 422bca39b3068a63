-- otel_pg_exporter migration 0002: the query functions and the indexes they need.
--
-- A template like 0001 (every literal brace doubled). The fn_ placeholders are the names: for
-- the default table exactly trace_tree, trace_gaps, ... ; for another table T they are
-- prefixed, T_trace_tree, ... . Bodies are SQL-standard (BEGIN ATOMIC, PostgreSQL 14+): parsed
-- once at creation, bound to the table itself, with no dynamic SQL, so no name can be
-- injected and rows are always read through the planner's normal index choices.
--
-- Every function is STABLE and reads one trace through the primary key (trace_id first), or
-- one time window through the started_at indexes below. Parameters are positional ($1, $2)
-- inside the bodies, because in SQL functions a column of the same name would win.

CREATE INDEX IF NOT EXISTS {idx_started_at} ON {table} (started_at);
CREATE INDEX IF NOT EXISTS {idx_errors_started_at} ON {table} (started_at)
    WHERE status = 'error';

-- trace_tree ---------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_trace_tree}(trace_id text)
RETURNS TABLE (
    span_id text,
    parent_span_id text,
    depth integer,
    path text[],
    service text,
    operation text,
    kind text,
    started_at timestamptz,
    completed_at timestamptz,
    offset_ms double precision,
    duration_ms double precision,
    self_ms double precision,
    status text,
    status_message text,
    execution_id bigint,
    is_orphan boolean
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH RECURSIVE
    s AS (
        SELECT t.span_id, t.parent_span_id, t.service, t.operation, t.kind, t.started_at,
               t.completed_at, t.duration_ms, t.status, t.status_message, t.execution_id
          FROM {table} t
         WHERE t.trace_id = $1
    ),
    t0 AS (SELECT min(s.started_at) AS first_start FROM s),
    cover AS (
        SELECT c.parent_span_id AS parent,
               greatest(c.started_at, p.started_at) AS lo,
               least(c.completed_at, p.completed_at) AS hi
          FROM s c JOIN s p ON p.span_id = c.parent_span_id
         WHERE c.span_id <> p.span_id
    ),
    ordered AS (
        SELECT cover.parent, cover.lo, cover.hi,
               max(cover.hi) OVER (PARTITION BY cover.parent ORDER BY cover.lo, cover.hi
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
          FROM cover
         WHERE cover.hi > cover.lo
    ),
    islands AS (
        SELECT ordered.parent, ordered.lo, ordered.hi,
               sum(CASE WHEN ordered.reach IS NULL OR ordered.lo > ordered.reach THEN 1 ELSE 0 END)
                   OVER (PARTITION BY ordered.parent ORDER BY ordered.lo, ordered.hi) AS island
          FROM ordered
    ),
    covered AS (
        SELECT merged.parent, sum(extract(epoch FROM merged.hi - merged.lo) * 1000) AS ms
          FROM (SELECT islands.parent, min(islands.lo) AS lo, max(islands.hi) AS hi
                  FROM islands GROUP BY islands.parent, islands.island) AS merged
         GROUP BY merged.parent
    ),
    tree AS (
        SELECT s.span_id, 0 AS depth, ARRAY[s.operation] AS path, ARRAY[s.span_id] AS seen,
               ARRAY[lpad(((extract(epoch FROM s.started_at) * 1000000)::bigint
                           + 4611686018427387904)::text, 19, '0') || s.span_id] AS sort_key,
               s.parent_span_id IS NOT NULL AS is_orphan
          FROM s
         WHERE s.parent_span_id IS NULL
            OR s.parent_span_id = s.span_id
            OR NOT EXISTS (SELECT FROM s p WHERE p.span_id = s.parent_span_id)
        UNION ALL
        SELECT c.span_id, tree.depth + 1, tree.path || c.operation, tree.seen || c.span_id,
               tree.sort_key || (lpad(((extract(epoch FROM c.started_at) * 1000000)::bigint
                                      + 4611686018427387904)::text, 19, '0') || c.span_id),
               false
          FROM tree JOIN s c ON c.parent_span_id = tree.span_id
         WHERE c.span_id <> ALL (tree.seen) AND tree.depth < 10000
    )
    SELECT tree.span_id, s.parent_span_id, tree.depth, tree.path, s.service, s.operation,
           s.kind, s.started_at, s.completed_at,
           (extract(epoch FROM s.started_at - t0.first_start) * 1000)::double precision,
           s.duration_ms,
           greatest(s.duration_ms - coalesce(covered.ms, 0)::double precision, 0),
           s.status, s.status_message, s.execution_id, tree.is_orphan
      FROM tree
      JOIN s ON s.span_id = tree.span_id
      CROSS JOIN t0
      LEFT JOIN covered ON covered.parent = tree.span_id
     ORDER BY tree.sort_key;
END;

COMMENT ON FUNCTION {fn_trace_tree}(text) IS
    'Every span of one trace in depth-first order (children by start time): depth, path of operation names from the root, offset from the trace start, duration, self time (duration covered by no child), status. Spans whose parent never arrived are extra roots with is_orphan. Example: SELECT depth, operation, offset_ms, duration_ms, self_ms, status FROM trace_tree(''<32-hex trace id>'');';

-- trace_gaps ---------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_trace_gaps}(trace_id text, min_gap_ms double precision DEFAULT 0)
RETURNS TABLE (
    parent_span_id text,
    parent_service text,
    parent_operation text,
    gap_start timestamptz,
    gap_end timestamptz,
    offset_ms double precision,
    gap_ms double precision,
    before_span_id text,
    before_operation text,
    after_span_id text,
    after_operation text
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH
    s AS (
        SELECT t.span_id, t.parent_span_id, t.service, t.operation, t.started_at, t.completed_at
          FROM {table} t
         WHERE t.trace_id = $1
    ),
    t0 AS (SELECT min(s.started_at) AS first_start FROM s),
    cover AS (
        SELECT c.parent_span_id AS parent, c.span_id, c.operation,
               greatest(c.started_at, p.started_at) AS lo,
               least(c.completed_at, p.completed_at) AS hi
          FROM s c JOIN s p ON p.span_id = c.parent_span_id
         WHERE c.span_id <> p.span_id
    ),
    ordered AS (
        SELECT cover.*,
               max(cover.hi) OVER (PARTITION BY cover.parent ORDER BY cover.lo, cover.hi
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
          FROM cover
         WHERE cover.hi > cover.lo
    ),
    islands AS (
        SELECT ordered.*,
               sum(CASE WHEN ordered.reach IS NULL OR ordered.lo > ordered.reach THEN 1 ELSE 0 END)
                   OVER (PARTITION BY ordered.parent ORDER BY ordered.lo, ordered.hi) AS island
          FROM ordered
    ),
    merged AS (
        SELECT islands.parent, min(islands.lo) AS lo, max(islands.hi) AS hi,
               (array_agg(islands.span_id ORDER BY islands.lo, islands.hi))[1] AS first_span,
               (array_agg(islands.operation ORDER BY islands.lo, islands.hi))[1] AS first_op,
               (array_agg(islands.span_id ORDER BY islands.hi DESC, islands.lo DESC))[1] AS last_span,
               (array_agg(islands.operation ORDER BY islands.hi DESC, islands.lo DESC))[1] AS last_op
          FROM islands
         GROUP BY islands.parent, islands.island
    ),
    bounds AS (
        SELECT merged.*,
               lag(merged.hi) OVER w AS prev_hi,
               lag(merged.last_span) OVER w AS prev_span,
               lag(merged.last_op) OVER w AS prev_op,
               lead(merged.lo) OVER w AS next_lo
          FROM merged
        WINDOW w AS (PARTITION BY merged.parent ORDER BY merged.lo)
    ),
    gaps AS (
        SELECT b.parent, coalesce(b.prev_hi, p.started_at) AS gap_start, b.lo AS gap_end,
               b.prev_span AS before_span, b.prev_op AS before_op,
               b.first_span AS after_span, b.first_op AS after_op
          FROM bounds b JOIN s p ON p.span_id = b.parent
        UNION ALL
        SELECT b.parent, b.hi, p.completed_at, b.last_span, b.last_op, NULL, NULL
          FROM bounds b JOIN s p ON p.span_id = b.parent
         WHERE b.next_lo IS NULL
    )
    SELECT g.parent, p.service, p.operation, g.gap_start, g.gap_end,
           (extract(epoch FROM g.gap_start - t0.first_start) * 1000)::double precision,
           (extract(epoch FROM g.gap_end - g.gap_start) * 1000)::double precision,
           g.before_span, g.before_op, g.after_span, g.after_op
      FROM gaps g
      JOIN s p ON p.span_id = g.parent
      CROSS JOIN t0
     WHERE g.gap_end > g.gap_start
       AND extract(epoch FROM g.gap_end - g.gap_start) * 1000 >= coalesce($2, 0)
     ORDER BY g.gap_end - g.gap_start DESC, g.gap_start;
END;

COMMENT ON FUNCTION {fn_trace_gaps}(text, double precision) IS
    'Intervals inside a span covered by none of its children (time the trace cannot account for), largest first, with the parent span and the children that ended before and started after the gap (NULL: the parent''s own start or end). Leaf spans have no gaps. Example: SELECT parent_operation, gap_ms, before_operation, after_operation FROM trace_gaps(''<trace id>'', 50);';

-- critical_path ------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_critical_path}(trace_id text)
RETURNS TABLE (
    span_id text,
    parent_span_id text,
    service text,
    operation text,
    started_at timestamptz,
    offset_ms double precision,
    duration_ms double precision,
    contribution_ms double precision,
    status text
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH RECURSIVE
    s AS (
        SELECT t.span_id, t.parent_span_id, t.service, t.operation, t.started_at,
               t.completed_at, t.duration_ms, t.status
          FROM {table} t
         WHERE t.trace_id = $1
    ),
    t0 AS (SELECT min(s.started_at) AS first_start FROM s),
    root AS (
        SELECT s.span_id, s.completed_at
          FROM s
         WHERE s.parent_span_id IS NULL
            OR s.parent_span_id = s.span_id
            OR NOT EXISTS (SELECT FROM s p WHERE p.span_id = s.parent_span_id)
         ORDER BY s.completed_at DESC, s.started_at, s.span_id
         LIMIT 1
    ),
    -- From each span on the path, walking back from its end: the last-finishing child that
    -- started before the cursor is on the path too; then the cursor moves to that child's
    -- start and the parent's next last-finishing child is looked for.
    walk (span_id, cursor_at, on_path, step) AS (
        SELECT root.span_id, root.completed_at, true, 0 FROM root
        UNION ALL
        SELECT nxt.span_id, nxt.cursor_at, nxt.on_path, walk.step + 1
          FROM walk
          CROSS JOIN LATERAL (
              SELECT c.span_id, c.started_at, least(c.completed_at, walk.cursor_at) AS ended
                FROM s c
               WHERE c.parent_span_id = walk.span_id
                 AND c.span_id <> walk.span_id
                 AND c.started_at < walk.cursor_at
               ORDER BY least(c.completed_at, walk.cursor_at) DESC, c.started_at DESC, c.span_id
               LIMIT 1
          ) AS lfc
          CROSS JOIN LATERAL (
              VALUES (lfc.span_id, lfc.ended, true), (walk.span_id, lfc.started_at, false)
          ) AS nxt (span_id, cursor_at, on_path)
         WHERE walk.step < 100000
    ),
    path AS (SELECT DISTINCT walk.span_id FROM walk WHERE walk.on_path),
    -- What the span's critical children cover, merged where they overlap.
    cover AS (
        SELECT c.parent_span_id AS parent,
               greatest(c.started_at, p.started_at) AS lo,
               least(c.completed_at, p.completed_at) AS hi
          FROM s c
          JOIN path ON path.span_id = c.span_id
          JOIN s p ON p.span_id = c.parent_span_id
         WHERE c.span_id <> p.span_id
    ),
    ordered AS (
        SELECT cover.parent, cover.lo, cover.hi,
               max(cover.hi) OVER (PARTITION BY cover.parent ORDER BY cover.lo, cover.hi
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
          FROM cover
         WHERE cover.hi > cover.lo
    ),
    islands AS (
        SELECT ordered.parent, ordered.lo, ordered.hi,
               sum(CASE WHEN ordered.reach IS NULL OR ordered.lo > ordered.reach THEN 1 ELSE 0 END)
                   OVER (PARTITION BY ordered.parent ORDER BY ordered.lo, ordered.hi) AS island
          FROM ordered
    ),
    covered AS (
        SELECT merged.parent, sum(extract(epoch FROM merged.hi - merged.lo) * 1000) AS ms
          FROM (SELECT islands.parent, min(islands.lo) AS lo, max(islands.hi) AS hi
                  FROM islands GROUP BY islands.parent, islands.island) AS merged
         GROUP BY merged.parent
    )
    SELECT s.span_id, s.parent_span_id, s.service, s.operation, s.started_at,
           (extract(epoch FROM s.started_at - t0.first_start) * 1000)::double precision,
           s.duration_ms,
           greatest(s.duration_ms - coalesce(covered.ms, 0)::double precision, 0),
           s.status
      FROM path
      JOIN s ON s.span_id = path.span_id
      CROSS JOIN t0
      LEFT JOIN covered ON covered.parent = s.span_id
     ORDER BY s.started_at, s.span_id;
END;

COMMENT ON FUNCTION {fn_critical_path}(text) IS
    'The spans that determine the trace''s end-to-end duration: from the root, walking back from each span''s end, the last-finishing child, then the one that finished last before that child started, and so on, at every level. contribution_ms is the span''s own time on the path: its duration minus the time its critical children cover (overlaps counted once). Example: SELECT operation, duration_ms, contribution_ms FROM critical_path(''<trace id>'') ORDER BY contribution_ms DESC;';

-- orphan_spans -------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_orphan_spans}(since timestamptz, for_service text DEFAULT NULL)
RETURNS TABLE (
    service text,
    operation text,
    spans bigint,
    remote_parents bigint,
    example_trace_id text,
    example_span_id text,
    last_seen timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT o.service, o.operation, count(*),
           count(*) FILTER (WHERE (o.otel ->> 'parent_is_remote') = 'true'),
           (array_agg(o.trace_id ORDER BY o.started_at DESC))[1],
           (array_agg(o.span_id ORDER BY o.started_at DESC))[1],
           max(o.started_at)
      FROM {table} o
     WHERE o.started_at >= $1
       AND ($2 IS NULL OR o.service = $2)
       AND o.parent_span_id IS NOT NULL
       AND NOT EXISTS (
           SELECT FROM {table} p WHERE p.trace_id = o.trace_id AND p.span_id = o.parent_span_id
       )
     GROUP BY o.service, o.operation
     ORDER BY count(*) DESC, max(o.started_at) DESC;
END;

COMMENT ON FUNCTION {fn_orphan_spans}(timestamptz, text) IS
    'Spans started since the given time whose parent never arrived (a lost span, a service that does not export here, or broken propagation), grouped by service and operation, with an example trace. remote_parents counts those whose parent was in another process. Example: SELECT * FROM orphan_spans(now() - interval ''1 day'');';

-- error_traces -------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_error_traces}(since timestamptz, for_service text DEFAULT NULL)
RETURNS TABLE (
    trace_id text,
    first_error_at timestamptz,
    error_spans bigint,
    service text,
    operation text,
    span_id text,
    status_message text,
    exception_type text,
    exception_message text,
    execution_id bigint
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH firsts AS (
        SELECT DISTINCT ON (e.trace_id)
               e.trace_id, e.started_at, e.service, e.operation, e.span_id, e.status_message,
               e.events, e.execution_id, count(*) OVER (PARTITION BY e.trace_id) AS errors
          FROM {table} e
         WHERE e.status = 'error' AND e.started_at >= $1 AND ($2 IS NULL OR e.service = $2)
         ORDER BY e.trace_id, e.completed_at, e.started_at DESC, e.span_id
    )
    SELECT f.trace_id, f.started_at, f.errors, f.service, f.operation, f.span_id,
           f.status_message, x.attributes ->> 'exception.type',
           x.attributes ->> 'exception.message', f.execution_id
      FROM firsts f
      LEFT JOIN LATERAL (
          SELECT ev -> 'attributes' AS attributes
            FROM jsonb_array_elements(CASE jsonb_typeof(f.events) WHEN 'array' THEN f.events END) AS ev
           WHERE ev ->> 'name' = 'exception'
           LIMIT 1
      ) AS x ON true
     ORDER BY f.started_at DESC, f.trace_id;
END;

COMMENT ON FUNCTION {fn_error_traces}(timestamptz, text) IS
    'Traces with an error span started since the given time, newest first, each described by its first error (the error span that ended first, usually the innermost: the cause): service, operation, status message and the exception type and message from its events. Example: SELECT trace_id, service, operation, exception_type, exception_message FROM error_traces(now() - interval ''1 hour'');';

-- slow_operations ----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_slow_operations}(since timestamptz, for_service text DEFAULT NULL)
RETURNS TABLE (
    service text,
    operation text,
    calls bigint,
    errors bigint,
    p50_ms double precision,
    p95_ms double precision,
    p99_ms double precision,
    max_ms double precision,
    total_ms double precision
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT s.service, s.operation, count(*), count(*) FILTER (WHERE s.status = 'error'),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.duration_ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY s.duration_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY s.duration_ms),
           max(s.duration_ms), sum(s.duration_ms)
      FROM {table} s
     WHERE s.started_at >= $1 AND ($2 IS NULL OR s.service = $2)
     GROUP BY s.service, s.operation
     ORDER BY 6 DESC, 3 DESC;
END;

COMMENT ON FUNCTION {fn_slow_operations}(timestamptz, text) IS
    'Calls, errors and p50/p95/p99/max/total duration (ms) by service and operation for spans started since the given time, slowest p95 first. Example: SELECT * FROM slow_operations(now() - interval ''1 day'', ''router'') LIMIT 10;';

-- execution_trace ----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_execution_trace}(execution_id bigint)
RETURNS TABLE (
    trace_id text,
    span_id text,
    parent_span_id text,
    depth integer,
    service text,
    operation text,
    started_at timestamptz,
    completed_at timestamptz,
    offset_ms double precision,
    duration_ms double precision,
    status text,
    status_message text,
    gap_before_ms double precision
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH RECURSIVE
    marked AS (
        SELECT m.trace_id, m.span_id, m.parent_span_id FROM {table} m WHERE m.execution_id = $1
    ),
    tr AS (
        SELECT t.trace_id, t.span_id, t.parent_span_id, t.service, t.operation, t.started_at,
               t.completed_at, t.duration_ms, t.status, t.status_message
          FROM {table} t
         WHERE t.trace_id IN (SELECT DISTINCT marked.trace_id FROM marked)
    ),
    -- From every marked span down; a span reached from several marked ancestors keeps its
    -- depth below the topmost one, so the top-level spans are the marked spans no other
    -- marked span is above.
    walk AS (
        SELECT marked.trace_id, marked.span_id, 0 AS depth, ARRAY[marked.span_id] AS seen
          FROM marked
        UNION ALL
        SELECT c.trace_id, c.span_id, walk.depth + 1, walk.seen || c.span_id
          FROM walk JOIN tr c ON c.trace_id = walk.trace_id AND c.parent_span_id = walk.span_id
         WHERE c.span_id <> ALL (walk.seen) AND walk.depth < 10000
    ),
    spans AS (
        SELECT DISTINCT ON (tr.trace_id, tr.span_id) walk.depth, tr.*
          FROM walk JOIN tr ON tr.trace_id = walk.trace_id AND tr.span_id = walk.span_id
         ORDER BY tr.trace_id, tr.span_id, walk.depth DESC
    ),
    t0 AS (SELECT min(spans.started_at) AS first_start FROM spans),
    top_gaps AS (
        SELECT spans.trace_id, spans.span_id,
               extract(epoch FROM spans.started_at - max(spans.completed_at) OVER (
                   ORDER BY spans.started_at, spans.span_id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) * 1000 AS gap
          FROM spans
         WHERE spans.depth = 0
    )
    SELECT spans.trace_id, spans.span_id, spans.parent_span_id, spans.depth, spans.service,
           spans.operation, spans.started_at, spans.completed_at,
           (extract(epoch FROM spans.started_at - t0.first_start) * 1000)::double precision,
           spans.duration_ms, spans.status, spans.status_message,
           CASE WHEN top_gaps.gap IS NOT NULL THEN greatest(top_gaps.gap, 0) END::double precision
      FROM spans
      CROSS JOIN t0
      LEFT JOIN top_gaps ON top_gaps.trace_id = spans.trace_id AND top_gaps.span_id = spans.span_id
     ORDER BY spans.started_at, spans.depth, spans.span_id;
END;

COMMENT ON FUNCTION {fn_execution_trace}(bigint) IS
    'Every span of one job execution across traces and services, in time order: the spans carrying the execution id and everything under them. Top-level spans (depth 0) carry gap_before_ms, the idle time since the previous top-level spans ended. Example: SELECT depth, service, operation, offset_ms, duration_ms, gap_before_ms FROM execution_trace(42);';

-- service_map --------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION {fn_service_map}(since timestamptz)
RETURNS TABLE (
    caller_service text,
    caller_operation text,
    callee_service text,
    callee_operation text,
    calls bigint,
    errors bigint,
    p50_ms double precision,
    p95_ms double precision
)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT p.service, p.operation, c.service, c.operation, count(*),
           count(*) FILTER (WHERE c.status = 'error'),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY c.duration_ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY c.duration_ms)
      FROM {table} c
      JOIN {table} p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id
     WHERE c.started_at >= $1
       AND c.parent_span_id IS NOT NULL
       AND (p.service <> c.service OR (p.kind = 'client' AND c.kind = 'server'))
     GROUP BY p.service, p.operation, c.service, c.operation
     ORDER BY 5 DESC, 1, 2, 3, 4;
END;

COMMENT ON FUNCTION {fn_service_map}(timestamptz) IS
    'Calls from one service operation to another since the given time: parent and child spans in different services, or a client span and the server span it called. With call and error counts and the callee''s p50/p95 duration (ms). Example: SELECT * FROM service_map(now() - interval ''1 day'');';
