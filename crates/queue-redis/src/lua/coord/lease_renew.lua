-- KEYS: lease. ARGV: holder, token, ttl us.
-- Returns 1 and extends the lease by ttl if holder and token hold it
-- now, 0 otherwise.
local now = now_us()
local ttl = tonumber(ARGV[3])
local holder, token = current_lease(KEYS[1], now)
if holder ~= ARGV[1] or token ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'expires', int(now + ttl))
redis.call('PEXPIRE', KEYS[1], ms_of(ttl))
return 1
