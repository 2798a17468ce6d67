-- rate_limit: one row per attempt started of a worker with a rate limit, for as long as
-- it falls within the worker's window. The claim of such a worker counts its rows to
-- know how many more may start, records its own starts, and deletes the ones that have
-- left the window, all in one statement.
CREATE TABLE {starts} (
    worker      text        NOT NULL,
    started_at  timestamptz NOT NULL
);
CREATE INDEX {starts_index} ON {starts} (worker, started_at);
