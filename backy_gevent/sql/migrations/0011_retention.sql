-- Retention (prune_completed_after, prune_failed_after) and `backy-gevent prune` delete
-- finished rows oldest first: this index finds them without reading the table. Jobs
-- enter it only when they finish, so the claim path pays nothing for it.
CREATE INDEX {finished_index} ON {table} (state, finished_at)
    WHERE state IN ('completed', 'failed', 'cancelled');
