-- The job store: one row per tracked job, with its status, attempts,
-- result and errors, for the worker, the CLI and the dashboard. Times are
-- milliseconds since the Unix epoch: the submission time as the
-- submitting process gave it, every later one on the database's clock.
CREATE TABLE job_records (
    id              uuid PRIMARY KEY,
    queue           text NOT NULL,
    status          text NOT NULL,
    priority        smallint NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    max_attempts    bigint NOT NULL,
    result          text,
    last_error      text,
    -- The failed attempts, oldest first, as [attempt, at_ms, error]; the last 20.
    errors          jsonb NOT NULL DEFAULT '[]',
    idempotency_key text,
    -- Whether the key still belongs to this job (a job that failed
    -- before it was enqueued gives it back).
    key_held        boolean NOT NULL DEFAULT false,
    name            text,
    created_ms      bigint NOT NULL,
    updated_ms      bigint NOT NULL,
    started_ms      bigint,
    finished_ms     bigint
);
CREATE UNIQUE INDEX job_records_key ON job_records (idempotency_key) WHERE key_held;
CREATE INDEX job_records_newest ON job_records (created_ms DESC, id DESC);
CREATE INDEX job_records_finished ON job_records (finished_ms) WHERE finished_ms IS NOT NULL;

-- Record a submitted job; the id of the job already holding its
-- idempotency key instead, if one does.
CREATE FUNCTION job_insert(jid uuid, q text, st text, prio smallint, most bigint,
    k text, nm text, created bigint) RETURNS uuid
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    first uuid;
BEGIN
    IF k IS NOT NULL THEN
        SELECT id INTO first FROM job_records WHERE idempotency_key = k AND key_held;
        IF FOUND THEN
            RETURN first;
        END IF;
    END IF;
    INSERT INTO job_records (id, queue, status, priority, max_attempts, idempotency_key,
                             key_held, name, created_ms, updated_ms)
    VALUES (jid, q, st, prio, most, k, k IS NOT NULL, nm, created, created)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND AND k IS NOT NULL THEN
        -- Another session took the key between the look and the insert.
        SELECT id INTO first FROM job_records WHERE idempotency_key = k AND key_held;
        RETURN coalesce(first, jid);
    END IF;
    RETURN jid;
END $$;

-- Errors with the failure of attempt att added (unless it is the one
-- recorded last), keeping the newest 20.
CREATE FUNCTION job_remember(errs jsonb, att bigint, at_ms bigint, err text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_array_length(errs) > 0
             AND (errs -> -1 ->> 0)::bigint = att AND errs -> -1 ->> 2 = err THEN errs
        ELSE (SELECT coalesce(jsonb_agg(kept.e ORDER BY kept.n), '[]'::jsonb) FROM (
                SELECT x.e, x.n
                FROM jsonb_array_elements(errs || jsonb_build_array(jsonb_build_array(att, at_ms, err)))
                     WITH ORDINALITY AS x(e, n)
                ORDER BY x.n DESC LIMIT 20) kept)
    END
$$;

-- Apply a status change (kind: running, completed, failed, retry, dead,
-- cancelled, requeued). Completed and cancelled are final; unknown ids
-- are ignored. Returns the status before, or null for an unknown id.
CREATE FUNCTION job_update(jid uuid, kind text, att bigint, res text, err text) RETURNS text
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r job_records;
    was text;
    now_ms bigint := epoch_ms(clock_timestamp());
BEGIN
    SELECT * INTO r FROM job_records WHERE id = jid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    was := r.status;
    IF r.status IN ('cancelled', 'completed') THEN
        RETURN was;
    END IF;
    r.updated_ms := now_ms;
    CASE kind
        WHEN 'running' THEN
            r.status := 'running';
            r.attempts := greatest(r.attempts, att);
            r.started_ms := now_ms;
        WHEN 'completed' THEN
            r.status := 'completed';
            r.result := res;
            r.finished_ms := now_ms;
        WHEN 'failed' THEN
            r.status := 'failed';
            r.errors := job_remember(r.errors, r.attempts, now_ms, err);
            r.last_error := err;
            r.finished_ms := now_ms;
            r.key_held := false;
        WHEN 'retry' THEN
            r.status := 'retry';
            r.errors := job_remember(r.errors, r.attempts, now_ms, err);
            r.last_error := err;
        WHEN 'dead' THEN
            r.status := 'dead';
            r.errors := job_remember(r.errors, r.attempts, now_ms, err);
            r.last_error := err;
            r.finished_ms := now_ms;
        WHEN 'cancelled' THEN
            r.status := 'cancelled';
            r.finished_ms := now_ms;
        WHEN 'requeued' THEN
            r.status := 'pending';
            r.finished_ms := NULL;
    END CASE;
    UPDATE job_records SET
        status = r.status, attempts = r.attempts, result = r.result,
        last_error = r.last_error, errors = r.errors, key_held = r.key_held,
        updated_ms = r.updated_ms, started_ms = r.started_ms, finished_ms = r.finished_ms
    WHERE id = jid;
    RETURN was;
END $$;
