-- Every SQL statement procq_sqla runs, loaded once by name (procq_sqla/sql.py).
-- One placeholder style, %(name)s, understood by psycopg 3, psycopg2, aiopg and
-- SQLAlchemy's exec_driver_sql alike. Values are always bound, never formatted in.

-- name: defer_job --
-- Insert one job and announce it on channel procq_jobs (the NOTIFY is delivered at
-- commit: inside a session, when the caller commits). RETURNING calls pg_notify for the
-- one row, cheaper than a CTE around the INSERT; pg_notify returns void, never NULL, so
-- the CASE folds it into the id: one column, not a second (void) one that every driver
-- describes and decodes (3-8 µs a defer on psycopg2).
INSERT INTO procq_jobs (queue, task_name, args, priority, lock, queueing_lock, scheduled_at)
VALUES (%(queue)s, %(task_name)s, %(args)s::jsonb, %(priority)s, %(lock)s,
        %(queueing_lock)s, %(scheduled_at)s)
RETURNING CASE WHEN pg_notify('procq_jobs', queue) IS NULL THEN NULL ELSE id END AS id

-- name: defer_plain_job --
-- defer_job for the most common job: no priority, lock, queueing lock or schedule. Three
-- parameters instead of seven: psycopg2's EXECUTE text and the server's parameter
-- set-up shrink with them (about 8 µs of a defer's 100 without the WAL flush).
INSERT INTO procq_jobs (queue, task_name, args)
VALUES (%(queue)s, %(task_name)s, %(args)s::jsonb)
RETURNING CASE WHEN pg_notify('procq_jobs', queue) IS NULL THEN NULL ELSE id END AS id

-- name: batch_defer_jobs --
-- Insert many jobs of one task and options in one statement: the arguments come as one
-- JSON array (parsed once by the server, no per-element array quoting); ids come back in
-- input order. One NOTIFY for the batch, only when a job was inserted. A template too:
-- batch_defer_jobs_skip_enqueued puts batch_defer_on_conflict at /*on_conflict*/.
WITH jobs AS (
    INSERT INTO procq_jobs (queue, task_name, args, priority, lock, queueing_lock, scheduled_at)
    SELECT %(queue)s::text, %(task_name)s::text, a.value, %(priority)s::integer, %(lock)s::text,
           %(queueing_lock)s::text, %(scheduled_at)s::timestamptz
    FROM jsonb_array_elements(%(args)s::jsonb) WITH ORDINALITY AS a(value, n)
    ORDER BY a.n
    /*on_conflict*/
    RETURNING id, queueing_lock
), woken AS (
    SELECT pg_notify('procq_jobs', %(queue)s::text) FROM (SELECT FROM jobs LIMIT 1) AS any_job
)
SELECT jobs.id, jobs.queueing_lock FROM jobs WHERE (SELECT count(*) FROM woken) >= 0

-- name: batch_defer_on_conflict --
-- For batch_defer_jobs_skip_enqueued: silently skip the jobs whose queueing lock already
-- has a waiting job.
ON CONFLICT (queueing_lock) WHERE queueing_lock IS NOT NULL AND status = 'todo' DO NOTHING

-- name: copy_jobs_start --
-- A big batch without queueing lock goes in by COPY (many times faster than an INSERT of
-- as many rows), in one transaction: first an id below every id the COPY will get.
SELECT nextval(pg_get_serial_sequence('procq_jobs', 'id')) AS after_id

-- name: copy_jobs --
-- The COPY itself (text format; the columns of procq_sqla.jobs.copy_defer_data).
COPY procq_jobs (queue, task_name, args, priority, lock, scheduled_at) FROM STDIN

-- name: copy_jobs_ids --
-- Then the ids the COPY got, in input order (the identity sequence hands them out row by
-- row, increasing; rows other transactions inserted in that range have another xmin),
-- and one NOTIFY for the batch.
WITH woken AS (
    SELECT pg_notify('procq_jobs', %(queue)s::text)
)
SELECT id FROM procq_jobs
WHERE id > %(after_id)s
  AND id <= (SELECT currval(pg_get_serial_sequence('procq_jobs', 'id')))
  AND xmin = (SELECT pg_current_xact_id()::xid)
  AND EXISTS (SELECT FROM woken)
ORDER BY id

-- name: claim_jobs --
-- Template, expanded by procq_sqla/sql into claim_jobs_any_queue, claim_jobs_in_queue and
-- claim_jobs_in_queues (the /*markers*/ take the claim_filter_* fragments below). Claims up
-- to %(limit)s runnable jobs, highest priority then oldest first. A locked job is taken
-- only when no job of its lock runs and it heads its lock's runnable jobs (an earlier job
-- in a queue no registered worker reads does not count); the advisory lock keeps two
-- concurrent claims off the same lock. Only the first `start` jobs get a started_at: the
-- others are claimed ahead of a free slot, and the worker's outcome fills their
-- started_at in (a rescue puts a job without one back without counting the attempt). The
-- claim commits without waiting for the WAL flush: lost in a server crash, the job is
-- simply 'todo' again (at least once); outcomes stay durable. `= ANY(ARRAY(...))` keeps
-- the UPDATE an index scan in a generic plan.
WITH candidates AS (
    SELECT j.id, j.priority FROM procq_jobs AS j
    WHERE j.status = 'todo' /*queue_filter*/
      AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
      AND (j.lock IS NULL OR (
            NOT EXISTS (SELECT 1 FROM procq_jobs AS d
                        WHERE d.lock = j.lock AND d.status = 'doing')
        AND NOT EXISTS (SELECT 1 FROM procq_jobs AS e
                        WHERE e.lock = j.lock AND e.status = 'todo' /*lock_queue_filter*/
                          AND (e.scheduled_at IS NULL OR e.scheduled_at <= now())
                          AND (e.priority > j.priority
                               OR (e.priority = j.priority AND e.id < j.id)))
        AND pg_try_advisory_xact_lock(hashtextextended('procq:' || j.lock, 0))))
    ORDER BY j.priority DESC, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), async_commit AS (
    SELECT set_config('synchronous_commit', 'off', true)
)
UPDATE procq_jobs AS j
SET status = 'doing', attempts = j.attempts + 1, worker_id = %(worker_id)s,
    started_at = CASE WHEN j.id = ANY(ARRAY(SELECT c.id FROM candidates AS c
                                            ORDER BY c.priority DESC, c.id
                                            LIMIT %(start)s))
                      THEN now() END
WHERE j.id = ANY(ARRAY(SELECT id FROM candidates))
  AND EXISTS (SELECT FROM async_commit)
RETURNING j.id, j.queue, j.task_name, j.args, j.priority, j.lock, j.queueing_lock,
          j.scheduled_at, j.attempts, j.created_at

-- name: claim_filter_one_queue --
-- A worker of exactly one queue: an equality lets the planner walk
-- procq_jobs_fetch_queue_idx in claim order and stop after %(limit)s rows.
AND j.queue = %(queue)s

-- name: claim_filter_queues --
-- A worker of several queues (%(queues)s, a text array).
AND j.queue = ANY(%(queues)s::text[])

-- name: claim_filter_lock_queues --
-- Which earlier jobs of a lock count for a worker of some queues only.
AND (e.queue = ANY(%(queues)s::text[])
     OR EXISTS (SELECT 1 FROM procq_workers AS w
                WHERE w.queues IS NULL OR e.queue = ANY(w.queues)))

-- name: finish_jobs --
-- Record many outcomes in one statement (`since` as in finish_succeeded_jobs). Status
-- 'todo' means retry after delay s; a retry whose queueing lock already has a waiting job
-- (or an earlier retry of this batch) fails instead of colliding with it. Only jobs still
-- held by the given worker are touched (a rescued job is not overwritten).
WITH outcome AS MATERIALIZED (  -- computed once, whatever join the planner picks
    SELECT o.id, o.status, o.error, o.delay, o.since,
           (o.status = 'todo' AND j.queueing_lock IS NOT NULL AND (
                EXISTS (SELECT 1 FROM procq_jobs AS q
                        WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo')
                OR row_number() OVER (PARTITION BY j.queueing_lock, o.status = 'todo'
                                      ORDER BY o.id) > 1)) AS collides
    FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(errors)s::text[],
                %(delays)s::float8[], %(since)s::float8[]) AS o(id, status, error, delay, since)
    JOIN procq_jobs AS j ON j.id = o.id
), updated AS (
    UPDATE procq_jobs AS j
    SET status = CASE WHEN o.collides THEN 'failed' ELSE o.status END,
        finished_at = CASE WHEN o.status = 'todo' AND NOT o.collides THEN NULL ELSE now() END,
        scheduled_at = CASE WHEN o.status = 'todo' AND o.delay > 0
                            THEN now() + make_interval(secs => o.delay)
                            WHEN o.status = 'todo' THEN NULL ELSE j.scheduled_at END,
        last_error = CASE
            WHEN o.collides THEN coalesce(o.error || E'\n', '')
                 || 'not retried: another job with the same queueing lock is already waiting'
            ELSE coalesce(o.error, j.last_error) END,
        started_at = coalesce(j.started_at, now() - make_interval(secs => o.since)),
        worker_id = NULL
    FROM outcome AS o
    WHERE j.id = o.id AND j.status = 'doing' AND j.worker_id = %(worker_id)s
    RETURNING j.id, j.queue, j.status, j.scheduled_at, j.lock
), woken AS (
    -- wake workers for runnable retries, and for the jobs waiting on a lock just released
    SELECT pg_notify('procq_jobs', q.queue)
    FROM (SELECT queue FROM updated
          WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())
          UNION
          SELECT h.queue FROM (SELECT DISTINCT lock FROM updated WHERE lock IS NOT NULL) AS l
          CROSS JOIN LATERAL (
              SELECT w.queue FROM procq_jobs AS w
              WHERE w.lock = l.lock AND w.lock IS NOT NULL AND w.status = 'todo'
                AND (w.scheduled_at IS NULL OR w.scheduled_at <= now())
              ORDER BY w.priority DESC, w.id LIMIT 1) AS h) AS q
)
SELECT u.id, u.status, (SELECT count(*) FROM woken) AS woken FROM updated AS u

-- name: finish_succeeded_jobs --
-- finish_jobs for the common case, jobs without a lock that succeeded: nothing to check,
-- nobody to wake. A join on unnest, not `id = ANY(...)`: under a generic plan the latter
-- may scan all of the worker's 'doing' rows and test each against the whole array.
-- `since`: seconds since each job started, for the jobs claimed ahead (no started_at).
UPDATE procq_jobs AS j
SET status = 'succeeded', finished_at = now(), worker_id = NULL,
    started_at = coalesce(j.started_at, now() - make_interval(secs => o.since))
FROM unnest(%(ids)s::bigint[], %(since)s::float8[]) AS o(id, since)
WHERE j.id = o.id AND j.status = 'doing' AND j.worker_id = %(worker_id)s

-- name: mark_started --
-- Jobs claimed ahead that have been running for a while get their started_at (`since`
-- as in finish_succeeded_jobs), so that a rescue counts their attempt.
UPDATE procq_jobs AS j
SET started_at = now() - make_interval(secs => o.since)
FROM unnest(%(ids)s::bigint[], %(since)s::float8[]) AS o(id, since)
WHERE j.id = o.id AND j.status = 'doing' AND j.worker_id = %(worker_id)s
  AND j.started_at IS NULL

-- name: delete_finished_jobs --
-- Delete jobs that just finished, for workers run with delete_jobs="successful"/"always".
DELETE FROM procq_jobs AS j
USING unnest(%(ids)s::bigint[]) AS o(id)
WHERE j.id = o.id AND j.status = 'doing' AND j.worker_id = %(worker_id)s

-- name: release_jobs --
-- Give back jobs a worker claimed ahead but never started: they wait again as if never
-- claimed (the attempt counted at claim is undone) and workers are woken. One that finds
-- a newer job of its queueing lock waiting is cancelled instead (never having run): that
-- job does the work.
WITH outcome AS MATERIALIZED (
    SELECT j.id,
           (j.queueing_lock IS NOT NULL AND (
                EXISTS (SELECT 1 FROM procq_jobs AS q
                        WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo')
                OR row_number() OVER (PARTITION BY j.queueing_lock ORDER BY j.id) > 1))
           AS collides
    FROM procq_jobs AS j
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.status = 'doing'
      AND j.worker_id = %(worker_id)s
), updated AS (
    UPDATE procq_jobs AS j
    SET status = CASE WHEN o.collides THEN 'cancelled' ELSE 'todo' END,
        attempts = j.attempts - 1,
        started_at = NULL,
        finished_at = CASE WHEN o.collides THEN now() END,
        last_error = CASE WHEN o.collides
                          THEN 'not run: another job with the same queueing lock is waiting'
                          ELSE j.last_error END,
        worker_id = NULL
    FROM outcome AS o
    WHERE j.id = o.id
    RETURNING j.id, j.queue, j.status
), woken AS (
    SELECT pg_notify('procq_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM updated WHERE status = 'todo') AS q
)
SELECT u.id, u.status, (SELECT count(*) FROM woken) AS woken FROM updated AS u

-- name: register_worker --
-- A worker announces itself; its id marks the jobs it claims.
INSERT INTO procq_workers (name, hostname, pid, queues, concurrency)
VALUES (%(name)s, %(hostname)s, %(pid)s, %(queues)s::text[], %(concurrency)s)
RETURNING id

-- name: heartbeat --
-- Keep a worker alive; no row back means it was declared dead and must re-register.
UPDATE procq_workers SET last_heartbeat = now() WHERE id = %(worker_id)s RETURNING id

-- name: unregister_worker --
-- A worker leaves cleanly.
DELETE FROM procq_workers WHERE id = %(worker_id)s

-- name: prune_stalled_workers --
-- Forget workers whose heartbeat is older than the stalled timeout.
DELETE FROM procq_workers
WHERE last_heartbeat < now() - make_interval(secs => %(seconds)s)
RETURNING id, name

-- name: list_orphaned_jobs --
-- Jobs left in 'doing' by workers that no longer exist.
SELECT j.id, j.task_name, j.attempts, j.worker_id, j.started_at
FROM procq_jobs AS j
WHERE j.status = 'doing'
  AND NOT EXISTS (SELECT 1 FROM procq_workers AS w WHERE w.id = j.worker_id)
ORDER BY j.id
LIMIT 1000

-- name: rescue_jobs --
-- Put orphaned jobs back ('todo', or 'failed' when out of retries), guarded by the dead
-- worker's id so a job claimed again meanwhile is never touched. A job without started_at
-- was claimed ahead and not known to have started: its attempt is not counted.
WITH outcome AS (
    SELECT o.id, o.status, o.worker_id,
           (o.status = 'todo' AND j.queueing_lock IS NOT NULL AND (
                EXISTS (SELECT 1 FROM procq_jobs AS q
                        WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo')
                OR row_number() OVER (PARTITION BY j.queueing_lock, o.status = 'todo'
                                      ORDER BY o.id) > 1)) AS collides
    FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(worker_ids)s::bigint[])
         AS o(id, status, worker_id)
    JOIN procq_jobs AS j ON j.id = o.id
), updated AS (
    UPDATE procq_jobs AS j
    SET status = CASE WHEN o.collides THEN 'failed' ELSE o.status END,
        finished_at = CASE WHEN o.status = 'todo' AND NOT o.collides THEN NULL ELSE now() END,
        attempts = CASE WHEN j.started_at IS NULL THEN j.attempts - 1 ELSE j.attempts END,
        last_error = 'worker ' || coalesce(o.worker_id::text, '?')
                     || CASE WHEN j.started_at IS NULL
                             THEN ' died before this job claimed ahead was known to start'
                             ELSE ' died while running this job' END
                     || CASE WHEN o.collides THEN '; not retried: another job with the same'
                                                  || ' queueing lock is already waiting'
                             ELSE '' END,
        worker_id = NULL
    FROM outcome AS o
    WHERE j.id = o.id AND j.status = 'doing' AND j.worker_id IS NOT DISTINCT FROM o.worker_id
    RETURNING j.id, j.queue, j.status
), woken AS (
    SELECT pg_notify('procq_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM updated WHERE status = 'todo') AS q
)
SELECT u.id, u.status, (SELECT count(*) FROM woken) AS woken FROM updated AS u

-- name: defer_periodic_jobs --
-- Claim periodic ticks and defer their jobs in one statement: a tick already claimed by
-- another worker inserts nothing (exactly once), and a tick whose queueing lock already
-- has a waiting job is recorded but skipped. The job id is drawn before the insert so the
-- tick row can name its job.
WITH ticks AS (
    SELECT t.*, nextval(pg_get_serial_sequence('procq_jobs', 'id')) AS job_id
    FROM unnest(%(task_names)s::text[], %(periodic_ids)s::text[], %(timestamps)s::bigint[],
                %(queues)s::text[], %(args)s::jsonb[], %(priorities)s::integer[],
                %(locks)s::text[], %(queueing_locks)s::text[])
         AS t(task_name, periodic_id, defer_timestamp, queue, args, priority, lock,
              queueing_lock)
), claimed AS (
    INSERT INTO procq_periodic_defers (task_name, periodic_id, defer_timestamp, job_id)
    SELECT task_name, periodic_id, defer_timestamp, job_id FROM ticks
    ON CONFLICT DO NOTHING
    RETURNING job_id
), inserted AS (
    INSERT INTO procq_jobs (id, queue, task_name, args, priority, lock, queueing_lock)
    SELECT t.job_id, t.queue, t.task_name, t.args, t.priority, t.lock, t.queueing_lock
    FROM ticks AS t JOIN claimed AS c ON c.job_id = t.job_id
    ON CONFLICT (queueing_lock) WHERE queueing_lock IS NOT NULL AND status = 'todo' DO NOTHING
    RETURNING id, queue, task_name, args
), woken AS (
    SELECT pg_notify('procq_jobs', q.queue) FROM (SELECT DISTINCT queue FROM inserted) AS q
)
SELECT i.id, i.task_name, i.args FROM inserted AS i WHERE (SELECT count(*) FROM woken) >= 0

-- name: prune_periodic_defers --
-- Forget claimed ticks older than any worker would still defer (epoch seconds).
DELETE FROM procq_periodic_defers WHERE defer_timestamp < %(before)s

-- name: get_job --
-- One job by id.
SELECT id, queue, task_name, args, status, priority, lock, queueing_lock, scheduled_at,
       attempts, created_at, started_at, finished_at, last_error, worker_id, abort_requested
FROM procq_jobs WHERE id = %(id)s

-- name: list_jobs --
-- Jobs matching optional filters, newest first, bounded by %(limit)s.
SELECT id, queue, task_name, args, status, priority, lock, queueing_lock, scheduled_at,
       attempts, created_at, started_at, finished_at, last_error, worker_id, abort_requested
FROM procq_jobs
WHERE (%(id)s::bigint IS NULL OR id = %(id)s::bigint)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(lock)s::text IS NULL OR lock = %(lock)s::text)
  AND (%(queueing_lock)s::text IS NULL OR queueing_lock = %(queueing_lock)s::text)
ORDER BY id DESC
LIMIT %(limit)s

-- name: cancel_job --
-- Cancel a waiting job; nothing happens to a job that already started.
UPDATE procq_jobs SET status = 'cancelled', finished_at = now()
WHERE id = %(id)s AND status = 'todo'
RETURNING id

-- name: request_abort --
-- Ask the worker running a job to abort it; the NOTIFY makes it react at once.
WITH updated AS (
    UPDATE procq_jobs SET abort_requested = true
    WHERE id = %(id)s AND status = 'doing'
    RETURNING id
)
SELECT id, pg_notify('procq_abort', id::text) IS NULL AS notified FROM updated

-- name: list_abort_requests --
-- The jobs of one worker whose abort was requested (the polling fallback to NOTIFY).
SELECT id FROM procq_jobs
WHERE worker_id = %(worker_id)s AND status = 'doing' AND abort_requested

-- name: retry_job --
-- Put a finished (failed, cancelled or aborted) job back in the queue now.
UPDATE procq_jobs
SET status = 'todo', scheduled_at = NULL, finished_at = NULL, abort_requested = false
WHERE id = %(id)s AND status IN ('failed', 'cancelled', 'aborted')
RETURNING id

-- name: prune_finished_jobs --
-- Delete at most %(limit)s finished jobs older than %(seconds)s (index-backed).
DELETE FROM procq_jobs
WHERE id IN (
    SELECT id FROM procq_jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'aborted')
      AND finished_at < now() - make_interval(secs => %(seconds)s)
    LIMIT %(limit)s)

-- name: oldest_waiting_job_age --
-- Seconds since the oldest runnable job became runnable (NULL when none waits).
SELECT extract(epoch FROM now() - min(coalesce(scheduled_at, created_at)))::float AS age
FROM procq_jobs
WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())

-- name: schema_present --
-- Whether the jobs table exists (the schema has been migrated).
SELECT to_regclass('procq_jobs') IS NOT NULL AS present

-- name: prune_jobs --
-- Delete up to %(limit)s jobs in the finished statuses %(statuses)s that finished more than
-- %(seconds)s ago, oldest first; returns the deleted ids. Both halves are index scans
-- (procq_jobs_finished_idx, then the primary key through the id array): never a full scan.
DELETE FROM procq_jobs
WHERE id = ANY(ARRAY(
    SELECT id FROM procq_jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'aborted')
      AND status = ANY(%(statuses)s::text[])
      AND finished_at < now() - make_interval(secs => %(seconds)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED))
RETURNING id

-- name: queue_stats --
-- Per queue: job counts by status and the age in seconds of its oldest runnable job.
SELECT queue,
       count(*) FILTER (WHERE status = 'todo') AS todo,
       count(*) FILTER (WHERE status = 'doing') AS doing,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE status = 'aborted') AS aborted,
       extract(epoch FROM now() - min(coalesce(scheduled_at, created_at))
               FILTER (WHERE status = 'todo'
                       AND (scheduled_at IS NULL OR scheduled_at <= now())))::float
           AS oldest_waiting_age
FROM procq_jobs
GROUP BY queue
ORDER BY queue

-- name: server_version --
-- The server's version, and proof that it answers.
SELECT current_setting('server_version') AS version, current_database() AS database

-- name: schema_version_tables --
-- Which Alembic version tables exist: procq's own, and an application's shared one.
SELECT to_regclass('procq_alembic_version') IS NOT NULL AS own,
       to_regclass('alembic_version') IS NOT NULL AS shared,
       to_regclass('procq_jobs') IS NOT NULL AS jobs,
       to_regclass('procq_workers') IS NOT NULL AS workers

-- name: own_schema_versions --
-- The revisions recorded by procq's standalone Alembic environment.
SELECT version_num FROM procq_alembic_version

-- name: shared_schema_versions --
-- The revisions recorded by an application's Alembic environment that folds ours in.
SELECT version_num FROM alembic_version

-- name: worker_summary --
-- Registered workers, and how many sent a heartbeat within %(seconds)s.
SELECT count(*) AS total,
       count(*) FILTER (WHERE last_heartbeat >= now() - make_interval(secs => %(seconds)s))
           AS alive
FROM procq_workers

-- name: demo_reset_jobs --
-- `procq demo` starts from an empty jobs table (never used outside the demo).
TRUNCATE procq_jobs
