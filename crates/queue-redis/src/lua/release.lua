-- ARGV: member. Hands a leased message back without spending an attempt:
-- it goes to the head of its priority (a score below every sequence of
-- that rank), or is dead-lettered as expired if its TTL passed. Returns 1,
-- or 0 if the lease was lost.
if redis.call('ZREM', K_LEASED, ARGV[1]) == 0 then return 0 end
local now = now_ms()
local id = string.sub(ARGV[1], 1, 16)
leases_ended({ id })
local env = redis.call('HGET', K_MSG, id)
if not env then return 1 end
local exp = redis.call('HGET', K_EXP, id)
if exp and tonumber(exp) <= now then
  bury(id, env, 'expired', math.max(attempt_of(env) - 1, 0), nil, now)
  return 1
end
if exp then redis.call('ZADD', K_TTL, exp, id) end
local front = redis.call('HINCRBY', K_STATS, 'front_seq', 1)
redis.call('ZADD', K_READY, rank_of(env) * RANK_STEP - front, id)
notify()
return 1
