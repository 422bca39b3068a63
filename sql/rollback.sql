-- otel_pg_exporter rollback: undo every migration of one spans table.
--
-- A template like the migrations (every literal brace doubled): otel-pg rollback fills in
-- the spans table's quoted name, and the history table's name and the spans table's name as
-- string literals. It drops exactly what
-- the migrations created: the table (its indexes, comments and partitions go with it), the
-- table's rows in otel_pg_schema_migrations, and that history table itself once no other spans
-- table is recorded in it, with the maintenance routines the schema's spans tables share
-- (otel_pg_maintain, ...). A schema created by migrate is left in place: it may have existed before.
-- No CASCADE: a view someone built on the table makes the rollback fail instead of vanishing.

-- The query functions first: their SQL-standard bodies depend on the table.
DROP FUNCTION IF EXISTS
    {fn_trace_tree}(text),
    {fn_trace_gaps}(text, double precision),
    {fn_critical_path}(text),
    {fn_orphan_spans}(timestamptz, text),
    {fn_error_traces}(timestamptz, text),
    {fn_slow_operations}(timestamptz, text),
    {fn_execution_trace}(bigint),
    {fn_service_map}(timestamptz);

DROP TABLE IF EXISTS {table};

-- The names reach the DO block through transaction-local settings, so that no user text is
-- ever pasted inside its dollar-quoted body.
SELECT
    set_config('otel_pg_exporter.migrations_table', {migrations_regclass}, true),
    set_config('otel_pg_exporter.table_name', {table_name}, true),
    set_config('otel_pg_exporter.shared_routines', {shared_routines}, true);

DO $$
DECLARE
    history regclass := to_regclass(current_setting('otel_pg_exporter.migrations_table'));
    others boolean;
    routine regprocedure;
BEGIN
    IF history IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('DELETE FROM %s WHERE table_name = $1', history)
        USING current_setting('otel_pg_exporter.table_name');
    EXECUTE format('SELECT EXISTS (SELECT FROM %s)', history) INTO others;
    IF NOT others THEN
        FOR routine IN
            SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = (SELECT c.relnamespace FROM pg_class c WHERE c.oid = history)
               AND p.proname = ANY (string_to_array(
                       current_setting('otel_pg_exporter.shared_routines'), ','))
        LOOP
            EXECUTE format('DROP ROUTINE %s', routine);
        END LOOP;
        EXECUTE format('DROP TABLE %s', history);
    END IF;
END
$$;
