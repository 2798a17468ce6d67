-- Quarantine: a job that was running when its runner died is marked quarantined by the
-- rescue; its later attempts run in a process of their own (backy_gevent.runner.isolation),
-- so a job that kills its process can't take the jobs beside it down again. rescues
-- counts the runners it lost: past max_attempts, each further loss is charged.
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11 and later).
ALTER TABLE {table}
    ADD COLUMN quarantined boolean NOT NULL DEFAULT false,
    ADD COLUMN rescues integer NOT NULL DEFAULT 0 CHECK (rescues >= 0);
