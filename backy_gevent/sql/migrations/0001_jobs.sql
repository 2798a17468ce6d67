-- The jobs table, named after the table_name option, and the indexes its queries use.
-- {table}, {fetch_index} and the like are identifiers quoted by psycopg2.sql; nothing
-- is pasted into this text as a string.
CREATE TABLE {table} (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker        text        NOT NULL CHECK (worker <> ''),
    args          jsonb       NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(args) = 'object'),
    queue         text        NOT NULL DEFAULT 'default' CHECK (queue <> ''),
    priority      integer     NOT NULL DEFAULT 0,
    state         text        NOT NULL DEFAULT 'available'
                  CHECK (state IN ('available', 'running', 'completed', 'failed', 'cancelled')),
    attempt       integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts  integer     NOT NULL DEFAULT 4 CHECK (max_attempts >= 1),
    run_at        timestamptz NOT NULL DEFAULT now(),
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    attempted_at  timestamptz,
    finished_at   timestamptz,
    -- The lease of a running attempt: past it, the rescuer takes the job back.
    expires_at    timestamptz,
    runner_id     text,
    unique_key    text,
    errors        jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    CONSTRAINT {running_has_lease} CHECK (
        (state = 'running') = (expires_at IS NOT NULL AND runner_id IS NOT NULL)
    )
);

-- The claim query: available jobs of one worker, in priority, run_at, id order.
CREATE INDEX {fetch_index} ON {table} (worker, priority, run_at, id)
    WHERE state = 'available';

-- The rescuer: running jobs by lease expiry.
CREATE INDEX {lease_index} ON {table} (expires_at) WHERE state = 'running';

-- unique_key holds while a job is waiting or running.
CREATE UNIQUE INDEX {unique_index} ON {table} (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running');

-- Runners announce themselves and beat here, so operators can see who holds what.
CREATE TABLE {runners} (
    id            text PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    workers       text[]      NOT NULL,
    queues        text[]      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
