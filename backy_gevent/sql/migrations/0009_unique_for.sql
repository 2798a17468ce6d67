-- unique_for: an enqueue with a unique_key and unique_for looks for any job of that key
-- enqueued within that many seconds, finished ones included. Only keyed jobs enter it.
CREATE INDEX {unique_recent_index} ON {table} (unique_key, enqueued_at)
    WHERE unique_key IS NOT NULL;
