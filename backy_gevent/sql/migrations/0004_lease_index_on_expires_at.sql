-- The lease index again, on the same rows, with a predicate that only statements naming
-- expires_at can use: the rescuer (expires_at < now()) and queue_stats. Every running job
-- has a lease and no other job has one (the running_has_lease check and every statement
-- that ends an attempt), so "expires_at IS NOT NULL" holds the running jobs, as
-- "state = 'running'" did.
--
-- Why: with "state = 'running'", every statement that checks a lease token could read
-- the table through this index too. Its statistics are usually taken while the table is
-- idle, and then the planner prices reading every running job through it at about one
-- row: fail and touch read all running jobs to find one, and a completion of 1,000 ids
-- with 15,000 jobs running read all of them for each id (5 to 13 s instead of 5 ms).
--
-- The index is built while the migration holds the table (dropping the old one locks it),
-- so `backy-gevent setup` blocks the runners for one scan of the table.
DROP INDEX {lease_index};
CREATE INDEX {lease_index} ON {table} (expires_at) WHERE expires_at IS NOT NULL;
