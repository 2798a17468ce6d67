-- Paused queues, and two indexes for the web dashboard.
--
-- {queues}: one row per queue that was ever paused. `backy-gevent pause QUEUE` (or
-- Client.pause) sets paused and paused_at and notifies the table's channel with
-- "pause:<queue>"; resume clears them and notifies "resume:<queue>". Runners stop and
-- restart claims from a paused queue without a restart.
CREATE TABLE {queues} (
    queue      text PRIMARY KEY CHECK (queue <> ''),
    paused     boolean     NOT NULL DEFAULT false,
    paused_at  timestamptz,
    CHECK (paused = (paused_at IS NOT NULL))
);

-- The dashboard's job list, filtered by state, newest first, a page at a time from the
-- last id shown (keyset). Without it a filter on a rare state (failed jobs among a
-- million completed ones, or "available" while nothing waits) reads the whole table
-- through the primary key to fill a page: 290 ms for 10 cancelled jobs among a million
-- rows, against 1.7 ms with it (scripts/web_timings.py; README, "Web dashboard"). Its
-- cost is one more index entry for each new row version: enqueue, claim, and each
-- outcome written to a kept row.
--
-- Its predicate holds every row (enqueued_at is NOT NULL) but keeps the index to the
-- statements that say so, the dashboard's: the hot statements name state and id too,
-- never enqueued_at, and must keep reaching the table by primary key whatever the
-- statistics say (queries.sql, "Plans"). Told by stale statistics that nothing runs, the
-- planner would otherwise find a running job's row through (state, id) as readily as
-- through the primary key (tests/test_plans.py caught it).
CREATE INDEX {state_index} ON {table} (state, id) WHERE enqueued_at IS NOT NULL;

-- Finished rows by state and when they finished: the dashboard's "last hour"
-- (throughput and failures) reads only the last hour's rows (the overview: 16 ms on a
-- million rows, 190 ms without it), and pruning (`prune`, the leader's retention: one
-- state at a time, oldest first) finds old rows without reading the rest, even when
-- older rows of a state that is kept come first. Only finished rows enter it, so
-- waiting and running jobs pay nothing for it.
CREATE INDEX {finished_index} ON {table} (state, finished_at)
    WHERE state IN ('completed', 'failed', 'cancelled');
