-- The queue tables and the functions every operation calls. Run with
-- `search_path` set to the backend's schema; every function keeps that
-- path (`SET search_path FROM CURRENT`), so callers may name them with
-- the schema from any connection (a caller's own transaction included).

-- One row per queue: its options and whether it is paused.
CREATE TABLE queues (
    name        text PRIMARY KEY,
    max_length  bigint,
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every queued, delayed and leased job. Acked jobs are deleted, so the
-- table holds only the work still to do.
--   state: 0 ready, 1 leased, 2 delayed (due at ready_at)
--   rank:  0 urgent, 1 high, 2 normal, 3 low
--   since: when the job became ready (created, or due), for the queue's latency
--   token: raised by every claim; a settle names the token it holds, so a
--          delivery whose lease was taken back cannot settle the new one.
-- A plain INSERT of (queue, body) queues a job: the body is an envelope
-- or, if it is not one, the payload itself.
CREATE TABLE jobs (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    state        smallint NOT NULL DEFAULT 0,
    rank         smallint NOT NULL DEFAULT 2,
    ready_at     timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    token        bigint NOT NULL DEFAULT 0,
    attempt      bigint NOT NULL DEFAULT 1,
    max_attempts bigint NOT NULL DEFAULT 25,
    last_error   text,
    expires_at   timestamptz,
    group_key    text,
    since        timestamptz NOT NULL DEFAULT now(),
    body         bytea NOT NULL
);
CREATE INDEX jobs_ready ON jobs (queue, rank, ready_at, seq) WHERE state = 0;
CREATE INDEX jobs_delayed ON jobs (queue, ready_at) WHERE state = 2;
CREATE INDEX jobs_leased ON jobs (queue, lease_until) WHERE state = 1;
CREATE INDEX jobs_expiring ON jobs (queue, expires_at) WHERE expires_at IS NOT NULL;

-- Dead letters, in the order they died (seq is the page cursor).
CREATE TABLE dead (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL,
    id           uuid NOT NULL,
    reason       text NOT NULL,
    attempts     bigint NOT NULL,
    attempt      bigint NOT NULL,
    last_error   text,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    rank         smallint NOT NULL,
    max_attempts bigint NOT NULL,
    group_key    text,
    body         bytea NOT NULL
);
CREATE INDEX dead_queue ON dead (queue, seq);
CREATE INDEX dead_ids ON dead (queue, id);

-- Running totals, one row per queue and database session (its backend
-- pid), so no session ever waits for another's row lock (a job sent in a
-- long transaction holds its row until that transaction ends); stats sum
-- them, and fold the rows of sessions that are gone into slot 0.
CREATE TABLE counters (
    queue         text NOT NULL,
    slot          integer NOT NULL,
    enqueued      bigint NOT NULL DEFAULT 0,
    acked         bigint NOT NULL DEFAULT 0,
    retried       bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    expired       bigint NOT NULL DEFAULT 0,
    deduplicated  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, slot)
);

-- Idempotency keys inside their window, with the id first sent under each.
CREATE TABLE idempotency (
    queue      text NOT NULL,
    key        text NOT NULL,
    id         uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX idempotency_expiry ON idempotency (queue, expires_at);

-- The worker registry: one row per live worker, its info as JSON.
CREATE TABLE workers (
    id         text PRIMARY KEY,
    queue      text NOT NULL,
    info       text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Whole milliseconds since the Unix epoch.
CREATE FUNCTION epoch_ms(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT (extract(epoch FROM t) * 1000)::bigint $$;

-- Wake the consumers waiting on queue q (in every process).
CREATE FUNCTION wake(q text) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT
AS $$ SELECT pg_notify('queue_jobs:' || current_schema(), q) $$;

-- A statement that inserted jobs wakes their queues' consumers when it
-- commits (and not before: a job queued in a transaction is seen when
-- the transaction commits).
CREATE FUNCTION jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT queue FROM inserted LOOP
        PERFORM pg_notify('queue_jobs:' || TG_TABLE_SCHEMA, q);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_inserted();

-- Add to q's totals.
CREATE FUNCTION count_up(q text, enq bigint, ack bigint, ret bigint, dl bigint, exp bigint, dup bigint)
RETURNS void
LANGUAGE sql SET search_path FROM CURRENT AS $$
    INSERT INTO counters AS c (queue, slot, enqueued, acked, retried, dead_lettered, expired, deduplicated)
    VALUES (q, pg_backend_pid(), enq, ack, ret, dl, exp, dup)
    ON CONFLICT (queue, slot) DO UPDATE SET
        enqueued = c.enqueued + excluded.enqueued,
        acked = c.acked + excluded.acked,
        retried = c.retried + excluded.retried,
        dead_lettered = c.dead_lettered + excluded.dead_lettered,
        expired = c.expired + excluded.expired,
        deduplicated = c.deduplicated + excluded.deduplicated
$$;

-- The queue's row, or the error every operation on a missing queue gives.
CREATE FUNCTION existing(q text) RETURNS queues
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    row queues;
BEGIN
    SELECT * INTO row FROM queues WHERE name = q;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue % does not exist', q USING ERRCODE = 'QUMIS';
    END IF;
    RETURN row;
END $$;

-- Queue a batch: parallel arrays, one element per message. Returns the
-- messages dropped as duplicates of an idempotency key (their index from
-- 1, and the id first sent with the key). All or nothing.
CREATE FUNCTION send(
    q text, window_ms bigint, ids uuid[], bodies bytea[], ranks smallint[],
    delays_ms bigint[], ttls_ms bigint[], keys text[], groups text[],
    attempts bigint[], max_attempts bigint[], since_ms bigint[])
RETURNS TABLE (idx integer, first uuid)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    qrow queues;
    now_ts timestamptz := clock_timestamp();
    dups integer[] := '{}';
    i integer;
    fresh boolean;
    depth bigint;
    added bigint;
BEGIN
    -- A key-share lock on the queue's row: a delete_queue waits for this
    -- send's transaction, and a send after it finds the queue gone.
    SELECT * INTO qrow FROM queues WHERE name = q FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue % does not exist', q USING ERRCODE = 'QUMIS';
    END IF;
    IF window_ms > 0 THEN
        -- Keys in one order for every session (not the batch's), so two
        -- batches with the same keys never wait for each other in a cycle.
        FOR i IN SELECT s FROM generate_subscripts(ids, 1) s WHERE keys[s] <> '' ORDER BY keys[s], s LOOP
            fresh := false;
            INSERT INTO idempotency AS k (queue, key, id, expires_at)
            VALUES (q, keys[i], ids[i], now_ts + window_ms * interval '1 millisecond')
            ON CONFLICT (queue, key) DO UPDATE
                SET id = excluded.id, expires_at = excluded.expires_at
                WHERE k.expires_at <= now_ts
            RETURNING true INTO fresh;
            IF fresh IS NOT TRUE THEN
                dups := dups || i;
                idx := i;
                SELECT k.id INTO first FROM idempotency k WHERE k.queue = q AND k.key = keys[i];
                RETURN NEXT;
            END IF;
        END LOOP;
        -- Keys out of their window go a few at a time.
        DELETE FROM idempotency k USING (
            SELECT e.key FROM idempotency e
            WHERE e.queue = q AND e.expires_at <= now_ts
            LIMIT 100 FOR UPDATE SKIP LOCKED) old
        WHERE k.queue = q AND k.key = old.key;
    END IF;
    added := cardinality(ids) - cardinality(dups);
    IF qrow.max_length IS NOT NULL THEN
        SELECT (SELECT count(*) FROM jobs WHERE queue = q AND state = 0)
             + (SELECT count(*) FROM jobs WHERE queue = q AND state = 1)
             + (SELECT count(*) FROM jobs WHERE queue = q AND state = 2)
        INTO depth;
        IF depth + added > qrow.max_length THEN
            RAISE EXCEPTION 'queue % is full', q USING ERRCODE = 'QUFUL', DETAIL = depth::text;
        END IF;
    END IF;
    IF added > 0 THEN
        INSERT INTO jobs (queue, id, state, rank, ready_at, attempt, max_attempts, expires_at, group_key, since, body)
        SELECT q, ids[s],
               CASE WHEN delays_ms[s] > 0 THEN 2 ELSE 0 END,
               ranks[s],
               now_ts + greatest(delays_ms[s], 0) * interval '1 millisecond',
               attempts[s], max_attempts[s],
               CASE WHEN ttls_ms[s] >= 0 THEN now_ts + ttls_ms[s] * interval '1 millisecond' END,
               nullif(groups[s], ''),
               to_timestamp(since_ms[s] / 1000.0),
               bodies[s]
        FROM generate_subscripts(ids, 1) s
        WHERE NOT (s = ANY (dups))
        ORDER BY s;
    END IF;
    PERFORM count_up(q, added, 0, 0, 0, 0, cardinality(dups));
END $$;

-- Housekeeping before a claim or a count: due delayed jobs become ready,
-- expired leases are retried (or dead-lettered on their last attempt),
-- jobs past their TTL are dead-lettered. Each step takes at most 1,000
-- rows and skips rows another session holds.
CREATE FUNCTION maintain(q text, now_ts timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    retried bigint;
    buried bigint;
    expired bigint;
BEGIN
    -- Most calls find nothing to do: look first, with one statement.
    IF NOT EXISTS (SELECT 1 FROM jobs d WHERE d.queue = q AND d.state = 2 AND d.ready_at <= now_ts)
       AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.queue = q AND l.state = 1 AND l.lease_until <= now_ts)
       AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.queue = q AND e.expires_at <= now_ts AND e.state <> 1)
    THEN
        RETURN;
    END IF;
    UPDATE jobs j SET state = 0
    FROM (SELECT d.seq FROM jobs d
          WHERE d.queue = q AND d.state = 2 AND d.ready_at <= now_ts
          ORDER BY d.ready_at LIMIT 1000 FOR UPDATE SKIP LOCKED) due
    WHERE j.seq = due.seq;

    WITH due AS (
        SELECT l.seq FROM jobs l
        WHERE l.queue = q AND l.state = 1 AND l.lease_until <= now_ts
        ORDER BY l.lease_until LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), last AS (
        DELETE FROM jobs j USING due
        WHERE j.seq = due.seq AND j.attempt >= j.max_attempts
        RETURNING j.*
    ), dead_rows AS (
        INSERT INTO dead (queue, id, reason, attempts, attempt, last_error, rank, max_attempts, group_key, body)
        SELECT l.queue, l.id, 'max_attempts', l.attempt, l.attempt,
               'lease expired before the delivery was settled', l.rank, l.max_attempts, l.group_key, l.body
        FROM last l ORDER BY l.seq
        RETURNING 1
    ), again AS (
        UPDATE jobs j SET state = 0, attempt = j.attempt + 1, lease_until = NULL, ready_at = now_ts, since = now_ts,
               last_error = 'lease expired before the delivery was settled'
        FROM due
        WHERE j.seq = due.seq AND j.attempt < j.max_attempts
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM again), (SELECT count(*) FROM dead_rows) INTO retried, buried;

    WITH gone AS (
        DELETE FROM jobs j USING (
            SELECT e.seq FROM jobs e
            WHERE e.queue = q AND e.expires_at <= now_ts AND e.state <> 1
            LIMIT 1000 FOR UPDATE SKIP LOCKED) e
        WHERE j.seq = e.seq
        RETURNING j.*
    ), dead_rows AS (
        INSERT INTO dead (queue, id, reason, attempts, attempt, last_error, rank, max_attempts, group_key, body)
        SELECT g.queue, g.id, 'expired', greatest(g.attempt - 1, 0), g.attempt, g.last_error,
               g.rank, g.max_attempts, g.group_key, g.body
        FROM gone g ORDER BY g.seq
        RETURNING 1
    )
    SELECT count(*) INTO expired FROM dead_rows;

    IF retried + buried + expired > 0 THEN
        PERFORM count_up(q, 0, 0, retried + buried, buried + expired, expired, 0);
    END IF;
    IF retried > 0 THEN
        PERFORM wake(q);
    END IF;
END $$;

-- Ack the leased jobs ack_seqs[i] under ack_tokens[i] (the deliveries a
-- worker finished), then claim up to n ready jobs of q, highest
-- priority first and oldest first within one, leased for lease_ms: one
-- round trip for both. Rows by kind: 0 a job claimed; 1 a job acked
-- (those missing had lost their lease); 2, when nothing was claimed, how
-- many milliseconds from now a delayed job falls due or a lease runs out
-- (next_ms, on the database's clock; null: nothing will happen by itself).
CREATE FUNCTION claim(q text, n integer, lease_ms bigint, ack_seqs bigint[], ack_tokens bigint[])
RETURNS TABLE (kind smallint, seq bigint, id uuid, token bigint, attempt bigint, last_error text,
               expires_ms bigint, lease_ms_until bigint, body bytea, next_ms bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    qrow queues;
    now_ts timestamptz := clock_timestamp();
BEGIN
    IF cardinality(ack_seqs) > 0 THEN
        RETURN QUERY SELECT 1::smallint, a.seq, NULL::uuid, a.token, NULL::bigint, NULL::text,
            NULL::bigint, NULL::bigint, NULL::bytea, NULL::bigint
        FROM ack(ack_seqs, ack_tokens) a;
    END IF;
    SELECT * INTO qrow FROM queues WHERE name = q;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue % does not exist', q USING ERRCODE = 'QUMIS';
    END IF;
    PERFORM maintain(q, now_ts);
    IF n > 0 AND NOT qrow.paused THEN
        RETURN QUERY
        WITH picked AS (
            SELECT r.seq FROM jobs r
            WHERE r.queue = q AND r.state = 0
            ORDER BY r.rank, r.ready_at, r.seq
            LIMIT n FOR UPDATE SKIP LOCKED
        ), taken AS (
            UPDATE jobs j SET state = 1, token = j.token + 1,
                   lease_until = now_ts + lease_ms * interval '1 millisecond'
            FROM picked WHERE j.seq = picked.seq
            RETURNING j.seq, j.id, j.token, j.attempt, j.last_error, j.expires_at,
                      j.lease_until, j.body, j.rank, j.ready_at
        )
        SELECT 0::smallint, t.seq, t.id, t.token, t.attempt, t.last_error, epoch_ms(t.expires_at),
               epoch_ms(t.lease_until), t.body, NULL::bigint
        FROM taken t ORDER BY t.rank, t.ready_at, t.seq;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT 2::smallint, NULL::bigint, NULL::uuid, NULL::bigint, NULL::bigint, NULL::text,
        NULL::bigint, NULL::bigint, NULL::bytea,
        epoch_ms(least(
            (SELECT min(d.ready_at) FROM jobs d WHERE d.queue = q AND d.state = 2),
            (SELECT min(l.lease_until) FROM jobs l WHERE l.queue = q AND l.state = 1)))
        - epoch_ms(now_ts);
END $$;

-- Ack leased jobs (seqs[i] under tokens[i]); returns the jobs acked, as
-- (seq, token) (the others had lost their lease).
CREATE FUNCTION ack(seqs bigint[], tokens bigint[]) RETURNS TABLE (seq bigint, token bigint)
LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH gone AS (
        DELETE FROM jobs j USING unnest(seqs, tokens) AS a(s, t)
        WHERE j.seq = a.s AND j.token = a.t AND j.state = 1
        RETURNING j.seq, j.token, j.queue
    ), counted AS (
        INSERT INTO counters AS c (queue, slot, acked)
        SELECT g.queue, pg_backend_pid(), count(*) FROM gone g GROUP BY g.queue
        ON CONFLICT (queue, slot) DO UPDATE SET acked = c.acked + excluded.acked
    )
    SELECT g.seq, g.token FROM gone g
$$;

-- Move one leased job to the dead letters; false if its lease was lost.
CREATE FUNCTION bury(s bigint, t bigint, why text, attempts bigint, err text) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    q text;
BEGIN
    WITH gone AS (
        DELETE FROM jobs j WHERE j.seq = s AND j.token = t AND j.state = 1 RETURNING j.*
    )
    INSERT INTO dead (queue, id, reason, attempts, attempt, last_error, rank, max_attempts, group_key, body)
    SELECT g.queue, g.id, why, attempts, g.attempt, coalesce(err, g.last_error), g.rank,
           g.max_attempts, g.group_key, g.body
    FROM gone g
    RETURNING queue INTO q;
    IF q IS NULL THEN
        RETURN false;
    END IF;
    PERFORM count_up(q, 0, 0, 0, 1, CASE WHEN why = 'expired' THEN 1 ELSE 0 END, 0);
    RETURN true;
END $$;

-- A failed attempt: deliver again after delay_ms with attempt + 1, or
-- dead-letter on the last attempt. 'retried', 'dead', or 'lost' (the
-- lease was taken back).
CREATE FUNCTION retry(s bigint, t bigint, delay_ms bigint, err text) RETURNS text
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    j jobs;
BEGIN
    SELECT * INTO j FROM jobs WHERE seq = s AND token = t AND state = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'lost';
    END IF;
    IF j.attempt >= j.max_attempts THEN
        PERFORM bury(s, t, 'max_attempts', j.attempt, err);
        PERFORM count_up(j.queue, 0, 0, 1, 0, 0, 0);
        RETURN 'dead';
    END IF;
    UPDATE jobs SET
        state = CASE WHEN delay_ms > 0 THEN 2 ELSE 0 END,
        attempt = j.attempt + 1,
        last_error = coalesce(err, j.last_error),
        lease_until = NULL,
        ready_at = clock_timestamp() + delay_ms * interval '1 millisecond',
        since = clock_timestamp() + delay_ms * interval '1 millisecond'
    WHERE seq = s;
    PERFORM count_up(j.queue, 0, 0, 1, 0, 0, 0);
    PERFORM wake(j.queue);
    RETURN 'retried';
END $$;

-- Hand a leased job back unchanged: ready at once, ahead of its priority
-- (it was never worked on).
CREATE FUNCTION release(s bigint, t bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    q text;
BEGIN
    UPDATE jobs SET state = 0, lease_until = NULL, ready_at = '-infinity'
    WHERE seq = s AND token = t AND state = 1
    RETURNING queue INTO q;
    IF q IS NULL THEN
        RETURN false;
    END IF;
    PERFORM wake(q);
    RETURN true;
END $$;

-- Counts of q (after housekeeping, so they are exact). Each count reads
-- one partial index. The counter rows of sessions that have ended are
-- folded into slot 0 on the way.
CREATE FUNCTION stats(q text)
RETURNS TABLE (ready bigint, delayed bigint, in_flight bigint, dead bigint,
               enqueued bigint, acked bigint, retried bigint, dead_lettered bigint,
               expired bigint, deduplicated bigint, paused boolean, oldest_ready_ms bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    qrow queues;
    now_ts timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO qrow FROM queues WHERE name = q;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue % does not exist', q USING ERRCODE = 'QUMIS';
    END IF;
    PERFORM maintain(q, now_ts);
    WITH gone AS (
        DELETE FROM counters c
        WHERE c.queue = q AND c.slot <> 0
          AND c.slot NOT IN (SELECT a.pid FROM pg_stat_activity a WHERE a.pid IS NOT NULL)
          AND c.ctid IN (SELECT x.ctid FROM counters x WHERE x.queue = q AND x.slot <> 0
                         FOR UPDATE SKIP LOCKED)
        RETURNING c.*
    )
    INSERT INTO counters AS k (queue, slot, enqueued, acked, retried, dead_lettered, expired, deduplicated)
    SELECT q, 0, sum(g.enqueued), sum(g.acked), sum(g.retried), sum(g.dead_lettered),
           sum(g.expired), sum(g.deduplicated)
    FROM gone g HAVING count(*) > 0
    ON CONFLICT (queue, slot) DO UPDATE SET
        enqueued = k.enqueued + excluded.enqueued,
        acked = k.acked + excluded.acked,
        retried = k.retried + excluded.retried,
        dead_lettered = k.dead_lettered + excluded.dead_lettered,
        expired = k.expired + excluded.expired,
        deduplicated = k.deduplicated + excluded.deduplicated;
    RETURN QUERY
    SELECT
        (SELECT count(*) FROM jobs j WHERE j.queue = q AND j.state = 0),
        (SELECT count(*) FROM jobs j WHERE j.queue = q AND j.state = 2),
        (SELECT count(*) FROM jobs j WHERE j.queue = q AND j.state = 1),
        (SELECT count(*) FROM dead x WHERE x.queue = q),
        coalesce(sum(c.enqueued), 0)::bigint, coalesce(sum(c.acked), 0)::bigint,
        coalesce(sum(c.retried), 0)::bigint, coalesce(sum(c.dead_lettered), 0)::bigint,
        coalesce(sum(c.expired), 0)::bigint, coalesce(sum(c.deduplicated), 0)::bigint,
        qrow.paused,
        (SELECT greatest(epoch_ms(now_ts) - epoch_ms(min(j.since)), 0)
         FROM jobs j WHERE j.queue = q AND j.state = 0 HAVING count(*) > 0)
    FROM counters c WHERE c.queue = q;
END $$;

-- Move dead letters of q back (all of them, or those with the given ids)
-- with a fresh attempt count; returns how many moved.
CREATE FUNCTION redrive(q text, only_ids uuid[]) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    moved bigint;
BEGIN
    PERFORM existing(q);
    WITH gone AS (
        DELETE FROM dead d
        WHERE d.queue = q AND (only_ids IS NULL OR d.id = ANY (only_ids))
        RETURNING d.*
    ), back AS (
        INSERT INTO jobs (queue, id, state, rank, attempt, max_attempts, last_error, group_key, body)
        SELECT g.queue, g.id, 0, g.rank, 1, g.max_attempts, g.last_error, g.group_key, g.body
        FROM gone g ORDER BY g.seq
        RETURNING 1
    )
    SELECT count(*) INTO moved FROM back;
    RETURN moved;
END $$;
