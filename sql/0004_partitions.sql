-- otel_pg_exporter migration 0004: otel_pg_maintain, the day partitions of a partitioned
-- spans table (otel-pg migrate --partitioned).
--
-- A template like 0001 (every literal brace doubled); its only placeholder is the function's
-- schema-qualified name, in the spans table's schema. The function is generic: it takes the
-- spans table as a regclass, so its body holds no table name, and every spans table of the
-- schema shares it (CREATE OR REPLACE: applying this file for another table is a no-op).
-- Every name it builds is quoted with format('%I') or printed by regclass, never pasted.
--
-- otel_pg_maintain(tbl, days_ahead, days_behind), for a table partitioned by range on one
-- timestamptz column (started_at):
--   * keeps a DEFAULT partition, <table>_default, so that a span whose time falls outside
--     every day partition still lands;
--   * creates the missing day partitions <table>_pYYYYMMDD from today - days_behind to
--     today + days_ahead, days in UTC: [YYYY-MM-DD 00:00 UTC, next day 00:00 UTC);
--   * empties the default partition: its rows are moved out (DELETE ... RETURNING into a
--     temporary table), the partition of each of their days is created, and the rows are
--     inserted back through the parent, in the caller's transaction, so no reader ever sees a
--     row missing or twice;
--   * returns one row per partition it created: the partition, its day, and how many rows it
--     received from the default partition.
-- For a plain (not partitioned) table, or one handed to pg_partman (its part_config lists it),
-- it returns no row and changes nothing.
--
-- Names longer than 63 bytes are shortened as schema/table.py's partition_name does: the
-- table name cut on a character boundary, '_', 8 hex digits of its SHA-256, the suffix.
--
-- Locks: SHARE UPDATE EXCLUSIVE on the parent for the whole call (concurrent calls queue;
-- inserts and reads go on), and, when there is something to do, ACCESS EXCLUSIVE on the
-- default partition (only writers of out-of-range spans and unpruned reads wait, for the
-- length of the call; a call with nothing to do returns before taking it). New partitions are
-- created apart and ATTACHed, which needs only SHARE UPDATE EXCLUSIVE on the parent, where
-- CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE and stall every writer behind a
-- long read. Callers set lock_timeout (otel-pg maintain does). Keeping a default partition
-- rules out DETACH PARTITION ... CONCURRENTLY (PostgreSQL refuses it while one exists), so
-- retention detaches without it (see the README, "Retention and partitions").

CREATE OR REPLACE FUNCTION {maint_maintain}(
    tbl regclass,
    days_ahead integer DEFAULT 3,
    days_behind integer DEFAULT 1
)
RETURNS TABLE (partition_created regclass, partition_day date, rows_moved bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $maintain$
DECLARE
    nsp_oid oid;
    nsp name;
    parent name;
    strategy "char";
    key_columns int2vector;
    part_col text;
    part_type regtype;
    columns text;
    default_oid oid;
    moved_any boolean := false;
    today date := (now() AT TIME ZONE 'UTC')::date;
    wanted date[];
    day date;
    lo text;
    hi text;
    day_stem text;
    default_stem text;
    pname text;
    head text;
    room integer;
    existing oid;
    created regclass;
    made regclass[] := '{{}}';
    made_days date[] := '{{}}';
    k integer;
    moved_count bigint;
    partman name;
    managed boolean;
BEGIN
    IF days_ahead IS NULL OR days_behind IS NULL OR days_ahead < 0 OR days_behind < 0 THEN
        RAISE EXCEPTION 'otel_pg_maintain: days_ahead and days_behind must be 0 or more, got % and %',
            days_ahead, days_behind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT c.relnamespace, n.nspname, c.relname
      INTO nsp_oid, nsp, parent
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl AND c.relkind = 'p';
    IF NOT FOUND THEN
        RETURN;  -- the plain layout: nothing to maintain
    END IF;

    -- A table handed to pg_partman (create_parent) is pg_partman's to maintain.
    SELECT n.nspname INTO partman FROM pg_extension e
      JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman';
    IF FOUND THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM %I.part_config WHERE parent_table = $1)',
                       partman)
            INTO managed USING nsp || '.' || parent;
        IF managed THEN
            RAISE NOTICE 'otel_pg_maintain: % is maintained by pg_partman; nothing done', tbl;
            RETURN;
        END IF;
    END IF;

    -- One maintenance at a time per table (this lock conflicts with itself), taken before
    -- anything is read; writers (ROW EXCLUSIVE) and readers go on.
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', tbl);

    SELECT p.partstrat, p.partattrs, nullif(p.partdefid, 0)
      INTO strategy, key_columns, default_oid
      FROM pg_partitioned_table p WHERE p.partrelid = tbl;
    IF strategy <> 'r' OR array_length(key_columns::int2[], 1) <> 1 THEN
        RAISE EXCEPTION 'otel_pg_maintain: % is not partitioned by range on one column', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT a.attname, a.atttypid::regtype
      INTO part_col, part_type
      FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum = key_columns[0];
    IF part_type <> 'timestamp with time zone'::regtype THEN
        RAISE EXCEPTION 'otel_pg_maintain: % is partitioned on %, of type %, not timestamptz',
            tbl, part_col, part_type
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
      INTO columns
      FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;

    -- The stems of the names: the table's name, or, when the name and its suffix (_pYYYYMMDD,
    -- 10 bytes; _default, 8) pass 63 bytes, its head cut on a character boundary, '_' and 8
    -- hex digits of its SHA-256 (schema/table.py's partition_name does the same).
    day_stem := parent;
    default_stem := parent;
    FOREACH room IN ARRAY ARRAY[63 - 10, 63 - 8] LOOP
        head := parent;
        IF octet_length(parent) > room THEN
            WHILE octet_length(head) > room - 9 LOOP
                head := left(head, -1);
            END LOOP;
            head := head || '_' || left(encode(sha256(convert_to(parent, 'UTF8')), 'hex'), 8);
        END IF;
        IF room = 63 - 10 THEN
            day_stem := head;
        ELSE
            default_stem := head;
        END IF;
    END LOOP;

    wanted := ARRAY(SELECT d::date FROM generate_series(today - days_behind, today + days_ahead,
                                                        interval '1 day') AS d);

    IF default_oid IS NOT NULL THEN
        -- The usual hourly run: every partition there, nothing in the default partition.
        -- Return before locking the default partition, which inserts of out-of-range spans
        -- and unpruned reads would wait for.
        EXECUTE format('SELECT EXISTS (SELECT FROM %s)', default_oid::regclass) INTO moved_any;
        IF NOT moved_any AND NOT EXISTS (
            SELECT FROM unnest(wanted) AS w
             WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = nsp_oid
                                  AND c.relname = day_stem || '_p' || to_char(w, 'YYYYMMDD')))
        THEN
            RETURN;
        END IF;
    END IF;

    IF default_oid IS NULL THEN
        pname := default_stem || '_default';
        EXECUTE format(
            'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
            ' INCLUDING STORAGE INCLUDING COMPRESSION)', nsp, pname, tbl);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I DEFAULT', tbl, nsp, pname);
        EXECUTE format(
            'COMMENT ON TABLE %I.%I IS %L', nsp, pname,
            format('Spans of %s whose %s falls outside every day partition; otel_pg_maintain '
                   'moves them to partitions of their own.', tbl, part_col));
    ELSE
        -- Taken now, before any partition is attached (which needs it too), so that no
        -- out-of-range span lands in it between the move and the attach.
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', default_oid::regclass);
        EXECUTE format('SELECT EXISTS (SELECT FROM %s)', default_oid::regclass) INTO moved_any;
    END IF;

    IF moved_any THEN
        DROP TABLE IF EXISTS pg_temp.otel_pg_maintain_moved;
        EXECUTE format('CREATE TEMP TABLE otel_pg_maintain_moved (LIKE %s) ON COMMIT DROP', tbl);
        EXECUTE format(
            'WITH moved AS (DELETE FROM %1$s RETURNING %2$s)'
            ' INSERT INTO pg_temp.otel_pg_maintain_moved (%2$s) SELECT %2$s FROM moved',
            default_oid::regclass, columns);
        -- Days a partition can be made for: finite, years 1 to 9999. Others stay in default.
        EXECUTE format(
            'SELECT array_agg(DISTINCT (%1$I AT TIME ZONE ''UTC'')::date)'
            '  FROM pg_temp.otel_pg_maintain_moved'
            ' WHERE %1$I >= timestamptz ''0001-01-01 00:00 UTC'''
            '   AND %1$I < timestamptz ''10000-01-01 00:00 UTC''', part_col)
            INTO STRICT made_days;
        wanted := ARRAY(SELECT DISTINCT u FROM unnest(wanted || coalesce(made_days, '{{}}')) AS u
                         ORDER BY u);
        made_days := '{{}}';
    END IF;

    FOREACH day IN ARRAY wanted LOOP
        pname := day_stem || '_p' || to_char(day, 'YYYYMMDD');
        SELECT c.oid INTO existing FROM pg_class c
         WHERE c.relnamespace = nsp_oid AND c.relname = pname;
        IF FOUND THEN
            IF NOT EXISTS (SELECT FROM pg_inherits h
                            WHERE h.inhrelid = existing AND h.inhparent = tbl) THEN
                RAISE WARNING 'otel_pg_maintain: % exists but is not a partition of %; '
                    'spans of % stay in the default partition', existing::regclass, tbl, day;
            END IF;
            CONTINUE;
        END IF;
        -- ISO text with its offset: read back the same whatever DateStyle and TimeZone.
        lo := to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00';
        hi := to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                ' INCLUDING STORAGE INCLUDING COMPRESSION)', nsp, pname, tbl);
            created := format('%I.%I', nsp, pname)::regclass;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                           tbl, created, lo, hi);
        EXCEPTION WHEN invalid_object_definition THEN
            -- Another partition (made by hand or by pg_partman) already covers part of the
            -- day: leave the day to it.
            RAISE NOTICE 'otel_pg_maintain: no partition for % of %: %', day, tbl, SQLERRM;
            CONTINUE;
        END;
        made := made || created;
        made_days := made_days || day;
    END LOOP;

    IF moved_any THEN
        EXECUTE format(
            'INSERT INTO %1$s (%2$s) SELECT %2$s FROM pg_temp.otel_pg_maintain_moved',
            tbl, columns);
    END IF;

    FOR k IN 1 .. coalesce(array_length(made, 1), 0) LOOP
        moved_count := 0;
        IF moved_any THEN
            EXECUTE format(
                'SELECT count(*) FROM pg_temp.otel_pg_maintain_moved'
                ' WHERE %1$I >= %2$L::timestamptz AND %1$I < %3$L::timestamptz', part_col,
                to_char(made_days[k], 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char(made_days[k] + 1, 'YYYY-MM-DD') || ' 00:00:00+00')
                INTO moved_count;
        END IF;
        partition_created := made[k];
        partition_day := made_days[k];
        rows_moved := moved_count;
        RETURN NEXT;
    END LOOP;

    IF moved_any THEN
        DROP TABLE pg_temp.otel_pg_maintain_moved;
    END IF;
END
$maintain$;

COMMENT ON FUNCTION {maint_maintain}(regclass, integer, integer) IS
    'otel_pg_exporter: for a spans table partitioned by day on started_at, create the day partitions (UTC) from today - days_behind to today + days_ahead, keep the DEFAULT partition, and move the rows found there into partitions of their own; returns the partitions created. Does nothing for a plain table. Run by otel-pg maintain, hourly.';
