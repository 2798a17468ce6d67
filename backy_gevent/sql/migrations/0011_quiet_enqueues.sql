-- Quiet enqueues: a runner that follows a stream of jobs claims every claim gap on its
-- own, so enqueues of the workers it serves need not notify meanwhile (insert_job_now).
-- quiet_until: until when (renewed by each of its claims; NULL: not following);
-- quiet_workers: which of its workers (those its claims had room for).
ALTER TABLE {runners}
    ADD COLUMN quiet_until   timestamptz,
    ADD COLUMN quiet_workers text[] NOT NULL DEFAULT ARRAY[]::text[];
