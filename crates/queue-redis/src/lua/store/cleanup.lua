-- KEYS: keys, counts, finished, created. ARGV: now_ms, max_age_ms | -1,
-- max_count | -1, record key prefix, store base. Removes finished records the policy
-- no longer keeps (oldest first), at most 1000 per call; returns how many.
local now, max_age, max_count, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local removed = 0
local function drop(id)
  local rec = prefix .. id
  local status = redis.call('HGET', rec, 'status')
  local key = redis.call('HGET', rec, 'idem')
  if key and redis.call('HGET', KEYS[1], key) == id then redis.call('HDEL', KEYS[1], key) end
  if status then
    redis.call('HINCRBY', KEYS[2], status, -1)
    redis.call('ZREM', ARGV[5] .. 'status:' .. status, id)
  end
  redis.call('DEL', rec)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  removed = removed + 1
end
if max_count >= 0 then
  local excess = redis.call('ZCARD', KEYS[3]) - max_count
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, math.min(excess, 1000) - 1)) do drop(id) end
  end
end
if max_age >= 0 and removed < 1000 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - max_age), 'LIMIT', 0, 1000 - removed)
  for _, id in ipairs(old) do drop(id) end
end
return removed
