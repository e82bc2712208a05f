-- Shared by every queue script (prepended to each). All keys of one queue
-- share the hash tag {name}, so a script only touches one cluster slot.
local K_META, K_READY, K_DELAYED, K_LEASED, K_MSG, K_STATS, K_TTL, K_EXP,
      K_DEAD, K_DMSG, K_DINFO, K_IDEM, K_IDEMZ, K_INBOX, K_NOTIFY =
      KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8],
      KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
-- Group fairness: the group of each grouped message (id -> group), each
-- group's last ready position, and each group's leased deliveries.
local K_GOF, K_GVT, K_GACT = KEYS[16], KEYS[17], KEYS[18]

-- Server time in ms: every process shares the server's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Ready score: priority rank (0 urgent .. 3 low) above a sequence number,
-- so ZRANGE 0 n yields priority order, FIFO within a priority.
local RANK_STEP = 140737488355328 -- 2^47
local RANK = { [15] = 0, [10] = 1, [5] = 2, [1] = 3 }

local function rank_of(env)
  return RANK[string.byte(env, 21) or 5] or 2
end

-- Envelope v1: attempt at offset 21, max attempts at 25 (u32 big-endian).
local function attempt_of(env)
  if #env < 29 then return 0 end
  return struct.unpack('>I4', env, 22)
end

local function max_attempts_of(env)
  if #env < 29 then return 1 end
  return struct.unpack('>I4', env, 26)
end

local function with_attempt(env, attempt)
  if #env < 29 then return env end
  return string.sub(env, 1, 21) .. struct.pack('>I4', attempt) .. string.sub(env, 26)
end

-- Whether `env` is an envelope this build reads: version 1 or 2 (version 2
-- adds the ordering key after the trace context; the fields the scripts
-- read and rewrite sit at the same places in both).
local function readable(env)
  local version = string.byte(env, 3)
  return #env >= 39 and string.sub(env, 1, 2) == 'QE' and (version == 1 or version == 2)
end

-- The envelope with its last error replaced (or added): the flags say
-- which optional fields precede it. Bytes that are not a v1 envelope are
-- returned as they are.
local function with_last_error(env, err)
  if not readable(env) then return env end
  local flags = string.byte(env, 4)
  local pos = 38
  if flags % 2 == 1 then pos = pos + 8 end
  if math.floor(flags / 2) % 2 == 1 then pos = pos + 8 end
  if math.floor(flags / 4) % 2 == 1 then
    if #env < pos + 1 then return env end
    pos = pos + 2 + struct.unpack('>I2', env, pos)
  end
  local rest = pos
  if math.floor(flags / 8) % 2 == 1 then
    if #env < pos + 3 then return env end
    rest = pos + 4 + struct.unpack('>I4', env, pos)
  else
    flags = flags + 8
  end
  if rest > #env + 1 then return env end
  return string.sub(env, 1, 3) .. string.char(flags) .. string.sub(env, 5, pos - 1)
    .. struct.pack('>I4', #err) .. err .. string.sub(env, rest)
end

-- Wake one waiting consumer (at most one token is ever queued).
local function notify()
  if redis.call('LLEN', K_NOTIFY) == 0 then
    redis.call('RPUSH', K_NOTIFY, '1')
  end
end

-- Group fairness (Message::with_group). A queue that has seen a grouped
-- message keeps a virtual clock in meta ('vnow'): the ready position last
-- served. A message of group g becomes ready at max(g's last position,
-- vnow) + 1, and one with no group at the next sequence, never below
-- vnow + 1; so each group (and the messages with no group, as one more)
-- holds one position per turn and claims in score order take them
-- round-robin: a group with a long backlog sits far ahead in positions
-- while a group that just arrived is served next. A queue that never saw a
-- group pays one HGET for this.
local function vclock()
  local v = redis.call('HGET', K_META, 'vnow')
  if v then return tonumber(v) end
  -- The first group: service stands at the ready head, or past every
  -- message sent when none is ready.
  local seq = tonumber(redis.call('HGET', K_STATS, 'seq') or 0)
  v = seq
  local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
  if head[2] then
    -- A position is at most `seq`; a message put back in front sits
    -- below its rank's band (a large remainder): then estimate from the
    -- count ready.
    v = tonumber(head[2]) % RANK_STEP - 1
    if v >= seq then v = seq - redis.call('ZCARD', K_READY) end
    v = math.max(v, 0)
  end
  redis.call('HSET', K_META, 'vnow', v)
  return v
end

-- HSET of `flat` (field, value, field, value, ...) in pieces, as `unpack`
-- takes at most a few thousand values.
local function hset_all(key, flat)
  for i = 1, #flat, 2000 do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 1999, #flat)))
  end
end

-- HMGET of `fields` in pieces (see hset_all).
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end

-- The next ready position of `group` (its turn after its last one).
local function group_position(group, vnow)
  local last = tonumber(redis.call('HGET', K_GVT, group) or 0)
  local v = math.max(last, vnow) + 1
  redis.call('HSET', K_GVT, group, v)
  return v
end

local function make_ready(id, rank)
  local pos = nil
  local vnow = redis.call('HGET', K_META, 'vnow')
  if vnow then
    vnow = tonumber(vnow)
    local group = redis.call('HGET', K_GOF, id)
    if group then
      pos = group_position(group, vnow)
    else
      pos = redis.call('HINCRBY', K_STATS, 'seq', 1)
      if pos <= vnow then
        pos = vnow + 1
        redis.call('HSET', K_STATS, 'seq', pos)
      end
    end
  else
    pos = redis.call('HINCRBY', K_STATS, 'seq', 1)
  end
  redis.call('ZADD', K_READY, rank * RANK_STEP + pos, id)
end

-- The leases of `ids` ended (settled, handed back or expired): their
-- groups' counts of leased deliveries drop (kept once a group limit was
-- used on the queue; `glimit` in meta is the limit), and where a group
-- was at the limit a waiting consumer is woken. Call before the message
-- (and so its group) is removed.
local function leases_ended(ids)
  if #ids == 0 or redis.call('EXISTS', K_GACT) == 0 then return end
  local ended, names = {}, {}
  for _, group in ipairs(redis.call('HMGET', K_GOF, unpack(ids))) do
    if group then
      if ended[group] == nil then
        ended[group] = 0
        names[#names + 1] = group
      end
      ended[group] = ended[group] + 1
    end
  end
  local limit = tonumber(redis.call('HGET', K_META, 'glimit') or 0)
  local freed = false
  for _, group in ipairs(names) do
    local left = redis.call('HINCRBY', K_GACT, group, -ended[group])
    if left <= 0 then redis.call('HDEL', K_GACT, group) end
    if left + ended[group] >= limit then freed = true end
  end
  if freed and redis.call('EXISTS', K_READY) == 1 then notify() end
end

-- Move a message (already out of ready/delayed/leased) to the dead letters.
local function bury(id, env, reason, attempts, last_error, now)
  redis.call('HDEL', K_MSG, id)
  redis.call('HDEL', K_GOF, id)
  redis.call('HDEL', K_EXP, id)
  redis.call('ZREM', K_TTL, id)
  redis.call('HSET', K_DMSG, id, env)
  local info = { reason = reason, attempts = attempts, at = tostring(now) }
  if last_error and last_error ~= '' then info.error = last_error end
  redis.call('HSET', K_DINFO, id, cjson.encode(info))
  -- Ordered by a sequence, so a redrive can take exactly the letters that
  -- were there when it started (the time is in dinfo).
  redis.call('ZADD', K_DEAD, redis.call('HINCRBY', K_STATS, 'dead_seq', 1), id)
  redis.call('HINCRBY', K_STATS, 'dead_lettered', 1)
  if reason == 'expired' then
    redis.call('HINCRBY', K_STATS, 'expired', 1)
  end
end

-- Queue a message again after `delay` ms; false if its TTL has passed.
local function schedule(id, rank, delay, now)
  local exp = redis.call('HGET', K_EXP, id)
  if exp then
    if tonumber(exp) <= now then return false end
    redis.call('ZADD', K_TTL, exp, id)
  end
  if delay > 0 then
    local due = now + delay
    local head = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
    redis.call('ZADD', K_DELAYED, due, id)
    -- A new earliest due time: a waiting consumer re-arms its timer.
    if head[2] == nil or tonumber(head[2]) > due then notify() end
  else
    make_ready(id, rank)
    notify()
  end
  return true
end

-- A failed attempt: deliver again after `delay`, or bury on the last attempt.
local function retry(id, env, delay, last_error, now)
  redis.call('HINCRBY', K_STATS, 'retried', 1)
  local attempt = attempt_of(env)
  if attempt >= max_attempts_of(env) then
    bury(id, env, 'max_attempts', attempt, last_error, now)
    return
  end
  env = with_attempt(env, attempt + 1)
  redis.call('HSET', K_MSG, id, env)
  if not schedule(id, rank_of(env), delay, now) then
    bury(id, env, 'expired', attempt, last_error, now)
  end
end

-- Delayed messages now due become ready. Returns how many moved.
local function promote(now, limit)
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, limit)
  if #due == 0 then return 0 end
  redis.call('ZREM', K_DELAYED, unpack(due))
  local envs = redis.call('HMGET', K_MSG, unpack(due))
  for i, id in ipairs(due) do
    if envs[i] then make_ready(id, rank_of(envs[i])) end
  end
  notify()
  return #due
end

-- Leases past their deadline count as failed attempts. Returns how many.
local function reclaim(now, limit)
  local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do
    redis.call('ZREM', K_LEASED, member)
    local id = string.sub(member, 1, 16)
    leases_ended({ id })
    local env = redis.call('HGET', K_MSG, id)
    if env then
      local err = 'lease expired before the delivery was settled'
      retry(id, with_last_error(env, err), 0, err, now)
    end
  end
  return #expired
end

-- Queued messages whose TTL passed are dead-lettered as expired. A leased
-- one leaves the index; it is checked again if it is ever queued again.
local function sweep(now, limit)
  if redis.call('EXISTS', K_TTL) == 0 then return 0 end
  local gone = redis.call('ZRANGEBYSCORE', K_TTL, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(gone) do
    redis.call('ZREM', K_TTL, id)
    if redis.call('ZREM', K_READY, id) == 1 or redis.call('ZREM', K_DELAYED, id) == 1 then
      local env = redis.call('HGET', K_MSG, id)
      if env then bury(id, env, 'expired', math.max(attempt_of(env) - 1, 0), nil, now) end
    end
  end
  return #gone
end

-- Bytes a plain client pushed to the inbox: envelopes are queued as they
-- are, anything else is wrapped as a raw payload (fresh id, attempt 1).
local function wrap(raw, now)
  local seq = redis.call('HINCRBY', K_STATS, 'seq', 1)
  local hi, lo = math.floor(now / 4294967296), now % 4294967296
  local id = struct.pack('>I2I4I2I2I4I2', hi % 65536, lo, 28672 + seq % 4096,
    32768 + math.floor(seq / 4096) % 16384, math.random(0, 2147483647), math.random(0, 65535))
  return 'QE\1\0' .. id .. '\5' .. struct.pack('>I4I4I4I4', 1, 25, hi, lo) .. '\0\0' .. raw
end

-- A u64 (big-endian) at 1-based position `pos` of `s`, as a Lua number.
local function u64_at(s, pos)
  local hi, lo = struct.unpack('>I4I4', s, pos)
  return hi * 4294967296 + lo
end

-- Queue bytes from the inbox. An envelope keeps its id, not-before (due
-- time) and expiry; an id already on the queue is a duplicate.
local function accept(raw, now)
  local env = raw
  -- Any version: one this build cannot read is dead-lettered as `decode`
  -- when claimed, never misread as a raw payload.
  if #raw < 39 or string.sub(raw, 1, 2) ~= 'QE' then env = wrap(raw, now) end
  local id = string.sub(env, 5, 20)
  if redis.call('HEXISTS', K_MSG, id) == 1 then
    redis.call('HINCRBY', K_STATS, 'deduplicated', 1)
    return
  end
  local flags = string.byte(env, 4)
  if not readable(env) then flags = 0 end
  local pos, due, expires = 38, nil, nil
  if flags % 2 == 1 and #env >= pos + 7 then
    due = u64_at(env, pos)
    pos = pos + 8
  end
  if math.floor(flags / 2) % 2 == 1 and #env >= pos + 7 then expires = u64_at(env, pos) end
  redis.call('HSET', K_MSG, id, env)
  redis.call('HINCRBY', K_STATS, 'enqueued', 1)
  if expires then
    redis.call('HSET', K_EXP, id, expires)
    redis.call('ZADD', K_TTL, expires, id)
  end
  -- The envelope holds whole milliseconds: due + 1 keeps not-before strict.
  if due and due + 1 > now then
    redis.call('ZADD', K_DELAYED, due + 1, id)
  else
    make_ready(id, rank_of(env))
  end
end

local function drain_inbox(now, limit)
  if redis.call('EXISTS', K_INBOX) == 0 then return end
  for _ = 1, limit do
    local raw = redis.call('RPOP', K_INBOX)
    if not raw then break end
    accept(raw, now)
  end
  notify()
end

local function maintain(now, limit)
  drain_inbox(now, limit)
  promote(now, limit)
  reclaim(now, limit)
  sweep(now, limit)
end

-- Ack leased `members`: each leaves the lease set and its envelope is
-- removed. Returns the 1-based positions of members whose lease was lost
-- (expired and taken back, settled, or purged).
local function ack_members(members)
  if #members == 0 then return {} end
  local scores = redis.call('ZMSCORE', K_LEASED, unpack(members))
  local held, ids, lost = {}, {}, {}
  for i, member in ipairs(members) do
    if scores[i] then
      held[#held + 1] = member
      ids[#ids + 1] = string.sub(member, 1, 16)
    else
      lost[#lost + 1] = i
    end
  end
  if #held > 0 then
    redis.call('ZREM', K_LEASED, unpack(held))
    if redis.call('EXISTS', K_GOF) == 1 then
      leases_ended(ids)
      redis.call('HDEL', K_GOF, unpack(ids))
    end
    redis.call('HDEL', K_MSG, unpack(ids))
    if redis.call('EXISTS', K_EXP) == 1 then
      redis.call('HDEL', K_EXP, unpack(ids))
      redis.call('ZREM', K_TTL, unpack(ids))
    end
    redis.call('HINCRBY', K_STATS, 'acked', #held)
  end
  return lost
end

local function missing()
  return redis.call('EXISTS', K_META) == 0
end
