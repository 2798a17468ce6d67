-- Every statement backy-gevent runs against the jobs table, one named block each.
-- A block starts with "-- name: NAME" and a comment saying what it is for. {table} and
-- {runners} are identifiers filled in by psycopg2.sql; %(x)s are values.
--
-- Runners of a table LISTEN on "backy_<oid of the table>"; statements that make work
-- available notify that channel, naming it from the rows' tableoid. So tables of one name
-- in different schemas (or databases) never wake, or cancel, each other's runners.
--
-- Plans. The table's statistics are usually stale: autovacuum analyzes it while it is
-- idle, so they say that almost nothing waits or runs just when a burst arrives. The hot
-- statements (claim, claim_one, complete_delete, complete_keep, fail, hand_back, touch)
-- therefore leave no choice of plan to a row estimate, prepared or not: they reach the
-- table by primary key, one lookup per id, so their cost follows the batch.
-- - A batch write is "WHERE id = ANY(ARRAY(subquery))". The subquery walks the caller's
--   ids, looks each row up by primary key (LATERAL), checks its lease token and locks it
--   (the claim picks its rows through the fetch index, SKIP LOCKED); the write then finds
--   the locked rows by primary key, the planner assuming ten. A join of the ids with the
--   table let the estimates choose the order instead: told that about one job runs, the
--   planner read every running job and looked for each in the batch.
-- - The claim walks the fetch index in order and stops at its limit; it must never be
--   weighed against a read of the whole table and a sort. A paused queue is therefore
--   skipped by NOT EXISTS on the queues table, not by "queue <> ALL(ARRAY(paused
--   queues))": of an array it can't see, the planner assumes values drawn from the
--   column, so with every waiting job in one queue it estimated that one row passes,
--   the LIMIT saved nothing, and it read the whole table and sorted it on every claim
--   (a 300,000 backlog drained at 0.42 of the rate of a 20,000 one; scripts/big_backlog.py).
--   The anti-join is estimated to keep about half the rows, whatever the statistics.
-- - The lease index serves only statements that name expires_at (rescue, queue_stats):
--   its predicate is "expires_at IS NOT NULL" (migration 0003), which "state = 'running'"
--   doesn't imply. Otherwise fail, touch and the token checks could read every running
--   job through it, an index the stale statistics call empty.

-- name: insert_jobs
-- Enqueue jobs without unique keys, all of one worker, queue, priority and schedule, in
-- one statement: args is one JSON array of the jobs' args objects (one parameter to quote
-- and parse, not an array of many). No ON CONFLICT: a row without a key can't conflict,
-- and checking the arbiter index costs every row. Returns what only the server knows
-- (the client has the rest), in id order, which is input order. The NOTIFY wakes, at
-- commit, the runners that serve the worker and queue: now, or when the earliest of the
-- jobs falls due ("in" seconds); one per statement, whatever the number of jobs.
-- (%(priority)s)::int: in parentheses, so that EXECUTE passes -2147483648 uncast (the
-- cast would bind before the minus, and 2147483648 is no integer).
WITH inserted AS (
    INSERT INTO {table} (worker, args, queue, priority, max_attempts, run_at)
    SELECT %(worker)s::text, a, %(queue)s::text, (%(priority)s)::int, %(max_attempts)s::int,
           coalesce(%(run_at)s::timestamptz,
                    clock_timestamp() + make_interval(secs => %(delay)s::float8))
    FROM jsonb_array_elements(%(args)s::jsonb) AS t(a)
    RETURNING id, run_at, enqueued_at, tableoid
), notified AS (
    SELECT pg_notify('backy_' || tableoid, json_build_object(
        'worker', %(worker)s::text, 'queue', %(queue)s::text,
        'in', greatest(0, extract(epoch FROM min(run_at) - clock_timestamp()))::float8
    )::text)
    FROM inserted GROUP BY tableoid
)
SELECT id, run_at, enqueued_at FROM inserted LEFT JOIN notified ON true ORDER BY id;

-- name: insert_job
-- insert_jobs for one job, enqueue's usual case (args: one JSON object): a VALUES row
-- costs less to run than a set-returning function over a one-element array.
WITH inserted AS (
    INSERT INTO {table} (worker, args, queue, priority, max_attempts, run_at)
    VALUES (%(worker)s::text, %(args)s::jsonb, %(queue)s::text, (%(priority)s)::int,
            %(max_attempts)s::int,
            coalesce(%(run_at)s::timestamptz,
                     clock_timestamp() + make_interval(secs => %(delay)s::float8)))
    RETURNING id, run_at, enqueued_at, tableoid
)
SELECT id, run_at, enqueued_at, pg_notify('backy_' || tableoid, json_build_object(
    'worker', %(worker)s::text, 'queue', %(queue)s::text,
    'in', greatest(0, extract(epoch FROM run_at - clock_timestamp()))::float8
)::text)
FROM inserted;

-- name: insert_job_now
-- insert_job for a job due now (no run_at, no delay or a delay of 0), enqueue's commonest
-- case: run_at is the column default, the transaction's start, as enqueued_at is (so the
-- two are equal and only one is returned), and the notification's payload comes from
-- the client (its "in" is 0). Measured in turns against insert_job, raw psycopg2 on one
-- connection: 0.94 of the raw INSERT + NOTIFY floor's rate against 0.87 (building the
-- payload and writing two timestamps out cost the server that much).
WITH inserted AS (
    INSERT INTO {table} (worker, args, queue, priority, max_attempts)
    VALUES (%(worker)s::text, %(args)s::jsonb, %(queue)s::text, (%(priority)s)::int,
            %(max_attempts)s::int)
    RETURNING id, enqueued_at, tableoid
)
SELECT id, enqueued_at, pg_notify('backy_' || tableoid, %(payload)s::text)
FROM inserted;

-- name: insert_job_now_quiet
-- insert_job_now, quiet: no NOTIFY while a runner that serves the job's worker and
-- queue follows a stream (its quiet_until is current: quiet_enqueues); "quiet" says
-- whether it was so. Only as a statement of its own transaction, so that what it
-- decides holds at its commit, a moment later. That runner claims every claim gap on
-- its own, so the notification would wake nobody who needs it, and a notifying commit
-- is expensive: it holds a lock that serializes every notifying commit in the database
-- through its WAL flush (4 clients here: 4,900 commits a second with NOTIFY, 7,400
-- without), and it wakes every session that LISTENs in the database, whatever its
-- channel. The check costs a single enqueue about 8 percent of its rate on one
-- connection, so the client asks it only while a runner follows, and now and then
-- otherwise (Client._insert_due_now).
WITH inserted AS (
    INSERT INTO {table} (worker, args, queue, priority, max_attempts)
    VALUES (%(worker)s::text, %(args)s::jsonb, %(queue)s::text, (%(priority)s)::int,
            %(max_attempts)s::int)
    RETURNING id, enqueued_at, tableoid
), quiet AS (
    SELECT EXISTS (
        SELECT FROM {runners} r
        WHERE r.quiet_until > clock_timestamp()
          AND %(worker)s::text = ANY(r.quiet_workers)
          AND (cardinality(r.queues) = 0 OR %(queue)s::text = ANY(r.queues))) AS quiet
)
SELECT id, enqueued_at, quiet,
       CASE WHEN quiet THEN NULL ELSE pg_notify('backy_' || tableoid, %(payload)s::text) END
FROM inserted, quiet;

-- name: insert_unique_jobs
-- insert_jobs for jobs of which some carry a unique_key (unique_keys: one key or NULL
-- per element of args). A job whose unique_key is already taken by a waiting or running
-- job is not inserted, nor, with unique_for (seconds, 0: none), one whose key a job
-- enqueued within that long holds, finished or not; the statement then returns fewer
-- rows and the client reads the existing job.
WITH inserted AS (
    INSERT INTO {table} (worker, args, queue, priority, max_attempts, run_at, unique_key)
    SELECT %(worker)s::text, a, %(queue)s::text, (%(priority)s)::int, %(max_attempts)s::int,
           coalesce(%(run_at)s::timestamptz,
                    clock_timestamp() + make_interval(secs => %(delay)s::float8)), u
    FROM jsonb_array_elements(%(args)s::jsonb) WITH ORDINALITY AS t(a, n),
         LATERAL (SELECT (%(unique_keys)s::text[])[n] AS u) AS k
    WHERE u IS NULL OR %(unique_for)s::float8 = 0 OR NOT EXISTS (
        SELECT FROM {table} o
        WHERE o.unique_key = u
          AND o.enqueued_at > clock_timestamp() - make_interval(secs => %(unique_for)s::float8))
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running')
    DO NOTHING
    RETURNING id, run_at, enqueued_at, unique_key, tableoid
), notified AS (
    SELECT pg_notify('backy_' || tableoid, json_build_object(
        'worker', %(worker)s::text, 'queue', %(queue)s::text,
        'in', greatest(0, extract(epoch FROM min(run_at) - clock_timestamp()))::float8
    )::text)
    FROM inserted GROUP BY tableoid
)
SELECT id, run_at, enqueued_at, unique_key FROM inserted LEFT JOIN notified ON true ORDER BY id;

-- name: get_unique
-- The job that holds each unique_key: the waiting or running one, else (with
-- unique_for, seconds) the newest enqueued within that long.
SELECT DISTINCT ON (unique_key) * FROM {table}
WHERE unique_key = ANY(%(unique_keys)s)
  AND (state IN ('available', 'running')
       OR enqueued_at > clock_timestamp() - make_interval(secs => %(unique_for)s))
ORDER BY unique_key, state IN ('available', 'running') DESC, id DESC;

-- name: claim
-- Take up to "lim" available jobs of each worker for this runner, one statement for all
-- workers, none of a paused queue (the paused queues are read in this statement's
-- snapshot, so a pause or resume committed before the claim holds for it on every
-- runner). SKIP LOCKED lets runners claim side by side without ever taking one job twice;
-- the lease (expires_at) bounds how long a dead runner can hold a job: the lease of the
-- job's worker, at the same index in "leases" as the worker in "workers". The rows are
-- found by primary key from the array of picked ids, so no row estimate can choose a
-- plan that scans the table. The columns come back in the order of Job's fields, so
-- that the runner builds each Job from its row by position (Job.from_tuples, ROW_ORDER).
UPDATE {table} t
SET state = 'running', attempt = t.attempt + 1, runner_id = %(runner_id)s,
    attempted_at = now(),
    expires_at = now() + make_interval(
        secs => (%(leases)s::float8[])[array_position(%(workers)s::text[], t.worker)])
WHERE t.id = ANY(ARRAY(
    SELECT j.id
    FROM unnest(%(workers)s::text[], %(limits)s::int[]) AS wanted(worker, lim)
    CROSS JOIN LATERAL (
        SELECT id FROM {table} a
        WHERE state = 'available' AND worker = wanted.worker AND run_at <= now()
          AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
          AND NOT EXISTS (SELECT FROM {queues} p WHERE p.queue = a.queue AND p.paused)
        ORDER BY priority, run_at, id
        LIMIT wanted.lim
        FOR UPDATE SKIP LOCKED
    ) j
))
RETURNING t.id, t.worker, t.args, t.queue, t.priority, t.state, t.attempt, t.max_attempts,
          t.run_at, t.enqueued_at, t.errors, t.unique_key, t.attempted_at, t.finished_at,
          t.expires_at, t.runner_id, t.quarantined, t.rescues, t.result;

-- name: claim_one
-- The claim of one worker, its usual case (woken by that worker's notifications, or by
-- a slot of its pool coming free): the same parameters, arrays of one element, and the
-- same rows as "claim" (its columns in the same order), without the LATERAL over the
-- workers, which costs as much to plan and run as the claim itself (0.72 ms against
-- 0.47 ms from a busy client here). The rows are picked in the fetch index's order and
-- the LIMIT stops the walk, as there.
UPDATE {table} t
SET state = 'running', attempt = t.attempt + 1, runner_id = %(runner_id)s,
    attempted_at = now(),
    expires_at = now() + make_interval(secs => (%(leases)s::float8[])[1])
WHERE t.id = ANY(ARRAY(
    SELECT id FROM {table} a
    WHERE state = 'available' AND worker = (%(workers)s::text[])[1] AND run_at <= now()
      AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
      AND NOT EXISTS (SELECT FROM {queues} p WHERE p.queue = a.queue AND p.paused)
    ORDER BY priority, run_at, id
    LIMIT (%(limits)s::int[])[1]
    FOR UPDATE SKIP LOCKED
))
RETURNING t.id, t.worker, t.args, t.queue, t.priority, t.state, t.attempt, t.max_attempts,
          t.run_at, t.enqueued_at, t.errors, t.unique_key, t.attempted_at, t.finished_at,
          t.expires_at, t.runner_id, t.quarantined, t.rescues, t.result;

-- name: quiet_enqueues
-- Run together with a claim (one transaction) by a runner that follows a stream: for
-- quiet_for seconds, enqueues of these workers (in the runner's queues) need not notify
-- (insert_job_now), since this runner claims them every claim gap anyway. Renewed by
-- every claim while it follows; it lapses on its own when the runner dies.
UPDATE {runners}
SET quiet_until = clock_timestamp() + make_interval(secs => %(quiet_for)s::float8),
    quiet_workers = %(quiet_workers)s::text[]
WHERE id = %(runner_id)s;

-- name: follow_lock
-- Before start_following, in the same transaction: runners of the table decide to
-- follow a stream one at a time, so that start_following's snapshot (taken after this
-- lock) holds every mark committed before; two runners can't both find none and follow.
SELECT pg_advisory_xact_lock(hashtextextended(%(follow_key)s, 0));

-- name: start_following
-- A runner starts following a stream, unless another one follows it already (its mark
-- is current, for some of the same workers, in queues both serve): then those enqueues
-- are quiet and that runner claims them every gap, so this one leaves the stream to it
-- and is woken again by notifications (once that runner stops following, dies, or has
-- no free slot). A row: this runner follows now, and its mark is set.
UPDATE {runners}
SET quiet_until = clock_timestamp() + make_interval(secs => %(quiet_for)s::float8),
    quiet_workers = %(quiet_workers)s::text[]
WHERE id = %(runner_id)s AND NOT EXISTS (
    SELECT FROM {runners} r
    WHERE r.id <> %(runner_id)s AND r.quiet_until > clock_timestamp()
      AND r.quiet_workers && %(quiet_workers)s::text[]
      AND (cardinality(r.queues) = 0 OR cardinality(%(queues)s::text[]) = 0
           OR r.queues && %(queues)s::text[]))
RETURNING id;

-- name: end_quiet
-- A runner stops following a stream (or stops): enqueues notify again from this commit
-- on, and the notification (an empty payload: work of any kind) wakes the runners of the
-- table, for the jobs enqueued quietly since their last claim.
WITH ended AS (
    UPDATE {runners} SET quiet_until = NULL WHERE id = %(runner_id)s
)
SELECT pg_notify('backy_' || to_regclass(%(table)s)::oid, '');

-- name: lock_limited
-- Before claim_limited, in the same transaction: take each limited worker's advisory
-- lock, so that runners claim for it one at a time. The keys ("backy/<table>/<worker>")
-- come sorted, so two runners can't wait on each other.
SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
FROM unnest(%(lock_keys)s::text[]) AS k;

-- name: claim_limited
-- The claim of workers with a global_concurrency or a rate_limit, after lock_limited:
-- with the worker's lock held, this statement's snapshot holds every claim committed
-- before it, so the room it computes can't be overtaken. Room is the least of the free
-- slots ("lim"), the cap less the worker's running jobs whose lease is current (a dead
-- runner's slots come back with its lease), and the rate's count less the starts within
-- its window. Starts are recorded at clock_timestamp(), after the lock (the jobs'
-- attempted_at too), and the ones that left the window deleted. One row per worker and claimed job: limited_worker,
-- room (before this claim) and next_start_in (seconds until the window frees a start)
-- ahead of the job's columns, which are NULL when nothing was claimed for it.
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at),
wanted AS MATERIALIZED (
    SELECT w.worker, w.rate_secs,
           greatest(0, least(
               w.lim,
               w.cap - (SELECT count(*) FROM {table} r
                        WHERE r.state = 'running' AND r.worker = w.worker
                          AND r.expires_at > k.at),
               w.rate_n - (SELECT count(*) FROM {starts} s
                           WHERE s.worker = w.worker
                             AND s.started_at > k.at - make_interval(secs => w.rate_secs))
           )) AS room,
           (SELECT min(s.started_at) FROM {starts} s
            WHERE s.worker = w.worker
              AND s.started_at > k.at - make_interval(secs => w.rate_secs)) AS oldest_start
    FROM unnest(%(workers)s::text[], %(limits)s::int[], %(caps)s::int[],
                %(rate_counts)s::int[], %(rate_seconds)s::float8[])
         AS w(worker, lim, cap, rate_n, rate_secs)
    CROSS JOIN clock k
),
claimed AS (
    UPDATE {table} t
    SET state = 'running', attempt = t.attempt + 1, runner_id = %(runner_id)s,
        attempted_at = (SELECT at FROM clock),
        expires_at = now() + make_interval(
            secs => (%(leases)s::float8[])[array_position(%(workers)s::text[], t.worker)])
    WHERE t.id = ANY(ARRAY(
        SELECT j.id
        FROM wanted
        CROSS JOIN LATERAL (
            SELECT id FROM {table} a
            WHERE state = 'available' AND worker = wanted.worker AND run_at <= now()
              AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
              AND NOT EXISTS (SELECT FROM {queues} p WHERE p.queue = a.queue AND p.paused)
            ORDER BY priority, run_at, id
            LIMIT wanted.room
            FOR UPDATE SKIP LOCKED
        ) j
    ))
    RETURNING t.*
),
started AS (
    INSERT INTO {starts} (worker, started_at)
    SELECT c.worker, k.at
    FROM claimed c JOIN wanted w ON w.worker = c.worker CROSS JOIN clock k
    WHERE w.rate_secs IS NOT NULL
),
expired AS (
    DELETE FROM {starts} s USING wanted w, clock k
    WHERE s.worker = w.worker AND s.started_at <= k.at - make_interval(secs => w.rate_secs)
)
SELECT w.worker AS limited_worker, w.room,
       extract(epoch FROM coalesce(w.oldest_start, k.at)
                          + make_interval(secs => w.rate_secs) - k.at)::float8 AS next_start_in,
       c.*
FROM wanted w CROSS JOIN clock k LEFT JOIN claimed c ON c.worker = w.worker;

-- name: complete_delete
-- Finish successful attempts by deleting their rows. (id, attempt) is the lease token:
-- a job that was rescued and claimed again meanwhile is not touched. Each id's row is
-- found by primary key, checked and locked, then deleted (see "Plans" above).
DELETE FROM {table}
WHERE id = ANY(ARRAY(
    SELECT mine.id
    FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS done(id, attempt)
    CROSS JOIN LATERAL (
        SELECT id FROM {table}
        WHERE id = done.id AND attempt = done.attempt AND state = 'running'
          AND runner_id = %(runner_id)s
        FOR UPDATE
    ) mine
))
RETURNING id;

-- name: complete_keep
-- Finish successful attempts by marking them completed (delete_finished_jobs = false),
-- keeping what perform returned: "results", for the jobs in "result_ids" (only those
-- that returned something, so the lookup stays short).
UPDATE {table}
SET state = 'completed', finished_at = now(), expires_at = NULL, runner_id = NULL,
    result = (%(results)s::jsonb[])[array_position(%(result_ids)s::bigint[], id)]
WHERE id = ANY(ARRAY(
    SELECT mine.id
    FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS done(id, attempt)
    CROSS JOIN LATERAL (
        SELECT id FROM {table}
        WHERE id = done.id AND attempt = done.attempt AND state = 'running'
          AND runner_id = %(runner_id)s
        FOR NO KEY UPDATE
    ) mine
))
RETURNING id;

-- name: fail
-- Record a failed attempt: append the error and either schedule the next attempt at
-- now() + delay or, past max_attempts, mark the job failed.
UPDATE {table}
SET state = CASE WHEN attempt < max_attempts THEN 'available' ELSE 'failed' END,
    run_at = CASE WHEN attempt < max_attempts
                  THEN now() + make_interval(secs => %(delay)s) ELSE run_at END,
    finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE now() END,
    errors = errors || jsonb_build_array(%(error)s::jsonb),
    expires_at = NULL, runner_id = NULL
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running'
  AND runner_id = %(runner_id)s
RETURNING state, run_at;

-- name: snooze
-- The attempt raised Snooze(seconds): run the job again then, without spending an
-- attempt (the next run sees the same attempt number) and without an error. The
-- notification wakes the runners that serve it when it falls due.
WITH snoozed AS (
    UPDATE {table}
    SET state = 'available', attempt = attempt - 1,
        run_at = now() + make_interval(secs => %(delay)s),
        expires_at = NULL, runner_id = NULL
    WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running'
      AND runner_id = %(runner_id)s
    RETURNING worker, queue, run_at, tableoid
), notified AS (
    SELECT count(pg_notify('backy_' || tableoid, json_build_object(
        'worker', worker, 'queue', queue, 'in', %(delay)s::float8)::text))
    FROM snoozed
)
SELECT snoozed.run_at FROM snoozed, notified;

-- name: give_up
-- The attempt raised Cancel(reason): the job ends cancelled, the reason in its errors.
UPDATE {table}
SET state = 'cancelled', finished_at = now(),
    errors = errors || jsonb_build_array(%(error)s::jsonb),
    expires_at = NULL, runner_id = NULL
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running'
  AND runner_id = %(runner_id)s
RETURNING state;

-- name: hand_back
-- Give unfinished attempts back on shutdown without spending an attempt.
WITH back AS (
    UPDATE {table}
    SET state = 'available', attempt = attempt - 1, expires_at = NULL, runner_id = NULL
    WHERE id = ANY(ARRAY(
        SELECT mine.id
        FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS done(id, attempt)
        CROSS JOIN LATERAL (
            SELECT id FROM {table}
            WHERE id = done.id AND attempt = done.attempt AND state = 'running'
              AND runner_id = %(runner_id)s
            FOR NO KEY UPDATE
        ) mine
    ))
    RETURNING id, tableoid
), notified AS (
    SELECT pg_notify('backy_' || tableoid, '') FROM back LIMIT 1
)
SELECT back.id FROM back LEFT JOIN notified ON true;

-- name: touch
-- Extend a running attempt's lease; no row means the job is no longer this runner's.
UPDATE {table}
SET expires_at = now() + make_interval(secs => %(lease)s)
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running'
  AND runner_id = %(runner_id)s
RETURNING expires_at;

-- name: lead
-- The leader's round, every poll interval, in one statement: renew its lease on the
-- leadership of maintenance (only while it still holds it), beat, and, as the leader,
-- take back running jobs whose lease ran out (their runner died or froze). Returns one
-- row: the leader's id (NULL: this runner no longer leads, and rescued nothing) and the
-- jobs rescued, as JSON.
--
-- A rescued job keeps its place in the queue (its run_at is not touched) and is
-- quarantined: its later attempts run in a process of their own. The lost attempt is
-- not counted: the job may be an innocent bystander of the one that killed the runner,
-- and a quarantined job, alone in its process, can't kill its runner. Only a job that
-- has lost more runners than it has attempts is charged (with a LeaseExpired error) for
-- each further loss, so that even a job that finds a way to kill its runner from
-- quarantine ends failed. The expired rows are found through the lease index and then
-- by primary key; in the UPDATE, t.rescues is still the value from before it.
--
-- It also returns the table's dead row versions, as the statistics system counts them
-- for autovacuum (each claim and outcome leaves one): the leader vacuums past a bound;
-- and its peers, as the beat does.
WITH renewed AS (
    UPDATE {leader} SET expires_at = now() + make_interval(secs => %(lease)s)
    WHERE name = 'maintenance' AND runner_id = %(id)s
    RETURNING runner_id
), beat AS (
    UPDATE {runners} SET heartbeat_at = now() WHERE id = %(id)s
), expired AS (
    SELECT id FROM {table}
    WHERE state = 'running' AND expires_at < now() AND EXISTS (SELECT FROM renewed)
    FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE {table} t
    SET state = CASE WHEN t.rescues < t.max_attempts OR t.attempt < t.max_attempts
                     THEN 'available' ELSE 'failed' END,
        finished_at = CASE WHEN t.rescues < t.max_attempts OR t.attempt < t.max_attempts
                           THEN NULL ELSE now() END,
        attempt = CASE WHEN t.rescues < t.max_attempts THEN t.attempt - 1 ELSE t.attempt END,
        errors = CASE WHEN t.rescues < t.max_attempts THEN t.errors
                      ELSE t.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', t.attempt, 'at', now(), 'error', 'LeaseExpired',
                          'message', 'runner ' || t.runner_id || ' stopped renewing the lease',
                          'traceback', NULL)) END,
        rescues = t.rescues + 1, quarantined = true, expires_at = NULL, runner_id = NULL
    WHERE t.id = ANY(ARRAY(SELECT id FROM expired))
    RETURNING t.id, t.worker, t.queue, t.state, t.rescues > t.max_attempts AS counted,
              t.tableoid
), notified AS (
    SELECT count(pg_notify('backy_' || tableoid, ''))
    FROM (SELECT tableoid FROM rescued WHERE state = 'available' LIMIT 1) AS available
)
SELECT (SELECT runner_id FROM renewed) AS leader,
       (SELECT coalesce(json_agg(json_build_object(
            'id', id, 'worker', worker, 'queue', queue, 'state', state, 'counted', counted)),
            '[]') FROM rescued) AS rescued,
       coalesce(pg_stat_get_dead_tuples(to_regclass(%(table)s)), 0) AS dead_rows,
       1 + (SELECT count(*) FROM {runners} r
            WHERE r.id <> %(id)s AND r.workers && %(workers)s::text[]
              AND (cardinality(r.queues) = 0 OR cardinality(%(queues)s::text[]) = 0
                   OR r.queues && %(queues)s::text[])
              AND r.heartbeat_at > now() - make_interval(secs => %(alive)s)) AS peers
FROM notified;

-- name: cancel
-- Cancel a waiting or running job. The NOTIFY ("cancel:<id>") tells the runner of a
-- running one to stop it now; its result would be ignored anyway, since the lease token
-- no longer matches a running row.
WITH cancelled AS (
    UPDATE {table}
    SET state = 'cancelled', finished_at = now(), expires_at = NULL, runner_id = NULL
    WHERE id = %(id)s AND state IN ('available', 'running')
    RETURNING *, tableoid
), notified AS (
    SELECT pg_notify('backy_' || tableoid, 'cancel:' || id) FROM cancelled
)
SELECT cancelled.* FROM cancelled LEFT JOIN notified ON true;

-- name: retry
-- Make a failed or cancelled job available now with a fresh set of retries.
WITH retried AS (
    UPDATE {table}
    SET state = 'available', run_at = now(), finished_at = NULL,
        max_attempts = attempt + %(attempts)s
    WHERE id = %(id)s AND state IN ('failed', 'cancelled')
    RETURNING *, tableoid
), notified AS (
    SELECT pg_notify('backy_' || tableoid, '') FROM retried
)
SELECT retried.* FROM retried LEFT JOIN notified ON true;

-- name: retry_failed
-- Make every failed job (of some workers and queues, or all) available now, each with a
-- fresh set of retries: its worker's number of attempts from known_workers and
-- known_attempts, else default_attempts. A job whose unique_key is held by a waiting or
-- running job stays failed, and of failed jobs sharing a key only the newest is retried.
WITH candidates AS (
    SELECT DISTINCT ON (unique_key, CASE WHEN unique_key IS NULL THEN id END) id
    FROM {table} t
    WHERE state = 'failed'
      AND (cardinality(%(workers)s::text[]) = 0 OR worker = ANY(%(workers)s::text[]))
      AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
      AND (unique_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM {table} o
          WHERE o.unique_key = t.unique_key AND o.state IN ('available', 'running')))
    ORDER BY unique_key, CASE WHEN unique_key IS NULL THEN id END, id DESC
), retried AS (
    UPDATE {table} t
    SET state = 'available', run_at = now(), finished_at = NULL,
        max_attempts = t.attempt + coalesce(
            (SELECT k.attempts
             FROM unnest(%(known_workers)s::text[], %(known_attempts)s::int[])
                  AS k(worker, attempts)
             WHERE k.worker = t.worker),
            %(default_attempts)s)
    FROM candidates c
    WHERE t.id = c.id AND t.state = 'failed'
    RETURNING t.id, t.tableoid
), notified AS (
    SELECT pg_notify('backy_' || tableoid, '') FROM retried LIMIT 1
)
SELECT retried.id FROM retried LEFT JOIN notified ON true ORDER BY retried.id;

-- name: catch_up
-- What a runner that did not hear the table's notifications for a while (it had just
-- connected, or it claimed on its own under a stream: see runner.listener) may have
-- missed. "lost": which of the attempts running here (ids and attempts, in step) are no
-- longer this runner's (cancelled, or rescued): their notifications said stop. "next_in":
-- in how many seconds the earliest job of the given workers (and queues; all when empty)
-- that is not due yet falls due (NULL: none), as its notification would have said; an
-- empty "workers" skips it. Whatever the statistics say, it looks up each attempt by
-- primary key (a subquery per id: no join to weigh against a read of the table), and
-- walks the fetch index per worker (LATERAL), over the jobs not due yet.
SELECT
    ARRAY(
        SELECT r.id FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r(id, attempt)
        WHERE (SELECT t.attempt = r.attempt AND t.state = 'running'
                      AND t.runner_id = %(runner_id)s
               FROM {table} t WHERE t.id = r.id) IS NOT TRUE
    ) AS lost,
    (SELECT extract(epoch FROM min(n.run_at) - now())::float8
     FROM unnest(%(workers)s::text[]) AS w(worker)
     CROSS JOIN LATERAL (
         SELECT min(run_at) AS run_at FROM {table}
         WHERE state = 'available' AND worker = w.worker AND run_at > now()
           AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
     ) n
    ) AS next_in;

-- name: table_oid
-- The oid of the jobs table the search path finds: it names the table's channel.
SELECT to_regclass(%(table)s)::oid AS oid;

-- name: get_job
-- One job by id.
SELECT * FROM {table} WHERE id = %(id)s;

-- name: prune
-- Purge finished rows (completed, and optionally failed and cancelled) older than a cutoff.
DELETE FROM {table}
WHERE state = ANY(%(states)s::text[])
  AND finished_at < now() - make_interval(secs => %(older_than)s);

-- name: count_prunable
-- What prune would delete, by state (prune --dry-run).
SELECT state, count(*) AS jobs FROM {table}
WHERE state = ANY(%(states)s::text[])
  AND finished_at < now() - make_interval(secs => %(older_than)s)
GROUP BY state ORDER BY state;

-- name: prune_batch
-- Retention, run by the runner that leads maintenance: delete up to "lim" rows of each
-- state that finished more than its age (seconds) ago, oldest first, through the
-- finished index (state, finished_at). State and age are checked again on the row deleted: a job retried
-- since it was picked is not deleted. Returns how many of each state went.
WITH deleted AS (
    DELETE FROM {table} t
    USING unnest(%(states)s::text[], %(ages)s::float8[]) AS r(state, age)
    WHERE t.id = ANY(ARRAY(
        SELECT j.id
        FROM unnest(%(states)s::text[], %(ages)s::float8[]) AS p(state, age)
        CROSS JOIN LATERAL (
            SELECT id FROM {table}
            WHERE state = p.state AND finished_at < now() - make_interval(secs => p.age)
            ORDER BY finished_at
            LIMIT %(lim)s
        ) j
    ))
      AND t.state = r.state AND t.finished_at < now() - make_interval(secs => r.age)
    RETURNING t.state
)
SELECT state, count(*) AS n FROM deleted GROUP BY state;

-- name: stats
-- Counts by worker, queue and state; of the waiting ones, how many are due (the rest
-- are scheduled: their run_at is ahead), and the oldest due one's wait in seconds.
SELECT worker, queue, state, count(*) AS jobs,
       count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS due,
       extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state = 'available' AND run_at <= now()))::float8 AS oldest_wait
FROM {table}
GROUP BY worker, queue, state
ORDER BY worker, queue, state;

-- name: queue_stats
-- Queue depth for the metrics scrape: waiting, running, failed and cancelled jobs by
-- worker and queue; for waiting jobs also how many are due and the oldest due one's wait
-- in seconds. Each branch reads a partial index (fetch, lease, failed), so the cost
-- follows the live jobs, not the table: completed rows are never read. (Every running job
-- has a lease; "expires_at IS NOT NULL" is what lets the running branch use the lease
-- index, see "Plans" above.)
SELECT worker, queue, state, count(*) AS jobs,
       count(*) FILTER (WHERE run_at <= now()) AS due,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
           AS oldest_wait
FROM {table} WHERE state = 'available' GROUP BY worker, queue, state
UNION ALL
SELECT worker, queue, state, count(*), 0, NULL
FROM {table} WHERE state = 'running' AND expires_at IS NOT NULL
GROUP BY worker, queue, state
UNION ALL
SELECT worker, queue, state, count(*), 0, NULL
FROM {table} WHERE state IN ('failed', 'cancelled') GROUP BY worker, queue, state;

-- name: set_statement_timeout
-- Bound the later statements of this transaction (the metrics' queue query), in ms.
SELECT set_config('statement_timeout', %(milliseconds)s, true);

-- name: beat
-- A live runner announces itself or beats, and renews its lease on the leadership of
-- maintenance, or takes it when the leader's ran out: returns the leader's id when this
-- runner leads, NULL when another does, and how many live runners (this one included)
-- serve any of its workers in any of its queues: they share its claims (runner.pacing).
WITH beat AS (
    INSERT INTO {runners} (id, hostname, pid, workers, queues)
    VALUES (%(id)s, %(hostname)s, %(pid)s, %(workers)s, %(queues)s)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
), lead AS (
    INSERT INTO {leader} AS l (name, runner_id, expires_at)
    VALUES ('maintenance', %(id)s, now() + make_interval(secs => %(lease)s))
    ON CONFLICT (name) DO UPDATE
    SET runner_id = excluded.runner_id, expires_at = excluded.expires_at,
        elected_at = CASE WHEN l.runner_id = excluded.runner_id THEN l.elected_at
                          ELSE now() END
    WHERE l.runner_id = excluded.runner_id OR l.expires_at < now()
    RETURNING runner_id
)
SELECT (SELECT runner_id FROM lead) AS leader,
       1 + (SELECT count(*) FROM {runners} r
            WHERE r.id <> %(id)s AND r.workers && %(workers)s::text[]
              AND (cardinality(r.queues) = 0 OR cardinality(%(queues)s::text[]) = 0
                   OR r.queues && %(queues)s::text[])
              AND r.heartbeat_at > now() - make_interval(secs => %(alive)s)) AS peers;

-- name: forget_runners
-- The leader drops the rows of runners silent for a long while (they died without
-- saying goodbye).
DELETE FROM {runners}
WHERE heartbeat_at < now() - make_interval(secs => %(forget_after)s);

-- name: vacuum
-- The leader's VACUUM of the jobs table, once the lead statement counts more than
-- vacuum_dead_rows dead row versions (runner/maintenance.py): it removes the fetch index's entries of claimed rows, which
-- each claim otherwise walks past from the front of the index. SKIP_LOCKED: when
-- autovacuum (or another VACUUM) is at it, skip. Not preparable, and outside a
-- transaction block: run as plain SQL on an autocommit connection.
VACUUM (SKIP_LOCKED) {table};

-- name: unregister_runner
-- A runner that stops cleanly removes its row and gives up the leadership if it has it,
-- so that another runner takes over at its next beat.
WITH resigned AS (
    DELETE FROM {leader} WHERE runner_id = %(id)s
)
DELETE FROM {runners} WHERE id = %(id)s;

-- name: list_runners
-- Runners that beat within the last hour (older rows are dropped), how long each has
-- been silent (a live runner beats every 5 seconds), and which one leads maintenance.
SELECT r.id, r.hostname, r.pid, r.workers, r.queues, r.started_at, r.heartbeat_at,
       extract(epoch FROM now() - r.heartbeat_at)::float8 AS silent_seconds,
       coalesce(l.runner_id = r.id AND l.expires_at >= now(), false) AS leader
FROM {runners} r LEFT JOIN {leader} l ON l.name = 'maintenance'
ORDER BY r.started_at;

-- name: delete_jobs
-- Delete jobs that are not running (a running job's runner holds it: cancel it first).
DELETE FROM {table} WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'running'
RETURNING id;

-- name: pause_queue
-- Pause a queue: runners stop claiming its jobs (running ones finish). Pausing a paused
-- queue keeps the time it was first paused. The NOTIFY ("pause:<queue>") reaches the
-- runners at commit, on the jobs table's channel: "table" is the table's quoted name.
WITH paused AS (
    INSERT INTO {queues} AS q (queue, paused, paused_at) VALUES (%(queue)s, true, now())
    ON CONFLICT (queue) DO UPDATE SET paused = true, paused_at = coalesce(q.paused_at, now())
    RETURNING q.queue, q.paused_at
), notified AS (
    SELECT pg_notify('backy_' || to_regclass(%(table)s)::oid, 'pause:' || queue) FROM paused
)
SELECT paused.* FROM paused LEFT JOIN notified ON true;

-- name: resume_queue
-- Resume a paused queue; no row when it was not paused. The NOTIFY ("resume:<queue>")
-- reaches the runners at commit.
WITH resumed AS (
    UPDATE {queues} SET paused = false, paused_at = NULL
    WHERE queue = %(queue)s AND paused
    RETURNING queue
), notified AS (
    SELECT pg_notify('backy_' || to_regclass(%(table)s)::oid, 'resume:' || queue)
    FROM resumed
)
SELECT resumed.* FROM resumed LEFT JOIN notified ON true;

-- name: paused_queues
-- The paused queues, with how long each has been paused in seconds.
SELECT queue, paused_at, extract(epoch FROM now() - paused_at)::float8 AS paused_seconds
FROM {queues} WHERE paused
ORDER BY queue;

-- name: web_queue_counts
-- The dashboard's counts by queue and state: waiting jobs (and how many of them are
-- due), running, failed and cancelled ones. Like queue_stats, each branch reads a partial
-- index, so completed rows are never read.
SELECT queue, state, count(*) AS jobs, count(*) FILTER (WHERE run_at <= now()) AS due
FROM {table} WHERE state = 'available' GROUP BY queue, state
UNION ALL
SELECT queue, state, count(*), 0
FROM {table} WHERE state = 'running' AND expires_at IS NOT NULL GROUP BY queue, state
UNION ALL
SELECT queue, state, count(*), 0
FROM {table} WHERE state IN ('failed', 'cancelled') GROUP BY queue, state;

-- name: web_oldest_waiting
-- The oldest due waiting job of each queue, and how long it has waited in seconds.
SELECT DISTINCT ON (queue) queue, id, worker, run_at,
       extract(epoch FROM now() - run_at)::float8 AS wait
FROM {table} WHERE state = 'available' AND run_at <= now()
ORDER BY queue, run_at, id;

-- name: web_last_hour
-- Jobs that finished in the last hour (completed, failed, cancelled) by queue, state and
-- 5-minute slot (0 is the latest). Read through the finished index (migration 0005): the
-- cost follows the hour's rows. Completed jobs are there only when rows are kept
-- (delete_finished_jobs = false).
SELECT queue, state, floor(extract(epoch FROM now() - finished_at) / 300)::int AS slot,
       count(*) AS jobs
FROM {table}
WHERE state IN ('completed', 'failed', 'cancelled')
  AND finished_at > now() - interval '1 hour'
GROUP BY queue, state, slot;

-- name: web_table_rows
-- About how many rows the jobs table holds, from its statistics (as of the last VACUUM
-- or ANALYZE): an exact count would read the whole table on every refresh. Below 10,000
-- (or before any statistics) the rows are counted, up to 10,000. "table" is the table's
-- quoted name.
SELECT CASE WHEN reltuples < 10000
            THEN (SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 10000) few)
            ELSE reltuples::bigint END AS estimate
FROM pg_class WHERE oid = to_regclass(%(table)s);

-- name: web_jobs
-- A page of the dashboard's job list, newest first: jobs older than the id "before"
-- (keyset pagination, never OFFSET). At most "examine" rows are read, in primary key
-- order, and the filters are checked on them: worker, queue, and "q", text in the args
-- or in the errors (messages and tracebacks) in any case ("q" comes lower-cased). So a
-- page costs at most that many rows whatever the table holds; web_jobs_examined says
-- where a page that found too few stopped.
SELECT id, worker, queue, state, attempt, max_attempts, priority, run_at, enqueued_at,
       finished_at, left(args::text, 300) AS args_text,
       errors -> -1 ->> 'message' AS last_error
FROM (
    SELECT * FROM {table} WHERE id < %(before)s::bigint ORDER BY id DESC
    LIMIT %(examine)s::int
) examined
WHERE (%(worker)s::text IS NULL OR worker = %(worker)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(q)s::text IS NULL OR strpos(lower(args::text), %(q)s::text) > 0
       OR strpos(lower(errors::text), %(q)s::text) > 0)
ORDER BY id DESC
LIMIT %(limit)s::int;

-- name: web_jobs_in_state
-- web_jobs for the jobs in one state, read through the state index (migration 0005), which
-- only a statement saying "enqueued_at IS NOT NULL" may use (it holds for every row).
SELECT id, worker, queue, state, attempt, max_attempts, priority, run_at, enqueued_at,
       finished_at, left(args::text, 300) AS args_text,
       errors -> -1 ->> 'message' AS last_error
FROM (
    SELECT * FROM {table}
    WHERE state = %(state)s::text AND id < %(before)s::bigint
      AND enqueued_at IS NOT NULL
    ORDER BY id DESC
    LIMIT %(examine)s::int
) examined
WHERE (%(worker)s::text IS NULL OR worker = %(worker)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(q)s::text IS NULL OR strpos(lower(args::text), %(q)s::text) > 0
       OR strpos(lower(errors::text), %(q)s::text) > 0)
ORDER BY id DESC
LIMIT %(limit)s::int;

-- name: web_jobs_examined
-- How many rows web_jobs read for a page, and the oldest id among them: where the next
-- page's search goes on when this one found fewer jobs than it shows. Index only.
SELECT count(*) AS examined, min(id) AS oldest
FROM (
    SELECT id FROM {table} WHERE id < %(before)s::bigint ORDER BY id DESC
    LIMIT %(examine)s::int
) examined;

-- name: web_jobs_examined_in_state
-- web_jobs_examined for web_jobs_in_state.
SELECT count(*) AS examined, min(id) AS oldest
FROM (
    SELECT id FROM {table}
    WHERE state = %(state)s::text AND id < %(before)s::bigint
      AND enqueued_at IS NOT NULL
    ORDER BY id DESC
    LIMIT %(examine)s::int
) examined;

-- Periodic jobs (cron) ---------------------------------------------------------------

-- name: cron_sync
-- A runner at start writes the schedules of its workers that have a cron: a new one
-- starts from now (last_tick defaults to now(), so no earlier tick is enqueued); a known
-- one takes the expression, zone, queue, priority and attempts given and keeps its
-- last_tick. updated_at says when the definition last changed.
INSERT INTO {cron} AS c (worker, expression, timezone, queue, priority, max_attempts)
SELECT * FROM unnest(%(workers)s::text[], %(expressions)s::text[], %(timezones)s::text[],
                     %(queues)s::text[], %(priorities)s::int[], %(max_attempts)s::int[])
ON CONFLICT (worker) DO UPDATE
SET expression = excluded.expression, timezone = excluded.timezone, queue = excluded.queue,
    priority = excluded.priority, max_attempts = excluded.max_attempts,
    updated_at = CASE WHEN (c.expression, c.timezone, c.queue, c.priority, c.max_attempts)
                           IS DISTINCT FROM (excluded.expression, excluded.timezone,
                                             excluded.queue, excluded.priority,
                                             excluded.max_attempts)
                      THEN now() ELSE c.updated_at END;

-- name: cron_forget
-- A runner at start drops the schedules of its workers that no longer have a cron.
DELETE FROM {cron} WHERE worker = ANY(%(workers)s::text[]);

-- name: cron_schedules
-- Every schedule, and whether a runner that beat within "alive" seconds has its worker
-- (the leader enqueues the ticks of those alone: a schedule whose worker no runner has
-- any more stops, rather than filling the table with jobs nobody runs).
SELECT c.worker, c.expression, c.timezone, c.queue, c.priority, c.max_attempts,
       c.last_tick, c.updated_at,
       EXISTS (SELECT FROM {runners} r
               WHERE c.worker = ANY(r.workers)
                 AND r.heartbeat_at > now() - make_interval(secs => %(alive)s)) AS served
FROM {cron} c
ORDER BY c.worker;

-- name: cron_tick
-- Enqueue one tick of one schedule, exactly once: the job is inserted only if this
-- statement is the one that moves the schedule's last_tick up to the tick. A second
-- runner racing for the same tick waits for the first one's row lock, then finds
-- last_tick no longer earlier than the tick, and inserts nothing. The job's run_at is
-- its tick; the NOTIFY wakes the runners at commit. No row: the tick was enqueued already.
WITH ticked AS (
    UPDATE {cron} SET last_tick = %(tick)s::timestamptz
    WHERE worker = %(worker)s AND last_tick < %(tick)s::timestamptz
    RETURNING worker, queue, priority, max_attempts
), inserted AS (
    INSERT INTO {table} (worker, queue, priority, max_attempts, run_at)
    SELECT worker, queue, priority, max_attempts, %(tick)s::timestamptz FROM ticked
    RETURNING *, tableoid
), notified AS (
    SELECT count(pg_notify('backy_' || tableoid, json_build_object(
        'worker', worker, 'queue', queue, 'in', 0)::text))
    FROM inserted
)
SELECT inserted.* FROM inserted LEFT JOIN notified ON true;
