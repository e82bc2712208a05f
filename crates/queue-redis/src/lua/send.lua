-- ARGV: window_ms, n, stride (6, or 7 when some message has a group), then
-- n groups of (id, envelope, rank, delay_ms, ttl_ms | -1, idempotency key | '',
-- and with stride 7 its group | '').
-- Returns {'full', depth}, or {'ok', i1, first1, i2, first2, ...}
-- listing the messages deduplicated (by key inside the window, or by an id
-- already queued) with the id kept for them.
local now = now_ms()
-- A queue is its keys: a send re-creates one that was deleted (or lost
-- with a Redis restart that kept no data).
if missing() then redis.call('HSETNX', K_META, 'created', now) end
local window, n, stride = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local meta = redis.call('HMGET', K_META, 'max_length', 'vnow')
local max_len = meta[1]
if max_len then
  -- Expired leases and TTLs must not hold places in a full queue.
  maintain(now, 1000)
  local depth = redis.call('ZCARD', K_READY) + redis.call('ZCARD', K_DELAYED) + redis.call('ZCARD', K_LEASED)
  -- Duplicates take no place (a send retried after a lost reply must not
  -- fail as full because its first attempt filled the queue).
  local fresh = 0
  for i = 0, n - 1 do
    local b = 4 + i * stride
    local dup = redis.call('HEXISTS', K_MSG, ARGV[b]) == 1
    if not dup and ARGV[b + 5] ~= '' then
      local until_ms = redis.call('ZSCORE', K_IDEMZ, ARGV[b + 5])
      dup = until_ms ~= false and tonumber(until_ms) > now and redis.call('HEXISTS', K_IDEM, ARGV[b + 5]) == 1
    end
    if not dup then fresh = fresh + 1 end
  end
  if depth + fresh > tonumber(max_len) then return { 'full', depth } end
end
if redis.call('EXISTS', K_IDEMZ) == 1 then
  local old = redis.call('ZRANGEBYSCORE', K_IDEMZ, '-inf', now, 'LIMIT', 0, 1000)
  if #old > 0 then
    redis.call('HDEL', K_IDEM, unpack(old))
    redis.call('ZREM', K_IDEMZ, unpack(old))
  end
end
local out = { 'ok' }
-- A queue with groups (see vclock): no position below the clock.
local vnow = meta[2] and tonumber(meta[2])
if not vnow and stride == 7 then vnow = vclock() end
-- Messages with no group take the next sequence numbers (grouped ones
-- take their group's positions instead), never below the clock.
local seq
if vnow then
  seq = math.max(tonumber(redis.call('HGET', K_STATS, 'seq') or 0), vnow)
else
  seq = redis.call('HINCRBY', K_STATS, 'seq', n) - n
end
-- The groups' last positions, read once per batch and written back once.
local group_last, group_of = nil, nil
if stride == 7 then
  group_last, group_of = {}, {}
  local names = {}
  for i = 0, n - 1 do
    local group = ARGV[4 + i * stride + 6]
    if group ~= '' and group_last[group] == nil then
      group_last[group] = false
      names[#names + 1] = group
    end
  end
  if #names > 0 then
    local lasts = hmget_all(K_GVT, names)
    for i, group in ipairs(names) do group_last[group] = tonumber(lasts[i] or 0) end
  end
end
local head_due = nil
local wake = false
local enqueued = 0
for i = 0, n - 1 do
  local b = 4 + i * stride
  local id, env, key, group = ARGV[b], ARGV[b + 1], ARGV[b + 5], ''
  if stride == 7 then group = ARGV[b + 6] end
  local first = nil
  if key ~= '' then
    first = redis.call('HGET', K_IDEM, key)
    if first then
      -- Only inside the window (old keys are pruned in bounded steps).
      local until_ms = redis.call('ZSCORE', K_IDEMZ, key)
      if not until_ms or tonumber(until_ms) <= now then first = nil end
    end
    if first then
      out[#out + 1] = i
      out[#out + 1] = first
    else
      redis.call('HSET', K_IDEM, key, id)
      redis.call('ZADD', K_IDEMZ, now + window, key)
    end
  end
  -- Sending an id already on the queue again (a retried send whose reply
  -- was lost) is a duplicate, not a second message.
  if not first and redis.call('HSETNX', K_MSG, id, env) == 0 then
    first = id
    out[#out + 1] = i
    out[#out + 1] = id
  end
  if not first then
    local rank, delay, ttl = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    if group ~= '' then
      group_of[#group_of + 1] = id
      group_of[#group_of + 1] = group
    end
    if ttl >= 0 then
      redis.call('HSET', K_EXP, id, now + ttl)
      redis.call('ZADD', K_TTL, now + ttl, id)
    end
    if delay > 0 then
      local due = now + delay
      if head_due == nil then
        local head = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
        head_due = head[2] and tonumber(head[2]) or math.huge
      end
      redis.call('ZADD', K_DELAYED, due, id)
      if due < head_due then
        head_due = due
        wake = true
      end
    elseif group ~= '' then
      local v = math.max(group_last[group], vnow) + 1
      group_last[group] = v
      redis.call('ZADD', K_READY, rank * RANK_STEP + v, id)
      wake = true
    else
      seq = seq + 1
      redis.call('ZADD', K_READY, rank * RANK_STEP + seq, id)
      wake = true
    end
    enqueued = enqueued + 1
  end
end
if vnow then redis.call('HSET', K_STATS, 'seq', seq) end
if group_of and #group_of > 0 then
  hset_all(K_GOF, group_of)
  local lasts = {}
  for group, last in pairs(group_last) do
    if last > vnow then
      lasts[#lasts + 1] = group
      lasts[#lasts + 1] = last
    end
  end
  if #lasts > 0 then hset_all(K_GVT, lasts) end
end
if enqueued < n then redis.call('HINCRBY', K_STATS, 'deduplicated', n - enqueued) end
redis.call('HINCRBY', K_STATS, 'enqueued', enqueued)
if wake then notify() end
return out
