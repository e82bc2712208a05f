-- ARGV: member, reason, last error | ''. Dead-letters a leased message.
-- Returns 1, or 0 if the lease was lost.
if redis.call('ZREM', K_LEASED, ARGV[1]) == 0 then return 0 end
local id = string.sub(ARGV[1], 1, 16)
leases_ended({ id })
local env = redis.call('HGET', K_MSG, id)
if env then bury(id, env, ARGV[2], attempt_of(env), ARGV[3], now_ms()) end
return 1
