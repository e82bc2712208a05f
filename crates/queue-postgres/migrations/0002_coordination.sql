-- The coordination store: leases with fencing tokens, rate windows,
-- semaphores and records (what periodic jobs, rate limits and fleet-wide
-- concurrency stand on). Every decision is one function call that reads
-- the database's clock and serializes on the name it decides for with a
-- transaction-scoped advisory lock, so concurrent callers on one name
-- take turns and callers on different names do not wait for each other.

-- The current holder of each lease name (a row past expires_at is free).
CREATE TABLE coord_leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    token      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The last token given out per lease name: never reset, so tokens only grow.
CREATE TABLE coord_tokens (
    name  text PRIMARY KEY,
    token bigint NOT NULL
);

-- Rate windows: permits per bucket of a 64th of the period (queue_core's
-- Window, bucket for bucket).
CREATE TABLE coord_windows (
    key     text NOT NULL,
    bucket  bigint NOT NULL,
    permits bigint NOT NULL,
    PRIMARY KEY (key, bucket)
);

-- Semaphore slots: one row per holder, free once past expires_at.
CREATE TABLE coord_slots (
    name       text NOT NULL,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, holder)
);

-- Records by space and key (schedules live here).
CREATE TABLE coord_records (
    space text NOT NULL,
    key   text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (space, key)
);

-- Microseconds since the Unix epoch on the database's clock.
CREATE FUNCTION coord_now_us() RETURNS bigint
LANGUAGE sql VOLATILE AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint $$;

-- Serialize the rest of the transaction with every other caller on `what`
-- in this schema.
CREATE FUNCTION coord_lock(what text) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT
AS $$ SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':coord:' || what, 0)) $$;

-- Take the lease on n for h (or renew h's own, same token) for ttl_us:
-- the token, or 0 while someone else holds it.
CREATE FUNCTION coord_lease_take(n text, h text, ttl_us bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    cur coord_leases;
    tok bigint;
    now_ts timestamptz;
BEGIN
    PERFORM coord_lock('lease:' || n);
    -- The clock is read once the lock is held: a caller that waited for
    -- it decides at the time it decides.
    now_ts := clock_timestamp();
    SELECT * INTO cur FROM coord_leases WHERE name = n AND expires_at > now_ts;
    IF FOUND AND cur.holder <> h THEN
        RETURN 0;
    END IF;
    IF FOUND THEN
        tok := cur.token;
    ELSE
        INSERT INTO coord_tokens AS t (name, token) VALUES (n, 1)
        ON CONFLICT (name) DO UPDATE SET token = t.token + 1
        RETURNING t.token INTO tok;
    END IF;
    INSERT INTO coord_leases AS l (name, holder, token, expires_at)
    VALUES (n, h, tok, now_ts + ttl_us * interval '1 microsecond')
    ON CONFLICT (name) DO UPDATE
        SET holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at;
    RETURN tok;
END $$;

-- Take up to want permits from key's window (limit per period_us):
-- granted, microseconds until there is room again (0 when all were
-- granted), and permits still free.
CREATE FUNCTION coord_permits(k text, lim bigint, period_us bigint, want bigint,
    OUT granted bigint, OUT retry_us bigint, OUT remaining bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_us bigint;
    width bigint := greatest(1, period_us / 64);
    slack bigint := least(period_us / 16, 100000);
    span bigint := (period_us + slack + width - 1) / width;
    cur bigint;
    first bigint;
    used bigint;
    oldest bigint;
BEGIN
    PERFORM coord_lock('rate:' || k);
    now_us := coord_now_us();
    cur := now_us / width;
    first := greatest(0, cur - span);
    DELETE FROM coord_windows WHERE key = k AND bucket < first;
    SELECT coalesce(sum(permits), 0), min(bucket) INTO used, oldest
    FROM coord_windows WHERE key = k;
    granted := least(want, greatest(0, lim - used));
    IF granted > 0 THEN
        INSERT INTO coord_windows AS w (key, bucket, permits) VALUES (k, cur, granted)
        ON CONFLICT (key, bucket) DO UPDATE SET permits = w.permits + excluded.permits;
        oldest := coalesce(oldest, cur);
    END IF;
    retry_us := 0;
    IF granted < want THEN
        retry_us := greatest(1, (coalesce(oldest, cur) + span + 1) * width - now_us);
    END IF;
    remaining := greatest(0, lim - used - granted);
END $$;

-- Hold one of lim slots of n as h for ttl_us (or renew h's own):
-- (true, 0), or (false, microseconds until the earliest slot expires).
CREATE FUNCTION coord_slot_acquire(n text, h text, lim bigint, ttl_us bigint,
    OUT held boolean, OUT retry_us bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ts timestamptz;
    taken bigint;
    earliest timestamptz;
BEGIN
    PERFORM coord_lock('sem:' || n);
    now_ts := clock_timestamp();
    DELETE FROM coord_slots WHERE name = n AND expires_at <= now_ts;
    SELECT count(*), min(expires_at) INTO taken, earliest FROM coord_slots WHERE name = n;
    IF EXISTS (SELECT 1 FROM coord_slots WHERE name = n AND holder = h) OR taken < lim THEN
        INSERT INTO coord_slots AS s (name, holder, expires_at)
        VALUES (n, h, now_ts + ttl_us * interval '1 microsecond')
        ON CONFLICT (name, holder) DO UPDATE SET expires_at = excluded.expires_at;
        held := true;
        retry_us := 0;
    ELSE
        held := false;
        retry_us := greatest(0, (extract(epoch FROM earliest - now_ts) * 1000000)::bigint);
    END IF;
END $$;

-- Write value under space/key (fenced by the lease n/h/tok when n is not
-- null): 1 written, 0 the lease was not current, -1 the space is full.
CREATE FUNCTION coord_put(sp text, k text, v bytea, most bigint, n text, h text, tok bigint)
RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF n IS NOT NULL THEN
        PERFORM coord_lock('lease:' || n);
        IF NOT EXISTS (SELECT 1 FROM coord_leases
                       WHERE name = n AND holder = h AND token = tok
                         AND expires_at > clock_timestamp()) THEN
            RETURN 0;
        END IF;
    END IF;
    PERFORM coord_lock('rec:' || sp);
    IF NOT EXISTS (SELECT 1 FROM coord_records WHERE space = sp AND key = k)
       AND (SELECT count(*) FROM coord_records WHERE space = sp) >= most THEN
        RETURN -1;
    END IF;
    INSERT INTO coord_records AS r (space, key, value) VALUES (sp, k, v)
    ON CONFLICT (space, key) DO UPDATE SET value = excluded.value;
    RETURN 1;
END $$;

-- Extend the lease n held by h with token tok by ttl_us: whether it was
-- still held (under the name's lock, so a taker never sees it expired
-- while a renewal is on its way).
CREATE FUNCTION coord_lease_renew(n text, h text, tok bigint, ttl_us bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ts timestamptz;
BEGIN
    PERFORM coord_lock('lease:' || n);
    now_ts := clock_timestamp();
    UPDATE coord_leases SET expires_at = now_ts + ttl_us * interval '1 microsecond'
    WHERE name = n AND holder = h AND token = tok AND expires_at > now_ts;
    RETURN FOUND;
END $$;

-- Give the lease n up if h holds it with token tok.
CREATE FUNCTION coord_lease_release(n text, h text, tok bigint) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM coord_lock('lease:' || n);
    DELETE FROM coord_leases
    WHERE name = n AND holder = h AND token = tok AND expires_at > clock_timestamp();
END $$;
