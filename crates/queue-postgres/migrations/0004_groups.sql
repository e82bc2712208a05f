-- Group fairness: jobs of a queue with groups (`Message::with_group`)
-- are taken in turns, so a group with a long backlog does not hold the
-- others back, and a consumer may cap how many of one group it holds.
--
-- The turns are positions on a virtual clock, as on Redis. Once a queue
-- has seen a group (`queues.vnow` is set), every ready job of it has a
-- position `vpos`: a group's next job (the jobs with no group count as
-- one more group) takes the place after the group's last ready job, and
-- never one below the clock, which is the largest position claimed so
-- far. Claims take jobs by (priority, position, seq): one of each group
-- in turn. Queues that never saw a group keep their plain FIFO and pay
-- nothing for this.
--
-- Every change that makes a job ready in a queue with groups (a plain
-- INSERT included, through the insert trigger) reads the clock under a
-- key-share lock on the queue's row, and the first grouped
-- send takes the row for update while it gives the ready jobs their
-- positions, so no job is made ready without a position.

ALTER TABLE queues ADD COLUMN vnow bigint;
-- The group limit the queue's consumers last used: a settle of a grouped
-- job wakes the consumers when one is set (a group under its limit again).
ALTER TABLE queues ADD COLUMN glimit integer;
ALTER TABLE jobs ADD COLUMN vpos bigint;
CREATE INDEX jobs_turns ON jobs (queue, rank, vpos, seq) WHERE state = 0 AND vpos IS NOT NULL;
CREATE INDEX jobs_group_tail ON jobs (queue, (coalesce(group_key, '')), vpos)
    WHERE state = 0 AND vpos IS NOT NULL;
CREATE INDEX jobs_group_leased ON jobs (queue, group_key) WHERE state = 1 AND group_key IS NOT NULL;

-- The first grouped job of q: the queue takes turns from now on, and its
-- ready jobs get positions in their current order.
CREATE FUNCTION start_turns(q text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    qrow queues;
BEGIN
    SELECT * INTO qrow FROM queues WHERE name = q FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue % does not exist', q USING ERRCODE = 'QUMIS';
    END IF;
    IF qrow.vnow IS NOT NULL THEN
        RETURN;
    END IF;
    UPDATE jobs j SET vpos = p.k
    FROM (SELECT r.seq, row_number() OVER (
              PARTITION BY coalesce(r.group_key, '') ORDER BY r.rank, r.ready_at, r.seq) AS k
          FROM jobs r WHERE r.queue = q AND r.state = 0) p
    WHERE j.seq = p.seq;
    UPDATE queues SET vnow = 0 WHERE name = q;
END $$;

-- Give the jobs seqs of q, just made ready, their positions: after their
-- group's last ready job (first: at the clock, so their group's turn comes
-- next). Nothing to do in a queue without groups.
CREATE FUNCTION place(q text, seqs bigint[], first boolean) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(seqs) = 0 THEN
        RETURN;
    END IF;
    SELECT vnow INTO v FROM queues WHERE name = q FOR KEY SHARE;
    IF v IS NULL THEN
        RETURN;
    END IF;
    IF first THEN
        UPDATE jobs SET vpos = v WHERE seq = ANY (seqs) AND state = 0;
        RETURN;
    END IF;
    UPDATE jobs j SET vpos = greatest(
            (SELECT max(x.vpos) FROM jobs x
             WHERE x.queue = q AND coalesce(x.group_key, '') = p.grp
               AND x.state = 0 AND x.vpos IS NOT NULL),
            v) + p.k
    FROM (SELECT r.seq, coalesce(r.group_key, '') AS grp, row_number() OVER (
              PARTITION BY coalesce(r.group_key, '') ORDER BY r.rank, r.ready_at, r.seq) AS k
          FROM jobs r WHERE r.seq = ANY (seqs) AND r.state = 0) p
    WHERE j.seq = p.seq;
END $$;

-- As 0001's send, and a job made ready in a queue with groups takes its
-- group's next position (the first grouped job starts the turns).
CREATE OR REPLACE FUNCTION send(
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
    IF EXISTS (SELECT 1 FROM unnest(groups) g WHERE g <> '')
       AND EXISTS (SELECT 1 FROM queues WHERE name = q AND vnow IS NULL) THEN
        PERFORM start_turns(q);
    END IF;
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
    IF added > 0 AND qrow.vnow IS NULL THEN
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
    ELSIF added > 0 THEN
        -- Turns: each ready job after its group's last one, never below
        -- the clock (a group with nothing ready starts at the clock).
        INSERT INTO jobs (queue, id, state, rank, ready_at, attempt, max_attempts, expires_at, group_key, since, body, vpos)
        SELECT q, ids[m.s],
               CASE WHEN m.delayed THEN 2 ELSE 0 END,
               ranks[m.s],
               now_ts + greatest(delays_ms[m.s], 0) * interval '1 millisecond',
               attempts[m.s], max_attempts[m.s],
               CASE WHEN ttls_ms[m.s] >= 0 THEN now_ts + ttls_ms[m.s] * interval '1 millisecond' END,
               nullif(groups[m.s], ''),
               to_timestamp(since_ms[m.s] / 1000.0),
               bodies[m.s],
               CASE WHEN NOT m.delayed THEN greatest(
                   (SELECT max(x.vpos) FROM jobs x
                    WHERE x.queue = q AND coalesce(x.group_key, '') = m.grp
                      AND x.state = 0 AND x.vpos IS NOT NULL),
                   qrow.vnow) + m.k END
        FROM (SELECT s, delays_ms[s] > 0 AS delayed, coalesce(groups[s], '') AS grp,
                     row_number() OVER (PARTITION BY coalesce(groups[s], ''), delays_ms[s] > 0 ORDER BY s) AS k
              FROM generate_subscripts(ids, 1) s
              WHERE NOT (s = ANY (dups))) m
        ORDER BY m.s;
    END IF;
    PERFORM count_up(q, added, 0, 0, 0, 0, cardinality(dups));
END $$;

-- As 0001's maintain, and jobs made ready take their places in a queue
-- with groups.
CREATE OR REPLACE FUNCTION maintain(q text, now_ts timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    retried bigint;
    buried bigint;
    expired bigint;
    ready bigint[];
    again_seqs bigint[];
BEGIN
    -- Most calls find nothing to do: look first, with one statement.
    IF NOT EXISTS (SELECT 1 FROM jobs d WHERE d.queue = q AND d.state = 2 AND d.ready_at <= now_ts)
       AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.queue = q AND l.state = 1 AND l.lease_until <= now_ts)
       AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.queue = q AND e.expires_at <= now_ts AND e.state <> 1)
    THEN
        RETURN;
    END IF;
    WITH made AS (
        UPDATE jobs j SET state = 0
        FROM (SELECT d.seq FROM jobs d
              WHERE d.queue = q AND d.state = 2 AND d.ready_at <= now_ts
              ORDER BY d.ready_at LIMIT 1000 FOR UPDATE SKIP LOCKED) due
        WHERE j.seq = due.seq
        RETURNING j.seq
    )
    SELECT coalesce(array_agg(made.seq), '{}') INTO ready FROM made;

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
        RETURNING j.seq
    )
    SELECT (SELECT count(*) FROM again), (SELECT count(*) FROM dead_rows),
           (SELECT coalesce(array_agg(again.seq), '{}') FROM again)
    INTO retried, buried, again_seqs;

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

    PERFORM place(q, ready || again_seqs, false);
    IF retried + buried + expired > 0 THEN
        PERFORM count_up(q, 0, 0, retried + buried, buried + expired, expired, 0);
    END IF;
    IF retried > 0 THEN
        PERFORM wake(q);
    END IF;
END $$;

-- Ack leased jobs, as 0001's ack; a grouped job acked in a queue whose
-- consumers use a group limit wakes them (its group may be under the
-- limit again).
CREATE OR REPLACE FUNCTION ack(seqs bigint[], tokens bigint[]) RETURNS TABLE (seq bigint, token bigint)
LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH gone AS (
        DELETE FROM jobs j USING unnest(seqs, tokens) AS a(s, t)
        WHERE j.seq = a.s AND j.token = a.t AND j.state = 1
        RETURNING j.seq, j.token, j.queue, j.group_key
    ), counted AS (
        INSERT INTO counters AS c (queue, slot, acked)
        SELECT g.queue, pg_backend_pid(), count(*) FROM gone g GROUP BY g.queue
        ON CONFLICT (queue, slot) DO UPDATE SET acked = c.acked + excluded.acked
    ), woken AS (
        SELECT wake(k.name) FROM queues k
        WHERE k.glimit IS NOT NULL
          AND k.name IN (SELECT g.queue FROM gone g WHERE g.group_key IS NOT NULL)
    )
    -- Joined with woken's count so the wake-ups run (a CTE that is only
    -- read is not run otherwise).
    SELECT g.seq, g.token FROM gone g CROSS JOIN (SELECT count(*) FROM woken) w
$$;

-- As 0001's bury; a grouped job wakes consumers with a group limit.
CREATE OR REPLACE FUNCTION bury(s bigint, t bigint, why text, attempts bigint, err text) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    q text;
    grp text;
BEGIN
    WITH gone AS (
        DELETE FROM jobs j WHERE j.seq = s AND j.token = t AND j.state = 1 RETURNING j.*
    )
    INSERT INTO dead (queue, id, reason, attempts, attempt, last_error, rank, max_attempts, group_key, body)
    SELECT g.queue, g.id, why, attempts, g.attempt, coalesce(err, g.last_error), g.rank,
           g.max_attempts, g.group_key, g.body
    FROM gone g
    RETURNING queue, group_key INTO q, grp;
    IF q IS NULL THEN
        RETURN false;
    END IF;
    PERFORM count_up(q, 0, 0, 0, 1, CASE WHEN why = 'expired' THEN 1 ELSE 0 END, 0);
    IF grp IS NOT NULL AND EXISTS (SELECT 1 FROM queues WHERE name = q AND glimit IS NOT NULL) THEN
        PERFORM wake(q);
    END IF;
    RETURN true;
END $$;

-- As 0001's retry; a job ready again takes its group's next position.
CREATE OR REPLACE FUNCTION retry(s bigint, t bigint, delay_ms bigint, err text) RETURNS text
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
        vpos = NULL,
        ready_at = clock_timestamp() + delay_ms * interval '1 millisecond',
        since = clock_timestamp() + delay_ms * interval '1 millisecond'
    WHERE seq = s;
    IF delay_ms <= 0 THEN
        PERFORM place(j.queue, ARRAY[s], false);
    END IF;
    PERFORM count_up(j.queue, 0, 0, 1, 0, 0, 0);
    PERFORM wake(j.queue);
    RETURN 'retried';
END $$;

-- As 0001's release; in a queue with groups the job's group has the next
-- turn.
CREATE OR REPLACE FUNCTION release(s bigint, t bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    q text;
BEGIN
    UPDATE jobs SET state = 0, lease_until = NULL, ready_at = '-infinity', vpos = NULL
    WHERE seq = s AND token = t AND state = 1
    RETURNING queue INTO q;
    IF q IS NULL THEN
        RETURN false;
    END IF;
    PERFORM place(q, ARRAY[s], true);
    PERFORM wake(q);
    RETURN true;
END $$;

-- As 0001's trigger, and the ready rows inserted without a position (a
-- plain INSERT, a redrive) take their groups' next ones in a queue with
-- groups. Taking the queue's row in key-share mode also makes the first
-- grouped send wait for this statement's transaction.
CREATE OR REPLACE FUNCTION jobs_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    q text;
    v bigint;
BEGIN
    FOR q IN SELECT DISTINCT queue FROM inserted LOOP
        -- (place's own first steps, inline: most queues have no groups)
        SELECT vnow INTO v FROM queues WHERE name = q FOR KEY SHARE;
        IF v IS NOT NULL THEN
            PERFORM place(q, ARRAY(SELECT i.seq FROM inserted i
                                   WHERE i.queue = q AND i.state = 0 AND i.vpos IS NULL), false);
        END IF;
        PERFORM pg_notify('queue_jobs:' || TG_TABLE_SCHEMA, q);
    END LOOP;
    RETURN NULL;
END $$;

-- The claim of a queue with groups: up to n ready jobs by (priority,
-- position), passing over a group with group_limit jobs leased (0: no
-- limit) among the first 4 n + 32 looked at. Claims of one queue with
-- groups take turns on its row, which also moves the clock.
CREATE FUNCTION claim_turns(q text, n integer, lease_ms bigint, group_limit integer, now_ts timestamptz)
RETURNS TABLE (kind smallint, seq bigint, id uuid, token bigint, attempt bigint, last_error text,
               expires_ms bigint, lease_ms_until bigint, body bytea, next_ms bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    chosen bigint[] := '{}';
    names text[] := '{}';
    held integer[] := '{}';
    r record;
    at integer;
BEGIN
    UPDATE queues k SET glimit = CASE WHEN group_limit > 0 THEN group_limit ELSE k.glimit END
    WHERE k.name = q;
    IF group_limit > 0 THEN
        FOR r IN SELECT c.seq, c.group_key FROM jobs c
                 WHERE c.queue = q AND c.state = 0 AND c.vpos IS NOT NULL
                 ORDER BY c.rank, c.vpos, c.seq LIMIT 4 * n + 32 LOOP
            IF r.group_key IS NOT NULL THEN
                at := array_position(names, r.group_key);
                IF at IS NULL THEN
                    names := names || r.group_key;
                    held := held || (SELECT count(*)::integer FROM jobs l
                                     WHERE l.queue = q AND l.state = 1 AND l.group_key = r.group_key);
                    at := cardinality(names);
                END IF;
                CONTINUE WHEN held[at] >= group_limit;
                held[at] := held[at] + 1;
            END IF;
            chosen := chosen || r.seq;
            EXIT WHEN cardinality(chosen) >= n;
        END LOOP;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT r.seq FROM jobs r
        WHERE r.queue = q AND r.state = 0 AND r.vpos IS NOT NULL
          AND (group_limit <= 0 OR r.seq = ANY (chosen))
        ORDER BY r.rank, r.vpos, r.seq
        LIMIT n FOR UPDATE SKIP LOCKED
    ), taken AS (
        UPDATE jobs j SET state = 1, token = j.token + 1,
               lease_until = now_ts + lease_ms * interval '1 millisecond'
        FROM picked WHERE j.seq = picked.seq
        RETURNING j.seq, j.id, j.token, j.attempt, j.last_error, j.expires_at,
                  j.lease_until, j.body, j.rank, j.vpos
    ), clock AS (
        UPDATE queues k SET vnow = (SELECT max(t.vpos) FROM taken t)
        WHERE k.name = q AND k.vnow < (SELECT max(t.vpos) FROM taken t)
    )
    SELECT 0::smallint, t.seq, t.id, t.token, t.attempt, t.last_error, epoch_ms(t.expires_at),
           epoch_ms(t.lease_until), t.body, NULL::bigint
    FROM taken t ORDER BY t.rank, t.vpos, t.seq;
END $$;

-- As 0001's claim, with the consumer's group limit (0: none); a queue
-- with groups is claimed by turns (claim_turns).
DROP FUNCTION claim(text, integer, bigint, bigint[], bigint[]);
CREATE FUNCTION claim(q text, n integer, lease_ms bigint, ack_seqs bigint[], ack_tokens bigint[],
                      group_limit integer)
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
    IF n > 0 AND NOT qrow.paused AND qrow.vnow IS NOT NULL THEN
        RETURN QUERY SELECT * FROM claim_turns(q, n, lease_ms, group_limit, now_ts);
        IF FOUND THEN
            RETURN;
        END IF;
    ELSIF n > 0 AND NOT qrow.paused THEN
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
