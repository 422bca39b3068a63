-- otel_pg_exporter migration 0003: retention that never stalls the writers.
--
-- A template like 0001 (every literal brace doubled). Three routines in the spans table's
-- schema, shared by every spans table there: each takes the table as a regclass argument and
-- builds its statements with format('%s', regclass), so no name is ever pasted into a body.
--
-- Rows go in small batches by the indexed created_at column, each batch its own transaction
-- with a short lock_timeout: a writer's INSERT never waits behind a long DELETE, and no
-- DELETE ... RETURNING of millions of rows ever holds memory. On a table partitioned by day,
-- whole partitions older than the cutoff are detached and dropped first: instant, no bloat.

CREATE OR REPLACE FUNCTION {maint_cleanup_batch}(
    tbl regclass, cutoff timestamptz, batch_rows integer DEFAULT 5000
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $body$
DECLARE
    deleted bigint;
BEGIN
    EXECUTE format(
        'WITH old AS ('
        '    SELECT trace_id, span_id, started_at FROM %s'
        '     WHERE created_at < $1 ORDER BY created_at LIMIT $2'
        '), gone AS ('
        '    DELETE FROM %s AS t USING old'
        '     WHERE t.trace_id = old.trace_id AND t.span_id = old.span_id'
        '       AND t.started_at = old.started_at'
        '    RETURNING 1'
        ') SELECT count(*) FROM gone',
        tbl, tbl)
    INTO deleted USING cutoff, batch_rows;
    RETURN deleted;
END
$body$;

COMMENT ON FUNCTION {maint_cleanup_batch}(regclass, timestamptz, integer) IS
    'otel_pg_exporter retention: delete at most batch_rows spans created before cutoff, oldest first, through the created_at index; returns the rows deleted. Call it in a loop, one transaction per call (otel_pg_cleanup does).';

CREATE OR REPLACE FUNCTION {maint_drop_partitions}(tbl regclass, cutoff timestamptz)
RETURNS TABLE (dropped text, rows bigint)
LANGUAGE plpgsql VOLATILE
AS $body$
DECLARE
    part record;
    upper_bound timestamptz;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = tbl
         ORDER BY 2
    LOOP
        CONTINUE WHEN part.bound = 'DEFAULT';
        upper_bound := substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        IF upper_bound IS NOT NULL AND upper_bound <= cutoff THEN
            dropped := part.rel::text;  -- before the drop: afterwards only its number is left
            EXECUTE format('SELECT count(*) FROM %s', part.rel) INTO rows;
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', tbl, part.rel);
            EXECUTE format('DROP TABLE %s', part.rel);
            RETURN NEXT;
        END IF;
    END LOOP;
END
$body$;

COMMENT ON FUNCTION {maint_drop_partitions}(regclass, timestamptz) IS
    'otel_pg_exporter retention for a table partitioned by started_at: detach and drop every partition whose upper bound is at or before cutoff (the default partition is kept); returns each partition dropped with its row count. Set a lock_timeout before calling it.';

CREATE OR REPLACE PROCEDURE {maint_cleanup}(
    tbl regclass,
    older_than interval DEFAULT interval '30 days',
    batch_rows integer DEFAULT 5000,
    pause_ms integer DEFAULT 100
)
LANGUAGE plpgsql
AS $body$
DECLARE
    cutoff timestamptz := now() - older_than;
    home text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.oid = tbl);
    deleted bigint;
    total bigint := 0;
    dropped integer := 0;
    waits integer := 0;
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = tbl) = 'p' THEN
        -- By whole days: old spans in the default partition go to their day partitions
        -- first (otel_pg_maintain), then every day past the cutoff is dropped. No row-by-row
        -- DELETE on this layout: a day's spans stay until the whole day is past the cutoff.
        PERFORM set_config('lock_timeout', '2s', true);
        EXECUTE format('SELECT count(*) FROM %I.otel_pg_maintain($1)', home) USING tbl;
        COMMIT;
        PERFORM set_config('lock_timeout', '100ms', true);
        EXECUTE format('SELECT count(*), coalesce(sum(rows), 0)'
                       ' FROM %I.otel_pg_drop_partitions($1, $2)', home)
            INTO dropped, total USING tbl, cutoff;
        COMMIT;
        RAISE NOTICE 'otel_pg_cleanup(%): % partitions dropped (% rows), cutoff %',
            tbl, dropped, total, cutoff;
        RETURN;
    END IF;
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            EXECUTE format('SELECT %I.otel_pg_cleanup_batch($1, $2, $3)', home)
                INTO deleted USING tbl, cutoff, batch_rows;
        EXCEPTION WHEN lock_not_available THEN
            deleted := -1;  -- a lock is held (a migration, VACUUM FULL): try again shortly
            waits := waits + 1;
        END;
        COMMIT;
        EXIT WHEN deleted >= 0 AND deleted < batch_rows;
        EXIT WHEN waits > 50;
        total := total + greatest(deleted, 0);
        PERFORM pg_sleep(pause_ms / 1000.0);
    END LOOP;
    total := total + greatest(deleted, 0);
    RAISE NOTICE 'otel_pg_cleanup(%): % rows deleted, % partitions dropped, cutoff %',
        tbl, total, dropped, cutoff;
END
$body$;

COMMENT ON PROCEDURE {maint_cleanup}(regclass, interval, integer, integer) IS
    'otel_pg_exporter retention for schedulers (pg_cron): on a partitioned table, drop the day partitions past older_than (after moving old spans out of the default partition); on a plain one, delete older rows in batches of batch_rows, each its own transaction with a 100 ms lock_timeout, pausing pause_ms between batches. Example: CALL otel_pg_cleanup(''trace_spans'', interval ''30 days'');';
