-- What perform returned, as JSON, kept on the row when finished rows are kept
-- (delete_finished_jobs = false). NULL when it returned None.
ALTER TABLE {table} ADD COLUMN result jsonb;
