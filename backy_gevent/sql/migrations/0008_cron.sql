-- Periodic jobs: one row per worker with a cron schedule (the worker's "cron" and
-- "cron_timezone" attributes), written by each runner at start for the workers it has
-- (an upsert: a changed expression is taken, last_tick is kept). The leader of
-- maintenance enqueues each tick, advancing last_tick in the same statement and only
-- when it is still earlier than the tick (the "cron_tick" statement), so that a tick is
-- enqueued once however many runners race for it. The queue, priority and attempts of
-- the jobs are kept here too, so any runner can enqueue the ticks of any schedule.
CREATE TABLE {cron} (
    worker        text        PRIMARY KEY CHECK (worker <> ''),
    expression    text        NOT NULL,
    timezone      text        NOT NULL DEFAULT 'UTC',
    queue         text        NOT NULL DEFAULT 'default' CHECK (queue <> ''),
    priority      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 4 CHECK (max_attempts >= 1),
    -- The last tick enqueued; on a schedule's first start, the time it was written, so
    -- that no tick from before it is enqueued.
    last_tick     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
