-- One runner at a time leads maintenance (the lease rescue, pruning, periodic jobs, the
-- clean-up of dead runners' rows): the one whose lease on this row is current. Runners
-- renew or take it as they beat (the "beat" statement); a leader that dies or loses the
-- database stops renewing, and another takes over once the lease has run out. A lease in
-- a row, not a lock: a session's locks can't live behind a transaction pooler.
CREATE TABLE {leader} (
    name        text PRIMARY KEY,
    runner_id   text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    elected_at  timestamptz NOT NULL DEFAULT now()
);
