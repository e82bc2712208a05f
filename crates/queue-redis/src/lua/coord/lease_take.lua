-- KEYS: lease, tokens. ARGV: name, holder, ttl us.
-- Returns the token: the holder's own (renewed), or a new one from the
-- name's counter in `tokens` (never reset, so tokens only grow); 0 while
-- someone else holds the lease.
local now = now_us()
local ttl = tonumber(ARGV[3])
local holder, token = current_lease(KEYS[1], now)
if holder and holder ~= ARGV[2] then return 0 end
if not holder then token = redis.call('HINCRBY', KEYS[2], ARGV[1], 1) end
redis.call('HSET', KEYS[1], 'holder', ARGV[2], 'token', token, 'expires', int(now + ttl))
redis.call('PEXPIRE', KEYS[1], ms_of(ttl))
return token
