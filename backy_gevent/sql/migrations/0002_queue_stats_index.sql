-- Queue depth at scrape time (the metrics' queue_stats query) without reading the table.
-- Waiting and running jobs are counted through the fetch and lease indexes of 0001; this
-- index does the same for failed and cancelled jobs, which otherwise only a scan of the
-- whole table (completed rows included) could count. Jobs enter it only when they fail
-- for good or are cancelled, so it costs the claim and completion path nothing.
CREATE INDEX {failed_index} ON {table} (worker, queue, state)
    WHERE state IN ('failed', 'cancelled');
