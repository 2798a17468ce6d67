-- Quarantine: a job that was running when its runner died is marked quarantined by the
-- rescue; its later attempts run in a process of their own (backy_gevent.runner.isolation),
-- so a job that kills its process can't take the jobs beside it down again.
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11 and later).
ALTER TABLE {table} ADD COLUMN quarantined boolean NOT NULL DEFAULT false;

-- The claim finds waiting quarantined jobs through this index, which is empty but for
-- the rare jobs that lost their runner.
CREATE INDEX {quarantine_index} ON {table} (priority, run_at, id)
    WHERE state = 'available' AND quarantined;
